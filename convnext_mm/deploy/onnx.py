"""ONNX export with dynamic height and width, checked against PyTorch.

torch 2.14's exporter of choice is the dynamo one (``torch.onnx.export(dynamo=True)``,
through ``torch.export``); the TorchScript one is deprecated and cannot export
``adaptive_avg_pool2d`` with dynamic sizes. The dynamo exporter decomposes that op with the
window sizes of the example input baked in: an UperNet exported at one size then gives wrong
logits at another without an error. ``with_exportable_pooling`` swaps such pooling layers for
an exact formulation that follows the input's size in the graph.
"""
import copy
import os
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

OPSET = 18  # LayerNorm as one LayerNormalization op needs >= 17


class ExportableAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as two averaging matrices, ``P_h @ x @ P_w^T``, built from the
    input's height and width inside the graph (row ``i`` of ``P`` averages the window
    ``[floor(i * L / s), ceil((i + 1) * L / s))``, as PyTorch's kernel does)."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    @staticmethod
    def _averaging_matrix(length, size: int, like: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(size, device=like.device)
        start = (rows * length) // size
        end = ((rows + 1) * length + size - 1) // size
        columns = torch.arange(length, device=like.device)
        window = (columns >= start[:, None]) & (columns < end[:, None])
        return window.to(like.dtype) / (end - start)[:, None].to(like.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.output_size
        height, width = (size, size) if isinstance(size, int) else size
        height = x.shape[-2] if height is None else height
        width = x.shape[-1] if width is None else width
        rows = self._averaging_matrix(x.shape[-2], height, x)
        columns = self._averaging_matrix(x.shape[-1], width, x)
        return rows @ x @ columns.transpose(0, 1)


def with_exportable_pooling(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every ``nn.AdaptiveAvgPool2d`` (UperNet's pyramid pooling)
    replaced by ``ExportableAdaptiveAvgPool2d``; ``model`` itself is left as it is."""
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d):
                setattr(module, child_name, ExportableAdaptiveAvgPool2d(child.output_size))
    return model


class SegmentorLogits(nn.Module):
    """An mmseg encoder-decoder as one function: normalised image (N, 3, H, W) -> class
    logits (N, num_classes, H, W), as its whole-image inference computes them before argmax."""

    def __init__(self, segmentor: nn.Module):
        super().__init__()
        self.segmentor = segmentor

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.segmentor.decode_head(self.segmentor.extract_feat(image))
        return F.interpolate(logits, size=image.shape[2:], mode='bilinear',
                             align_corners=self.segmentor.align_corners)


class DetectorFirstStage(nn.Module):
    """An mmdet two-stage detector up to its proposals' inputs: normalised image -> the neck's
    feature maps, then the RPN head's objectness scores and box deltas per level (a flat
    tuple, in that order). The RoI heads and NMS stay in PyTorch (docs/export.md says why)."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        features = self.detector.extract_feat(image)
        scores, deltas = self.detector.rpn_head(features)
        return tuple(features) + tuple(scores) + tuple(deltas)

    @staticmethod
    def output_names(num_levels: int) -> List[str]:
        return [f'{kind}{level}' for kind in ('feature', 'rpn_score', 'rpn_delta')
                for level in range(num_levels)]


def export_onnx(model: nn.Module, out: str, shape: Sequence[int], dynamic: bool,
                output_names: Sequence[str]) -> None:
    """Export ``model`` (one image tensor in, tensors out) to ``out`` with the dynamo exporter
    at opset 18, from a (1, 3, H, W) example of ``shape``; with ``dynamic``, batch, height
    and width stay free in the graph."""
    example = torch.randn(1, 3, *shape)
    dynamic_shapes = None
    if dynamic:
        dynamic_shapes = ({0: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC,
                           3: torch.export.Dim.DYNAMIC}, )
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(model.eval(), (example, ), out, dynamo=True, opset_version=OPSET,
                          input_names=['image'], output_names=list(output_names),
                          dynamic_shapes=dynamic_shapes, verbose=False)


def max_abs_differences(model: nn.Module, path: str, shapes: Sequence[Sequence[int]]
                        ) -> Dict[Tuple[int, int], Union[float, str]]:
    """For each (H, W) of ``shapes``: the largest absolute difference between what
    onnxruntime (CPU) computes from ``path`` and what ``model`` computes, over all outputs,
    on the same random image (``inf`` for an output of another shape), or onnxruntime's error
    message where it fails to run the graph at that size."""
    import onnxruntime
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    differences = {}
    for height, width in shapes:
        image = torch.randn(1, 3, height, width)
        with torch.no_grad():
            expected = model.eval()(image)
        expected = expected if isinstance(expected, (tuple, list)) else (expected, )
        try:
            got = session.run(None, {'image': image.numpy()})
        except Exception as e:  # onnxruntime's errors share no public base class
            differences[(height, width)] = f'onnxruntime failed: {str(e).splitlines()[0]}'
            continue
        if len(got) != len(expected):
            raise RuntimeError(f'{path}: {len(got)} outputs, the model has {len(expected)}')
        differences[(height, width)] = max(
            float(np.abs(g - e.numpy()).max()) if g.shape == tuple(e.shape) else float('inf')
            for g, e in zip(got, expected))
    return differences
