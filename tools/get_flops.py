"""Parameters and FLOPs of a config's model: the backbone alone and the whole model.

    python tools/get_flops.py CONFIG [--shape H W] [--cfg-options k=v ...]

FLOPs are counted by mmengine's analysis tools (one multiply-add = one FLOP, as in the paper
and in mmdet's/mmseg's get_flops) on one image of H x W (default: 1280 x 800 for detection,
2048 x 512 for segmentation, the sizes the paper quotes). A two-stage detector is counted as
the paper counted it (mmdet 2.x `forward_dummy`): backbone, neck, RPN head, every box head
stage on 1000 proposals and every mask head stage on the first 100 of them. (mmdet 3's own
tensor-mode forward runs the mask heads on all 1000 proposals, which counts about 2.7x the
paper's FLOPs for Cascade Mask R-CNN.) A segmentor is counted as mmseg counts it: backbone and
decode head, one whole-image pass, no auxiliary head. No weights are loaded or downloaded.
"""
import argparse
import os.path as osp
import sys

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
    cfg.model.backbone.pop('init_cfg', None)  # no pretrained weights: nothing is downloaded
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


def paper_detector_forward(model, inputs):
    """The FLOP-counting forward of mmdet 2.x two-stage detectors (``forward_dummy``)."""
    from mmdet.structures.bbox import bbox2roi
    x = model.extract_feat(inputs)
    outs = model.rpn_head(x)
    # The count does not depend on the boxes (RoIAlign gives 7x7 or 14x14 features whatever
    # their size; mmdet 2.x drew torch.randn(1000, 4)); boxes of 8-64 pixels keep the CPU
    # RoIAlign's sampling grid small (boxes spanning the image took 6 of its 30 s).
    height, width = inputs.shape[-2:]
    generator = torch.Generator().manual_seed(0)
    sizes = 8 + 56 * torch.rand(1000, 2, generator=generator)
    corners = torch.rand(1000, 2, generator=generator) * (torch.tensor([width, height]) - sizes)
    proposals = torch.cat([corners, corners + sizes], 1)
    rois = bbox2roi([proposals.to(inputs.device)])
    roi_head = model.roi_head
    stages = range(roi_head.num_stages) if hasattr(roi_head, 'num_stages') else [None]
    for stage in stages:
        args = (x, rois) if stage is None else (stage, x, rois)
        outs += tuple(roi_head._bbox_forward(*args).values())
    if roi_head.with_mask:
        for stage in stages:
            args = (x, rois[:100]) if stage is None else (stage, x, rois[:100])
            outs += (roi_head._mask_forward(*args)['mask_preds'], )
    return outs


def count(model, inputs, parts=('', )):
    """{part: (parameters, FLOPs)} of the model ('') and of its submodules named in ``parts``,
    from one traced forward pass."""
    from mmengine.analysis import FlopAnalyzer, parameter_count
    analyzer = FlopAnalyzer(model, inputs)
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    params, flops = parameter_count(model), analyzer.by_module()
    return {part: (params[part], flops[part]) for part in parts}


def get_flops(cfg, shape=None):
    """{'backbone': (params, flops), 'model': (params, flops)} of a config's model."""
    scope = cfg.get('default_scope')
    model = build_model(cfg)
    height, width = shape or DEFAULT_SHAPES[scope]
    data = packed_inputs(model, scope, height, width)
    if scope == 'mmdet' and getattr(model, 'with_rpn', False):
        model.forward = lambda inputs: paper_detector_forward(model, inputs)
    else:
        samples, tensor_forward = data['data_samples'], model._forward
        model.forward = lambda inputs: tensor_forward(inputs, samples)
    with torch.no_grad():
        counts = count(model, (data['inputs'], ), parts=('backbone', ''))
    return dict(backbone=counts['backbone'], model=counts[''], shape=(height, width))


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
        print(f'| {part} | {params / 1e6:.2f} M | {flops / 1e9:.2f} |')


if __name__ == '__main__':
    main()
