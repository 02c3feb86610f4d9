"""A hook that raises on one rank, for the distributed fault test (imported by its config)."""
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class RaiseOnRankHook(Hook):

    def __init__(self, rank: int, iteration: int):
        self.rank = rank
        self.iteration = iteration

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        if runner.rank == self.rank and runner.iter + 1 == self.iteration:
            raise RuntimeError(f'injected fault on rank {self.rank} at iteration {self.iteration}')


@HOOKS.register_module()
class KillOnRankHook(Hook):
    """SIGKILLs one rank before an iteration, in the first attempt of a torchrun job only (the
    attempts torchrun starts again after it run on)."""

    def __init__(self, rank: int, iteration: int):
        self.rank = rank
        self.iteration = iteration

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        import os
        import signal
        first_attempt = os.environ.get('TORCHELASTIC_RESTART_COUNT', '0') == '0'
        if first_attempt and runner.rank == self.rank and runner.iter + 1 == self.iteration:
            os.kill(os.getpid(), signal.SIGKILL)
