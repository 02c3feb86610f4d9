"""Hooks that inject faults into distributed runs and measure them (imported by the tests'
configs)."""
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class RaiseOnRankHook(Hook):
    """Raises on one rank before an iteration."""

    def __init__(self, rank: int, iteration: int):
        self.rank = rank
        self.iteration = iteration

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        if runner.rank == self.rank and runner.iter + 1 == self.iteration:
            self.fault()

    def fault(self) -> None:
        raise RuntimeError(f'injected fault on rank {self.rank} at iteration {self.iteration}')


@HOOKS.register_module()
class KillOnRankHook(RaiseOnRankHook):
    """SIGKILLs one rank before an iteration, in the first attempt of a torchrun job only (the
    attempts torchrun starts again after it run on)."""

    def fault(self) -> None:
        import os
        import signal
        if os.environ.get('TORCHELASTIC_RESTART_COUNT', '0') == '0':
            os.kill(os.getpid(), signal.SIGKILL)


@HOOKS.register_module()
class ModelStateBytesHook(Hook):
    """Writes ``state_bytes_rank{r}.json`` into the work dir after the last training iteration:
    the bytes of parameters and of optimizer states this rank holds (under FSDP, its shards;
    gradients, freed by then, take as much as the parameters)."""

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        import json
        import os.path as osp
        if runner.iter + 1 != runner.max_iters:
            return
        params = [p for p in runner.model.parameters() if p.requires_grad]
        states = [t for s in runner.optim_wrapper.optimizer.state.values() for t in s.values()
                  if hasattr(t, 'numel') and t.dim() > 0]
        record = dict(parameters=sum(p.numel() * p.element_size() for p in params),
                      optimizer=sum(t.numel() * t.element_size() for t in states))
        with open(osp.join(runner.work_dir, f'state_bytes_rank{runner.rank}.json'), 'w') as f:
            json.dump(record, f)
