"""Write a config that inherits an mmdet or mmseg config and puts ConvNeXt in its backbone.

    python tools/swap_backbone.py SRC_CONFIG ARCH OUT_CONFIG [--checkpoint CKPT]
                                  [--layer-decay] [--backbone-options k=v ...]

SRC_CONFIG is a file or an installed config (``mmdet::retinanet/retinanet_r50_fpn_1x_coco.py``).
OUT_CONFIG holds ``_base_ = SRC`` and only what changes (convnext_mm.backbone_swap): the
backbone, the channels of the neck (or of the heads that read the backbone), ``custom_imports``
and, with --layer-decay, the optimizer constructor with the recipes' decay for the scope.
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import Config, DictAction  # noqa: E402

from convnext_mm.backbone_swap import convnext_overrides  # noqa: E402


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
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    path = args.src
    if '::' in args.src:  # as mmengine resolves it in _base_
        from mmengine.utils import get_installed_path
        package, relative = args.src.split('::', 1)
        path = osp.join(get_installed_path(package), '.mim', 'configs', relative)
    if not osp.isfile(path):
        raise FileNotFoundError(f'Config file not found: {path!r}')
    if not args.out.endswith('.py'):
        raise ValueError(f'OUT_CONFIG must end in .py, got {args.out!r}')
    cfg = Config.fromfile(path)
    overrides = convnext_overrides(cfg, args.arch, checkpoint=args.checkpoint,
                                   layer_decay=args.layer_decay or None,
                                   **args.backbone_options)
    base = args.src if '::' in args.src else osp.relpath(
        osp.abspath(args.src), osp.dirname(osp.abspath(args.out)))
    text = f'_base_ = {base!r}\n\n' + Config(overrides).pretty_text.rstrip() + '\n'
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        f.write(text)
    Config.fromfile(args.out)  # it reads back
    print(f'{args.out}: {cfg.model.backbone.type} -> ConvNeXt-{args.arch} in {args.src}')


if __name__ == '__main__':
    main()
