"""Stop training at the first non-finite loss, before anything is saved."""
import math

import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class FiniteLossHook(Hook):
    """Raise ``FloatingPointError`` naming the iteration when the loss is NaN or inf.

    It runs before the checkpoint hook, so the weights of a diverged step are
    never saved and the last good checkpoint stays the one ``--resume`` picks.
    Under AMP with a dynamic loss scale (an optimizer wrapper with an enabled
    ``loss_scaler``) a non-finite loss is expected now and then: the scaler
    skips that step and lowers the scale, so the hook only warns, and raises
    after ``max_skipped_steps`` such steps in a row.

    Args:
        max_skipped_steps (int): Consecutive non-finite steps allowed under
            AMP. Defaults to 20.
    """

    priority = 'VERY_HIGH'

    def __init__(self, max_skipped_steps: int = 20):
        if not isinstance(max_skipped_steps, int) or max_skipped_steps < 0:
            raise ValueError(f'max_skipped_steps must be an int >= 0, got {max_skipped_steps!r}')
        self.max_skipped_steps = max_skipped_steps
        self.skipped_in_a_row = 0

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        loss = outputs['loss']
        loss = float(loss.detach() if isinstance(loss, torch.Tensor) else loss)
        if math.isfinite(loss):
            self.skipped_in_a_row = 0
            return
        iteration = runner.iter + 1
        scaler = getattr(runner.optim_wrapper, 'loss_scaler', None)
        scaler_skips = scaler is not None and scaler.is_enabled()  # disabled without CUDA
        if scaler_skips and self.skipped_in_a_row < self.max_skipped_steps:
            self.skipped_in_a_row += 1
            runner.logger.warning(f'Loss is {loss} at iteration {iteration}: the AMP loss scaler '
                                  f'skips this step ({self.skipped_in_a_row} in a row)')
            return
        last = runner.message_hub.get_info('last_ckpt')
        raise FloatingPointError(
            f'Loss is {loss} at iteration {iteration} (epoch {runner.epoch + 1}); training '
            f'stopped before saving this state. Last good checkpoint: {last or "none saved"}. '
            f'Lower the learning rate or enable AMP/gradient clipping, then resume from it.')
