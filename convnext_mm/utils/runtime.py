"""What tools/train.py and tools/test.py share: device adaptation and safe resuming."""
import argparse
import contextlib
import gc
import logging
import os
import os.path as osp

import mmengine.config.config
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


def load_model_config(path: str, cfg_options=None) -> Config:
    """The config of a trained model for the tools that run it outside a runner
    (``tools/infer.py``, ``tools/export_onnx.py``): the file checked, ``--cfg-options``
    merged, ``default_scope`` 'mmdet' or 'mmseg'."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'Config file not found: {path!r}')
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope = cfg.get('default_scope')
    if scope not in ('mmdet', 'mmseg'):
        raise ValueError(f"{path}: default_scope must be 'mmdet' or 'mmseg', got {scope!r}")
    return cfg


def use_safe_training_hooks(cfg: Config) -> None:
    """Give any config the kill-safe checkpoint hook and the non-finite loss check.

    mmengine's ``CheckpointHook`` becomes ``AtomicCheckpointHook`` (a subclass
    with the same arguments) and ``FiniteLossHook`` is added unless present.
    """
    checkpoint_hook = cfg.get('default_hooks', {}).get('checkpoint')
    if checkpoint_hook is not None and checkpoint_hook.get('type') in ('CheckpointHook',
                                                                       'mmengine.CheckpointHook'):
        checkpoint_hook['type'] = 'AtomicCheckpointHook'
    custom_hooks = cfg.get('custom_hooks') or []
    if not any(hook.get('type') == 'FiniteLossHook' for hook in custom_hooks):
        cfg.custom_hooks = list(custom_hooks) + [dict(type='FiniteLossHook')]


def _env_count(name: str) -> int:
    return int(os.environ.get(name, '0') or 0)


def restart_count() -> tuple:
    """(this attempt's restart number, the restarts allowed) when the job was started again
    by torchrun's elastic agent (``--max-restarts``: ``TORCHELASTIC_RESTART_COUNT``) or by a
    slurm requeue (``SLURM_RESTART_COUNT``, no limit known: None); (0, ...) on a first start."""
    torchrun = _env_count('TORCHELASTIC_RESTART_COUNT')
    if torchrun:
        return torchrun, _env_count('TORCHELASTIC_MAX_RESTARTS')
    return _env_count('SLURM_RESTART_COUNT'), None


def resolve_resume(cfg: Config, resume) -> None:
    """Set ``cfg.resume``/``cfg.load_from`` for ``--resume [CKPT]`` and check, before the
    run starts, that the checkpoint to be read exists and is complete.

    ``resume='auto'`` takes the checkpoint named by ``<work_dir>/last_checkpoint``
    (none: training starts from scratch, as in mmengine). A job started again after a
    failure (``restart_count``) resumes from that checkpoint whatever ``--resume`` said, or,
    when none was written yet, starts as the first attempt did.
    """
    from mmengine.runner import find_latest_checkpoint

    from ..checkpoint import check_checkpoint_file
    pointer = osp.join(cfg.work_dir, 'last_checkpoint')
    latest = find_latest_checkpoint(cfg.work_dir) if osp.isfile(pointer) else None
    restart, allowed = restart_count()
    if restart:
        left = '' if allowed is None else f'; {allowed - restart} of {allowed} restarts remain'
        if int(os.environ.get('RANK', '0')) == 0:
            print_log(f'Restart {restart} of the job{left}: resuming from '
                      f'{latest or "the start (no checkpoint was written yet)"}',
                      logger='current', level=logging.WARNING)
        if latest is not None:
            resume = 'auto'
    if resume == 'auto':
        cfg.resume, cfg.load_from = True, None
        if latest is not None:
            check_checkpoint_file(latest, f'The checkpoint named by {pointer}')
    elif resume is not None:
        check_checkpoint_file(resume, '--resume checkpoint')
        cfg.resume, cfg.load_from = True, resume
    elif cfg.get('load_from') and '://' not in cfg.load_from:
        check_checkpoint_file(cfg.load_from, 'load_from checkpoint')


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

    Without CUDA: distributed runs use gloo instead of nccl (the process group is
    started by ``run_tool``), SyncBN (CUDA only) becomes BN, and AMP (mmengine's
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
    if changes:
        print_log(f'No CUDA device: {"; ".join(changes)}', logger='current', level=logging.WARNING)


def start_process_group(cfg: Config) -> None:
    """Start the process group of a torchrun launch (``--launcher pytorch``) here, where
    mmengine's ``init_dist`` would fail; the runner skips its own when a group exists.

    - Without CUDA: ``init_dist`` calls ``torch.cuda.set_device``.
    - An attempt torchrun started again (``--max-restarts``): torch 2.14's agent hands every
      attempt the same store, where the failed attempt's keys (the dead ranks' addresses)
      stay, and the new group waited for them forever; each attempt gets its own namespace.
    """
    dist = torch.distributed
    if cfg.get('launcher') != 'pytorch' or dist.is_initialized():
        return
    restart = _env_count('TORCHELASTIC_RESTART_COUNT')
    if torch.cuda.is_available() and not restart:
        return  # mmengine's init_dist
    backend = cfg.get('env_cfg', {}).get('dist_cfg', {}).get('backend', 'nccl')
    rank, world_size = int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ['LOCAL_RANK']))
    if restart and os.environ.get('TORCHELASTIC_USE_AGENT_STORE') == 'True':
        agent_store = dist.TCPStore(os.environ['MASTER_ADDR'], int(os.environ['MASTER_PORT']),
                                    world_size, is_master=False)
        store = dist.PrefixStore(f'/convnext_mm/attempt_{restart}', agent_store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world_size)
    else:
        dist.init_process_group(backend, init_method='env://')


def use_flexible_runner(cfg: Config) -> None:
    """Configs that name a ``strategy`` (FSDP, DeepSpeed) run on mmengine's FlexibleRunner."""
    if cfg.get('strategy'):
        import convnext_mm.engine.fsdp_strategy  # noqa: F401  (registers ConvNeXtFSDPStrategy)
        if not cfg.get('runner_type'):
            cfg.runner_type = 'FlexibleRunner'


def run_tool(cfg: Config, action) -> None:
    """Build the runner of a train/test tool, hand it to ``action``, then close the
    distributed process group.

    Every checkpoint the runner reads (``--resume``, ``load_from``) goes through
    the restricted unpickler, routed there by ``import convnext_mm``. The process
    group is closed even when ``action`` fails: gloo's threads still running at
    interpreter shutdown abort the process ("terminate called without an active
    exception"). The runner goes first, reference cycles included, because its DDP
    wrapper holds the group: left to interpreter shutdown, the group's threads
    were sometimes torn down mid-flight (2 of 10 two-process CPU runs; 0 of 25 this way).
    """
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    start_process_group(cfg)
    with config_text_formatted_once():
        runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
        try:
            action(runner)
        finally:
            del runner
            gc.collect()
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()


@contextlib.contextmanager
def config_text_formatted_once():
    """Reuse yapf's formatting of an unchanged config text while the runner lives.

    mmengine formats the whole config (``Config.pretty_text``) each time it needs its text:
    to log it, to dump it (twice), for the message hub and in every checkpoint it saves;
    about 1.1 s each for the detection configs on a 2-core CPU (4 of the 5 s a training run
    spends before its first step; the same text every time).
    """
    format_code = mmengine.config.config.FormatCode
    formatted = {}

    def format_once(text, style_config=None, **kwargs):
        key = (text, repr(style_config), repr(sorted(kwargs.items())))
        if key not in formatted:
            formatted[key] = format_code(text, style_config=style_config, **kwargs)
        return formatted[key]

    mmengine.config.config.FormatCode = format_once
    try:
        yield
    finally:
        mmengine.config.config.FormatCode = format_code
