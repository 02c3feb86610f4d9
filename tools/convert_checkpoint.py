"""Convert a ConvNeXt checkpoint of any supported layout to this project's layout.

    python tools/convert_checkpoint.py SRC DST [--arch tiny] [--use-grn]

SRC: official (1K/22K, V1/V2, detection/segmentation), mmpretrain, timm,
torchvision or Hugging Face transformers, as .pth, .bin or .safetensors, a URL, a
transformers ``save_pretrained`` folder or shard index, or a hub id
(``hf-hub:timm/convnextv2_base.fcmae``, ``hf-hub:facebook/convnextv2-base-22k-224``).
DST: .pth (written as ``{'state_dict': ...}`` with ``backbone.`` keys, loadable by
mmengine's ``load_from``) or .safetensors (plain backbone keys). The result is checked
by loading it into a ConvNeXt of the detected (or given) arch before it is written.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from convnext_mm import ConvNeXt  # noqa: E402
from convnext_mm.checkpoint import (describe_arch, load_checkpoint_file,  # noqa: E402
                                    load_converted, save_checkpoint_file)
from convnext_mm.checkpoint.formats import convert_checkpoint  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('src', help='checkpoint path, folder, URL or hf-hub:OWNER/NAME')
    parser.add_argument('dst', help='output .pth or .safetensors path')
    parser.add_argument('--arch', help='arch to check against (default: detected)')
    parser.add_argument('--use-grn', action='store_true', default=None,
                        help='V2 block (default: detected)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not args.dst.endswith(('.pth', '.safetensors')):
        sys.exit(f'DST must end in .pth or .safetensors, got {args.dst!r}')
    state_dict, source_format, left_out = convert_checkpoint(load_checkpoint_file(args.src))
    depths, channels, arch_name = describe_arch(state_dict)
    use_grn = args.use_grn if args.use_grn is not None else any('.grn.' in k for k in state_dict)
    arch = args.arch or dict(depths=depths, channels=channels)
    # Raises if the converted weights do not fit the arch.
    load_converted(ConvNeXt(arch, use_grn=use_grn), state_dict, args.src, source_format,
                   left_out)
    if args.dst.endswith('.pth'):
        save_checkpoint_file({f'backbone.{k}': v for k, v in state_dict.items()}, args.dst)
    else:
        save_checkpoint_file(state_dict, args.dst)
    print(f'{args.src} ({source_format}, {arch_name}) -> {args.dst}: {len(state_dict)} tensors')


if __name__ == '__main__':
    main()
