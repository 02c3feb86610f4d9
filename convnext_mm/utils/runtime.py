"""What tools/train.py and tools/test.py share: device adaptation and safe resuming."""
import argparse
import logging
import os
import os.path as osp
import pickle

import torch
from mmengine.config import Config, DictAction
from mmengine.logging import print_log


def parse_tool_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Add the flags every OpenMMLab train/test tool shares, parse, and export LOCAL_RANK."""
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value (e.g. '
                        'train_dataloader.batch_size=4)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def load_tool_config(args) -> Config:
    """The config of a train/test command line: file, --cfg-options, --launcher, --work-dir."""
    if not osp.isfile(args.config):
        raise FileNotFoundError(f'Config file not found: {args.config!r}')
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg


def _replace_sync_bn(node) -> int:
    """Turn SyncBN into BN everywhere in a config tree; returns how many were changed."""
    changed = 0
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
            changed += 1
        for value in node.values():
            changed += _replace_sync_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            changed += _replace_sync_bn(value)
    return changed


def adapt_to_device(cfg: Config) -> None:
    """Let a GPU recipe run on a machine without CUDA, saying what changed.

    Without CUDA: distributed runs use gloo instead of nccl (and the process
    group is started here), SyncBN (CUDA only) becomes BN, and AMP (mmengine's
    AmpOptimWrapper needs a GPU) becomes fp32.
    Nothing changes where CUDA is available.
    """
    if torch.cuda.is_available():
        return
    changes = []
    dist_cfg = cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})
    if dist_cfg.get('backend', 'nccl') != 'gloo':
        dist_cfg['backend'] = 'gloo'
        changes.append('distributed backend nccl -> gloo')
    launcher = cfg.get('launcher', 'none')
    distributed = launcher != 'none'
    if distributed and _replace_sync_bn(cfg.model):
        changes.append('SyncBN -> BN')
    if distributed and cfg.get('model_wrapper_cfg') is None:
        # mmengine's default wrapper passes a CUDA device id, which DDP refuses for CPU modules.
        cfg.model_wrapper_cfg = dict(
            type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
        changes.append('DDP without device_ids')
    if cfg.get('optim_wrapper', {}).get('type') == 'AmpOptimWrapper':
        cfg.optim_wrapper.type = 'OptimWrapper'
        cfg.optim_wrapper.pop('loss_scale', None)
        changes.append('AmpOptimWrapper -> OptimWrapper (fp32)')
    if launcher == 'pytorch' and not torch.distributed.is_initialized():
        # mmengine's init_dist calls torch.cuda.set_device, which fails without CUDA;
        # the runner skips its own init when the process group already exists.
        torch.distributed.init_process_group(backend='gloo', init_method='env://')
        changes.append('process group started with gloo')
    if changes:
        print_log(f'No CUDA device: {"; ".join(changes)}', logger='current', level=logging.WARNING)


def _history_buffer_method(owner, name):
    """Stands in for ``builtins.getattr`` while unpickling a checkpoint.

    mmengine pickles ``HistoryBuffer``'s statistics methods (min, max, mean,
    current) as ``getattr(HistoryBuffer, 'min')``. A real ``getattr`` would let
    a crafted pickle walk from any allowed object to arbitrary code, so only
    those lookups are answered.
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    if owner is HistoryBuffer:
        if name in ('min', 'max', 'mean', 'current'):  # registered by every HistoryBuffer
            return getattr(HistoryBuffer, name)
        if name in HistoryBuffer._statistics_methods:  # custom ones registered in this process
            return HistoryBuffer._statistics_methods[name]
    raise pickle.UnpicklingError(
        f'Refused getattr({owner!r}, {name!r}) in a checkpoint: only the statistics methods '
        f'of mmengine\'s HistoryBuffer are allowed')


def allow_mmengine_checkpoint_globals() -> None:
    """Allow-list, for ``torch.load(weights_only=True)``, exactly the non-tensor
    objects that mmengine 0.10 writes into its checkpoints: the message hub's
    ``HistoryBuffer`` (with its statistics methods) and the numpy arrays,
    dtypes and scalars inside it.

    torch >= 2.6 loads with ``weights_only=True`` by default, so ``--resume``
    fails on mmengine's own checkpoints without this; the restricted unpickler
    stays on for everything else.
    """
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    dtype_classes = [type(np.dtype(name)) for name in ('float64', 'float32', 'int64', 'int32')]
    torch.serialization.add_safe_globals(
        [HistoryBuffer, _reconstruct, scalar, np.ndarray, np.dtype] + dtype_classes +
        [(_history_buffer_method, 'builtins.getattr')])


def run_tool(cfg: Config, action) -> None:
    """Build the runner of a train/test tool, hand it to ``action``, then close the
    distributed process group.

    Checkpoints are loaded through the restricted unpickler with mmengine's
    classes allow-listed. The process group is closed even when ``action``
    fails: gloo's threads still running at interpreter shutdown abort the
    process ("terminate called without an active exception").
    """
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    allow_mmengine_checkpoint_globals()
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    try:
        action(runner)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
