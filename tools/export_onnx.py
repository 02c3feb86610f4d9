"""Export a ConvNeXt backbone, an UperNet segmentor or a detector's first stage to ONNX, and
check the file against PyTorch with onnxruntime.

    python tools/export_onnx.py CONFIG [CHECKPOINT] --out model.onnx [--shape H W] [--dynamic]
                                [--part model|backbone] [--check-shape H W] [--atol 1e-4]

--part model (default): an mmseg segmentor, image -> logits at the image's size; an mmdet
two-stage detector, image -> FPN features and RPN scores and deltas per level (the RoI heads
are not exported: docs/export.md). --part backbone: the config's backbone, image -> its
stage outputs. The input is the data preprocessor's output (RGB, normalised with the
config's mean and std). Without CHECKPOINT the weights are random (to check the graph only).

The export runs the plain model (no CPU accelerators, no custom ops) through torch's dynamo
exporter at opset 18: each LayerNorm stays one LayerNormalization op and GRN's norm one
ReduceL2, which half-precision engines compute without overflow. onnxruntime then runs the
file at the export size and, with --dynamic, at --check-shape (default: 32 and 64 pixels
more); a difference over --atol fails the export and keeps the file as NAME.unverified.onnx.
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import DictAction  # noqa: E402

from convnext_mm.checkpoint import check_checkpoint_file  # noqa: E402
from convnext_mm.utils import load_model_config  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Export to ONNX and check with onnxruntime')
    parser.add_argument('config', help='config file of the model')
    parser.add_argument('checkpoint', nargs='?', help='checkpoint (default: random weights)')
    parser.add_argument('--out', required=True, help='the .onnx file to write')
    parser.add_argument('--shape', type=int, nargs=2, default=[512, 512], metavar=('H', 'W'),
                        help='input height and width of the export (default 512 512)')
    parser.add_argument('--dynamic', action='store_true',
                        help='batch size, height and width free in the graph')
    parser.add_argument('--part', choices=['model', 'backbone'], default='model',
                        help='the whole model (default) or its backbone')
    parser.add_argument('--check-shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='second input size of the check (with --dynamic)')
    parser.add_argument('--atol', type=float, default=1e-4,
                        help='largest allowed |onnxruntime - PyTorch| (default 1e-4)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    args = parser.parse_args(argv)
    if not args.out.endswith('.onnx'):
        parser.error(f'--out must end in .onnx, got {args.out!r}')
    for flag, shape in (('--shape', args.shape), ('--check-shape', args.check_shape)):
        if shape is not None and min(shape) < 32:
            parser.error(f'{flag} must be at least 32 32 (the backbone downsamples 32x), '
                         f'got {shape[0]} {shape[1]}')
    if args.check_shape is not None and not args.dynamic:
        parser.error('--check-shape needs --dynamic (a static graph takes one size)')
    return args


def build_model(cfg, checkpoint):
    """The config's model in eval mode, with the checkpoint's weights when given."""
    import torch.nn as nn
    from mmengine.registry import init_default_scope
    from mmengine.runner.checkpoint import _load_checkpoint_to_model

    from convnext_mm.checkpoint import check_fits_model, load_checkpoint_file
    init_default_scope(cfg.default_scope)
    from mmengine.registry import MODELS
    cfg.model.backbone.pop('init_cfg', None)  # weights come from the checkpoint, or none
    model: nn.Module = MODELS.build(cfg.model)
    if checkpoint is not None:
        state = load_checkpoint_file(checkpoint)
        check_fits_model(model, state, checkpoint, cfg.filename)
        _load_checkpoint_to_model(model, state, strict=True)  # drops a 'module.' prefix
    return model.eval()


def exported_part(model, scope, part):
    """(module to export, its output names)."""
    from convnext_mm.deploy import DetectorFirstStage, SegmentorLogits
    if part == 'backbone':
        return model.backbone, [f'stage{i}' for i in model.backbone.out_indices]
    if scope == 'mmseg':
        return SegmentorLogits(model), ['logits']
    if not hasattr(model, 'rpn_head'):
        raise ValueError(f'--part model exports two-stage detectors (an rpn_head); '
                         f'{type(model).__name__} has none: use --part backbone')
    return DetectorFirstStage(model), DetectorFirstStage.output_names(model.neck.num_outs)


def check_export_packages():
    import importlib.util
    missing = [name for name in ('onnx', 'onnxscript', 'onnxruntime')
               if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f'tools/export_onnx.py needs {", ".join(missing)}: '
                          f'pip install "convnext_mm[export]" (or the pinned requirements/env.txt)')


def main(argv=None):
    args = parse_args(argv)
    check_export_packages()
    cfg = load_model_config(args.config, args.cfg_options)
    if args.checkpoint is not None:
        check_checkpoint_file(args.checkpoint)

    from convnext_mm.deploy import export_onnx, max_abs_differences, with_exportable_pooling
    model = build_model(cfg, args.checkpoint)
    module, output_names = exported_part(model, cfg.default_scope, args.part)
    module = with_exportable_pooling(module)
    partial = args.out + '.partial'
    export_onnx(module, partial, args.shape, args.dynamic, output_names)

    shapes = [tuple(args.shape)]
    if args.dynamic:
        shapes.append(tuple(args.check_shape or (args.shape[0] + 32, args.shape[1] + 64)))
    differences = max_abs_differences(module, partial, shapes)
    report = ', '.join(f'{h}x{w}: {d:.2e}' if isinstance(d, float) else f'{h}x{w}: {d}'
                       for (h, w), d in differences.items())
    if any(isinstance(d, str) or d > args.atol for d in differences.values()):
        unverified = osp.splitext(args.out)[0] + '.unverified.onnx'
        os.replace(partial, unverified)
        sys.exit(f'onnxruntime differs from PyTorch by more than --atol {args.atol:g} or fails '
                 f'({report}); the file is kept as {unverified} for inspection')
    os.replace(partial, args.out)
    preprocessor = cfg.model.get('data_preprocessor', {})
    print(f'{args.out}: {args.part} of {osp.basename(args.config)}, input "image" (N, 3, H, W) '
          f'RGB normalised with mean {preprocessor.get("mean")} and std '
          f'{preprocessor.get("std")}, {"dynamic" if args.dynamic else "static"} size; '
          f'outputs {", ".join(output_names)}')
    print(f'max |onnxruntime - PyTorch|: {report} (allowed {args.atol:g})')


if __name__ == '__main__':
    main()
