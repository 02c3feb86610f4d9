"""Per-GPU memory of the model states (parameters, gradients, AdamW states) of recipes under DDP
and under FSDP (one unit per ConvNeXt block), computed from their parameter counts.

    python tools/plan_memory.py CONFIG [CONFIG ...] [--gpus 1 8 32] [--arch-only huge ...]

fp32 training keeps 4 bytes of parameter, 4 of gradient and 8 of AdamW states (exp_avg,
exp_avg_sq) per parameter: 16 bytes, on every GPU under DDP. FSDP (FULL_SHARD) keeps 16 / N
bytes per parameter on each of N GPUs, plus, while a unit runs, that unit's whole parameters
and gradients (8 bytes per parameter): the root unit (everything outside the blocks: stem,
downsampling, neck, heads) and the largest block. AMP (mmengine's AmpOptimWrapper) keeps fp32
parameters too, so the same figures hold. Activations come on top and depend on image size,
batch and ``with_cp``. Models are built on the meta device: nothing is allocated or downloaded.
"""
import argparse
import os.path as osp
import sys

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import Config  # noqa: E402

from tools.get_flops import build_model  # noqa: E402

BYTES_DDP = 16  # fp32 parameter + gradient + two AdamW states
BYTES_GATHERED = 8  # a unit's whole parameters and gradients while it runs


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('configs', nargs='*', help='recipe config files')
    parser.add_argument('--gpus', type=int, nargs='+', default=[1, 8, 32])
    parser.add_argument('--arch-only', nargs='*', default=[], metavar='ARCH',
                        help='also the backbone alone of these archs, V2 blocks (e.g. huge)')
    args = parser.parse_args(argv)
    for path in args.configs:
        if not osp.isfile(path):
            parser.error(f'config file not found: {path!r}')
    if any(n < 1 for n in args.gpus):
        parser.error(f'--gpus must be >= 1, got {args.gpus}')
    return args


def build_on_meta(cfg: Config) -> torch.nn.Module:
    import convnext_mm  # noqa: F401
    with torch.device('meta'):
        return build_model(cfg)


def unit_sizes(model: torch.nn.Module):
    """(all parameters, the root unit's, the largest block's) under one FSDP unit per block."""
    from convnext_mm.models.backbones.convnext import ConvNeXtBlock
    blocks = [sum(p.numel() for p in m.parameters()) for m in model.modules()
              if isinstance(m, ConvNeXtBlock)]
    total = sum(p.numel() for p in model.parameters())
    return total, total - sum(blocks), max(blocks, default=0)


def row(name: str, model: torch.nn.Module, gpus) -> str:
    total, root, largest = unit_sizes(model)
    cells = [f'{BYTES_DDP * total / 2**30:.2f}']
    for n in gpus:
        cells.append(f'{(BYTES_DDP * total / n + BYTES_GATHERED * (root + largest)) / 2**30:.2f}')
    return f'| {name} | {total / 1e6:.0f} M | {root / 1e6:.1f} M | ' + ' | '.join(cells) + ' |'


def main(argv=None):
    args = parse_args(argv)
    print('| model | parameters | outside the blocks | DDP, any number of GPUs | ' +
          ' | '.join(f'FSDP, {n} GPU{"s" if n > 1 else ""}' for n in args.gpus) + ' |')
    print('| --- ' * (4 + len(args.gpus)) + '|')
    for path in args.configs:
        print(row(osp.splitext(osp.basename(path))[0], build_on_meta(Config.fromfile(path)),
                  args.gpus))
    from convnext_mm import ConvNeXt
    for arch in args.arch_only:
        with torch.device('meta'):
            backbone = ConvNeXt(arch, use_grn=True)
        print(row(f'ConvNeXt V2-{arch} backbone alone', backbone, args.gpus))
    print('\nGiB per GPU of parameters, gradients and AdamW states (fp32), activations not '
          'included.')


if __name__ == '__main__':
    main()
