"""Parameters and FLOPs of a config's model: the backbone alone and the whole model.

    python tools/get_flops.py CONFIG [--shape H W] [--cfg-options k=v ...]

FLOPs are counted by mmengine's analysis tools (one multiply-add = one FLOP, as in the paper
and in mmdet's/mmseg's get_flops) on one image of H x W (default: 1280 x 800 for detection,
2048 x 512 for segmentation, the sizes the paper quotes). A detector is counted as mmdet
counts it: the backbone, neck, RPN and the RoI heads on the test-time proposals; a segmentor
as mmseg counts it: backbone and decode head (no auxiliary head, one whole-image pass).
No weights are loaded, and nothing is downloaded.
"""
import argparse
import os.path as osp
import sys
from functools import partial

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import Config, DictAction  # noqa: E402

DEFAULT_SHAPES = {'mmdet': (1280, 800), 'mmseg': (2048, 512)}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Parameters and FLOPs of a model')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='input image size (default 1280 800 detection, 2048 512 '
                        'segmentation)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    args = parser.parse_args(argv)
    if args.shape is not None and min(args.shape) < 32:
        parser.error(f'--shape must be at least 32 32, got {args.shape}')
    if not osp.isfile(args.config):
        parser.error(f'config file not found: {args.config!r}')
    return args


def build_model(cfg):
    scope = cfg.get('default_scope')
    if scope == 'mmdet':
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
    elif scope == 'mmseg':
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules
    else:
        raise ValueError(f"default_scope must be 'mmdet' or 'mmseg', got {scope!r}")
    register_all_modules(init_default_scope=True)
    cfg.model.backbone.pop('init_cfg', None)  # counting needs no weights
    if scope == 'mmseg':
        cfg.model.pop('pretrained', None)
    return MODELS.build(cfg.model).eval()


def packed_inputs(model, scope, height, width):
    """One image of height x width, through the model's data preprocessor."""
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    meta = dict(img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width),
                scale_factor=(1.0, 1.0), batch_input_shape=(height, width))
    if scope == 'mmdet':
        from mmdet.structures import DetDataSample
        sample = DetDataSample(metainfo=meta)
    else:
        from mmseg.structures import SegDataSample
        sample = SegDataSample(metainfo=dict(meta, padding_size=[0, 0, 0, 0]))
    return model.data_preprocessor(dict(inputs=[image], data_samples=[sample]), False)


def count(model, inputs):
    from mmengine.analysis import FlopAnalyzer, parameter_count
    analyzer = FlopAnalyzer(model, inputs)
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    return parameter_count(model)[''], analyzer.total()


def get_flops(cfg, shape=None):
    """{'backbone': (params, flops), 'model': (params, flops)} of a config's model."""
    scope = cfg.get('default_scope')
    model = build_model(cfg)
    height, width = shape or DEFAULT_SHAPES[scope]
    data = packed_inputs(model, scope, height, width)
    with torch.no_grad():
        backbone = count(model.backbone, (data['inputs'], ))
        model.forward = partial(model._forward, data_samples=data['data_samples'])
        whole = count(model, (data['inputs'], ))
    return dict(backbone=backbone, model=whole, shape=(height, width))


def main(argv=None):
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    result = get_flops(cfg, args.shape)
    height, width = result['shape']
    print(f'{osp.basename(args.config)}, input 3 x {height} x {width}')
    print('| part | parameters | GFLOPs |')
    print('|---|---|---|')
    for part in ('backbone', 'model'):
        params, flops = result[part]
        print(f'| {part} | {params / 1e6:.2f} M | {flops / 1e9:.1f} |')


if __name__ == '__main__':
    main()
