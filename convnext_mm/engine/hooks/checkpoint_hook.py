"""A CheckpointHook whose checkpoints survive a kill at any moment."""
import glob
import os
import os.path as osp
import random

import numpy as np
import torch
from mmengine.dist import all_gather_object, is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

PARTIAL_SUFFIX = '.partial'


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomically(path: str, text: str) -> None:
    """Replace ``path`` with ``text`` so that readers see the old or the new text, never a mix."""
    partial = path + PARTIAL_SUFFIX
    with open(partial, 'w') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)


def get_rng_state() -> dict:
    """The random states that data augmentation and stochastic depth draw from."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state = dict(
        python=random.getstate(),
        numpy=(np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos),
               int(np_has_gauss), float(np_gauss)),
        torch=torch.get_rng_state())
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state['python'])
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state['numpy']
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss,
                         np_gauss))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` (same arguments) made safe against kills.

    On a local disk each checkpoint is written to ``<name>.partial``, synced and
    renamed into place; only then is ``last_checkpoint`` (what ``--resume``
    reads) replaced, again by a rename, and only then are checkpoints beyond
    ``max_keep_ckpts`` removed (mmengine removes them before writing the new
    one). A kill at any moment leaves the previous checkpoint and pointer intact.

    Checkpoints also carry every rank's Python, numpy and torch random states
    (ranks draw differently: the RoI samplers' draws depend on each image's
    boxes), each restored on its rank when training resumes with the same
    number of ranks, and validation runs on a saved-and-restored random state, so
    that a resumed epoch-based run with the same seed reproduces the
    uninterrupted one bit for bit (CPU, deterministic mode, ``num_workers=0`` or
    non-persistent workers).
    """

    _resumed_rng_state = None  # from the checkpoint being resumed, until training starts
    _train_rng_state = None  # the training random state, kept aside during validation
    _rank_rng_states = None  # every rank's, gathered for the checkpoint being saved

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if isinstance(self.file_backend, LocalBackend) and is_main_process():
            for partial in glob.glob(osp.join(glob.escape(self.out_dir), '*' + PARTIAL_SUFFIX)):
                runner.logger.warning(f'Removing {partial}: an incomplete checkpoint left by '
                                      f'an interrupted run')
                os.remove(partial)
        if self._resumed_rng_state is not None:
            set_rng_state(self._resumed_rng_state)
            self._resumed_rng_state = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        # rank 0 alone writes the checkpoint; _save_checkpoint_with_step gathered the others'
        checkpoint['rng_state'] = self._rank_rng_states or [get_rng_state()]
        self._rank_rng_states = None

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # Resuming loads the checkpoint before the runner re-seeds; restored in before_train.
        if runner._resume and 'rng_state' in checkpoint:
            states = checkpoint['rng_state']
            if isinstance(states, dict):  # written before the states were kept per rank
                states = [states]
            self._resumed_rng_state = states[runner.rank if runner.rank < len(states) else 0]

    def before_val(self, runner) -> None:
        self._train_rng_state = get_rng_state()

    def after_val(self, runner) -> None:
        if self._train_rng_state is not None:
            set_rng_state(self._train_rng_state)
            self._train_rng_state = None

    def _save_checkpoint_with_step(self, runner, step, meta):
        self._rank_rng_states = all_gather_object(get_rng_state())  # on every rank
        if not isinstance(self.file_backend, LocalBackend):
            return super()._save_checkpoint_with_step(runner, step, meta)
        stale = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                stale.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        name = self.filename_tmpl.format(step)
        self.last_ckpt = osp.join(self.out_dir, name)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir,
            name + PARTIAL_SUFFIX,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args)
        if not is_main_process():
            return
        partial = self.last_ckpt + PARTIAL_SUFFIX
        _fsync(partial)
        os.replace(partial, self.last_ckpt)
        write_text_atomically(osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)
        for old_step in stale:
            old = osp.join(self.out_dir, self.filename_tmpl.format(old_step))
            if osp.isfile(old) and old != self.last_ckpt:
                os.remove(old)
