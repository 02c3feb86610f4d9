"""Write a config that inherits an mmdet or mmseg config and puts ConvNeXt in its backbone.

    python tools/swap_backbone.py SRC_CONFIG ARCH OUT_CONFIG [--checkpoint CKPT]
                                  [--layer-decay] [--backbone-options k=v ...]

SRC_CONFIG is a file or an installed config (``mmdet::retinanet/retinanet_r50_fpn_1x_coco.py``).
OUT_CONFIG holds ``_base_ = SRC`` and only what changes (convnext_mm.backbone_swap): the
backbone, the channels of the neck (or of the heads that read the backbone), ``custom_imports``
and, with --layer-decay, the optimizer constructor with the recipes' decay for the scope.
Before writing, the swapped model is built (one block per ConvNeXt stage) and its losses are
computed on two synthetic images, so a config that would fail at its first iteration is
refused here.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import Config, DictAction  # noqa: E402

from convnext_mm.backbone_swap import check_swapped_model, convnext_overrides  # noqa: E402
from convnext_mm.config_writer import (merged_config, resolve_config_path,  # noqa: E402
                                       write_inheriting_config)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Put ConvNeXt into an mmdet/mmseg config')
    parser.add_argument('src', help='config file, or an installed one as mmdet::PATH')
    parser.add_argument('arch', help='ConvNeXt arch: atto ... huge')
    parser.add_argument('out', help='the config file to write')
    parser.add_argument('--checkpoint', help='pretrained backbone weights (path or URL)')
    parser.add_argument('--layer-decay', action='store_true',
                        help='ConvNeXtLayerDecayOptimizerConstructor with the recipes\' decay')
    parser.add_argument('--backbone-options', nargs='+', action=DictAction, default={},
                        help='more ConvNeXt arguments, e.g. drop_path_rate=0.4 use_grn=True')
    parser.add_argument('--no-check', action='store_true',
                        help='write without building the model and computing its losses on two '
                        'synthetic images first (a few seconds on a CPU)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not args.out.endswith('.py'):
        raise ValueError(f'OUT_CONFIG must end in .py, got {args.out!r}')
    cfg = Config.fromfile(resolve_config_path(args.src))
    overrides = convnext_overrides(cfg, args.arch, checkpoint=args.checkpoint,
                                   layer_decay=args.layer_decay or None,
                                   **args.backbone_options)
    if not args.no_check:
        check_swapped_model(merged_config(cfg, overrides), args.src)
    write_inheriting_config(args.src, args.out, overrides)
    print(f'{args.out}: {cfg.model.backbone.type} -> ConvNeXt-{args.arch} in {args.src}')


if __name__ == '__main__':
    main()
