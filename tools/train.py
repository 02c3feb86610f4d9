"""Train a detector or segmentor from a config (mmdet/mmseg command line).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
                          [--auto-scale-lr] [--cfg-options k=v ...] [--launcher pytorch]

The config's ``default_scope`` ('mmdet' or 'mmseg') decides which library runs it.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import Config  # noqa: E402

from convnext_mm.utils import (adapt_to_device, check_dataset_paths,  # noqa: E402
                               build_train_loop, load_tool_config, parse_tool_args,
                               resolve_resume, run_tool, use_safe_training_hooks)


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
    return parse_tool_args(parser, argv)


def build_config(args) -> Config:
    cfg = load_tool_config(args)
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise KeyError('--auto-scale-lr needs auto_scale_lr.base_batch_size in the config')
        cfg.auto_scale_lr.enable = True
    resolve_resume(cfg, args.resume)
    check_dataset_paths(cfg, 'train')
    use_safe_training_hooks(cfg)
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
