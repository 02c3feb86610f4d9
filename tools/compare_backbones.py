"""The paper's backbone comparison on this machine: Cascade Mask R-CNN with ConvNeXt-T,
Swin-T (mmdet's own) and ResNet-50 (mmdet's own), side by side in one run.

    python tools/compare_backbones.py [--config CONFIG] [--shape 1280 800] [--num-images 20]
                                      [--warmup 2] [--scale 1333 800] [--device cuda]

For each backbone: parameters and GFLOPs of the whole detector (tools/get_flops.py, one
image of --shape H W) and inference images/s (tools/benchmark.py, the recipe's test
pipeline with its Resize scale set by --scale W H, on COCO val or the toy images). Only the
backbone and the FPN's input channels differ; neck, heads and test settings are those of
--config (default configs/cascade_convnext_t_coco.py; any mmdet detector config with an FPN
neck). Paper (A100): ConvNeXt-T 13.5 FPS, Swin-T 10.7 FPS.
"""
import argparse
import copy
import os.path as osp
import sys

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import Config  # noqa: E402

from tools.benchmark import benchmark  # noqa: E402
from tools.get_flops import get_flops  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
RECIPE = osp.join(ROOT, 'configs', 'cascade_convnext_t_coco.py')

BACKBONES = {
    'ConvNeXt-T': (dict(type='ConvNeXt', arch='tiny', drop_path_rate=0.4, out_indices=(0, 1, 2, 3)),
                   [96, 192, 384, 768]),
    'Swin-T': (dict(type='SwinTransformer', embed_dims=96, depths=[2, 2, 6, 2],
                    num_heads=[3, 6, 12, 24], window_size=7, mlp_ratio=4, qkv_bias=True,
                    drop_path_rate=0.2, patch_norm=True, out_indices=(0, 1, 2, 3)),
               [96, 192, 384, 768]),
    'ResNet-50': (dict(type='ResNet', depth=50, num_stages=4, out_indices=(0, 1, 2, 3),
                       frozen_stages=1, norm_cfg=dict(type='BN', requires_grad=True),
                       norm_eval=True, style='pytorch'),
                  [256, 512, 1024, 2048]),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='ConvNeXt-T vs Swin-T vs ResNet-50 in '
                                     'Cascade Mask R-CNN')
    parser.add_argument('--config', default=RECIPE,
                        help='the detector config the backbones are put in')
    parser.add_argument('--shape', type=int, nargs=2, default=(1280, 800), metavar=('H', 'W'),
                        help='image size for the FLOP count')
    parser.add_argument('--scale', type=int, nargs=2, default=(1333, 800), metavar=('W', 'H'),
                        help="the test pipeline's Resize scale for the speed run")
    parser.add_argument('--num-images', type=int, default=20)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = parser.parse_args(argv)
    if args.num_images < 1 or args.warmup < 0 or min(args.shape + args.scale) < 32:
        parser.error('--num-images must be >= 1, --warmup >= 0 and sizes >= 32, got '
                     f'{args.num_images}, {args.warmup}, {args.shape}, {args.scale}')
    if not osp.isfile(args.config):
        parser.error(f'config file not found: {args.config!r}')
    return args


def detector_config(backbone, in_channels, scale, config=RECIPE):
    cfg = Config.fromfile(config)
    cfg.model.backbone = copy.deepcopy(backbone)
    cfg.model.neck.in_channels = in_channels
    for step in cfg.test_dataloader.dataset.pipeline:
        if step['type'] == 'Resize':
            step['scale'] = tuple(scale)
    return cfg


def main(argv=None):
    args = parse_args(argv)
    rows = []
    for name, (backbone, in_channels) in BACKBONES.items():
        flops = get_flops(detector_config(backbone, in_channels, args.scale, args.config),
                          args.shape)
        fps = benchmark(detector_config(backbone, in_channels, args.scale, args.config),
                        num_images=args.num_images, warmup=args.warmup, device=args.device)
        rows.append((name, flops['model'][0], flops['model'][1], fps))
        print(f'{name}: done', flush=True)
    where = torch.cuda.get_device_name() if args.device.startswith('cuda') else \
        f'CPU, {torch.get_num_threads()} threads'
    print(f'\n{osp.basename(args.config)}, {where}; GFLOPs at {args.shape[0]}x{args.shape[1]}, '
          f'speed at test scale {args.scale[0]}x{args.scale[1]}, {args.num_images} images')
    print('| backbone | parameters | GFLOPs | images/s | speed vs ConvNeXt-T |')
    print('|---|---|---|---|---|')
    base_fps = rows[0][3]
    for name, params, gflops, fps in rows:
        print(f'| {name} | {params / 1e6:.1f} M | {gflops / 1e9:.0f} | {fps:.2f} | '
              f'{fps / base_fps:.2f}x |')


if __name__ == '__main__':
    main()
