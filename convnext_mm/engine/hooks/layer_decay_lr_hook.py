"""Log the learning rate people expect under layer-wise lr decay."""
from operator import itemgetter

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class LayerDecayLrLogHook(Hook):
    """Log the heads' current lr as ``lr`` and the stem's as ``stem_lr``.

    mmengine logs the lr of the first parameter group, which under
    ``ConvNeXtLayerDecayOptimizerConstructor`` is the stem's (e.g. 0.082x the
    configured lr for the Cascade T recipe), so the log looked like a wrong lr
    (ConvNeXt issue #7). With this hook ``lr`` is the lr of the groups at the
    largest scale (1.0: neck and heads), following warm-up and schedule, and
    ``stem_lr`` the smallest (named so that mmengine's log, which prints keys
    ending in ``lr`` in scientific notation, shows it as 4.1e-05 instead of 0.0000).
    ``lr`` leaves out groups given an ``lr_mult`` by ``custom_keys``; ``stem_lr``
    includes the stem's ``lr_mult``.
    Optimizers built by another constructor (no
    ``lr_scale`` in their groups) are left as mmengine logs them.
    """

    priority = 'VERY_HIGH'  # after mmengine's RuntimeInfoHook, registered first

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        optimizer = getattr(runner.optim_wrapper, 'optimizer', None)
        groups = getattr(optimizer, 'param_groups', [])
        if not groups or any('lr_scale' not in group for group in groups):
            return
        plain = [group for group in groups if group.get('lr_mult', 1.) == 1.] or groups
        scale = itemgetter('lr_scale')
        runner.message_hub.update_scalar('train/lr', max(plain, key=scale)['lr'])
        runner.message_hub.update_scalar('train/stem_lr', min(groups, key=scale)['lr'])
