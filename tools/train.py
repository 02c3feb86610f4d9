"""Train a detector or segmentor from a config (mmdet/mmseg command line).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
                          [--auto-scale-lr] [--no-data-check] [--cfg-options k=v ...]
                          [--launcher pytorch]

The config's ``default_scope`` ('mmdet' or 'mmseg') decides which library runs it. Before the
run starts, the train and val data are checked (convnext_mm.utils.data_contents: annotation
files, images, label maps, the heads' class counts); problems that would stop or corrupt
training end the run here, naming file and value.
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import Config  # noqa: E402

from convnext_mm.utils import (adapt_to_device, check_dataset_paths,  # noqa: E402
                               build_train_loop, load_tool_config, parse_tool_args,
                               resolve_resume, run_tool, use_flexible_runner,
                               use_safe_training_hooks)
from convnext_mm.utils.data_contents import check_data  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a detector or segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true', help='enable automatic mixed precision')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by (total batch size / auto_scale_lr.base_batch_size)')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CKPT, or without a value from the latest checkpoint '
                        'in the work dir')
    parser.add_argument('--no-data-check', action='store_true',
                        help='skip checking the data files before the run (for a data set '
                        'checked before: the check reads every annotation and label map)')
    return parse_tool_args(parser, argv)


def build_config(args) -> Config:
    cfg = load_tool_config(args)
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.auto_scale_lr:
        if 'base_batch_size' not in (cfg.get('auto_scale_lr') or {}):
            raise KeyError('--auto-scale-lr needs auto_scale_lr.base_batch_size in the config')
        cfg.auto_scale_lr.enable = True
    resolve_resume(cfg, args.resume)
    check_dataset_paths(cfg, 'train')
    if not args.no_data_check and int(os.environ.get('RANK', '0')) == 0:  # once per job
        check_dataset_paths(cfg, 'val')
        check_data(cfg)
    use_safe_training_hooks(cfg)
    use_flexible_runner(cfg)
    adapt_to_device(cfg)
    return cfg


def train(runner):
    build_train_loop(runner)  # fails clearly on an empty training set
    runner.train()


def main(argv=None):
    args = parse_args(argv)
    run_tool(build_config(args), train)


if __name__ == '__main__':
    main()
