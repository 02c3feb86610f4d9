"""Test (evaluate) a trained detector or segmentor (mmdet/mmseg command line).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out results.pkl]
                         [--show-dir DIR] [--tta] [--cfg-options k=v ...] [--launcher pytorch]
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import Config  # noqa: E402

from convnext_mm.checkpoint import check_checkpoint_file  # noqa: E402
from convnext_mm.utils import (adapt_to_device, check_dataset_paths, load_tool_config,  # noqa: E402
                               parse_tool_args, run_tool)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save the evaluation metrics')
    parser.add_argument('--out', help='dump predictions to a pickle file (.pkl/.pickle)')
    parser.add_argument('--show-dir', help='save pictures of the predictions into this dir '
                        '(detection: under the work dir\'s timestamped folder; segmentation: '
                        'under the work dir, in vis_data/vis_image)')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation from the '
                        "config's tta_model / tta_pipeline")
    return parse_tool_args(parser, argv)


def enable_visualization(cfg, show_dir):
    hooks = cfg.default_hooks
    name = 'visualization'
    if name not in hooks:
        raise KeyError('--show-dir needs default_hooks.visualization in the config')
    hooks[name]['draw'] = True
    hooks[name]['show'] = False
    if cfg.default_scope == 'mmdet':
        hooks[name]['test_out_dir'] = show_dir
    else:  # mmseg's SegVisualizationHook writes through the visualizer, under its save_dir
        cfg.visualizer['save_dir'] = osp.join(cfg.work_dir, show_dir)
        hooks[name]['interval'] = 1


def enable_tta(cfg):
    if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
        raise KeyError('--tta needs tta_model and tta_pipeline in the config')
    cfg.model = dict(cfg.tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline


def build_config(args) -> Config:
    check_checkpoint_file(args.checkpoint)
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        raise ValueError(f'--out must end in .pkl or .pickle, got {args.out!r}')
    cfg = load_tool_config(args)
    cfg.load_from = args.checkpoint
    if cfg.pop('strategy', None) and cfg.get('runner_type') == 'FlexibleRunner':
        cfg.pop('runner_type')  # an FSDP run's checkpoint is whole: tested on the Runner
    check_dataset_paths(cfg, 'test')
    if args.show_dir:
        enable_visualization(cfg, args.show_dir)
    if args.tta:
        enable_tta(cfg)
    adapt_to_device(cfg)
    return cfg


def test(runner, out=None):
    if out is not None:
        from mmengine.evaluator import DumpResults
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=out))
    runner.test()


def main(argv=None):
    args = parse_args(argv)
    run_tool(build_config(args), lambda runner: test(runner, args.out))


if __name__ == '__main__':
    main()
