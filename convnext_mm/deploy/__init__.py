"""Exporting ConvNeXt backbones, segmentors and detectors' first stage to ONNX, checked
against PyTorch with onnxruntime (``tools/export_onnx.py``)."""
from .onnx import (DetectorFirstStage, ExportableAdaptiveAvgPool2d, SegmentorLogits,
                   export_onnx, max_abs_differences, with_exportable_pooling)

__all__ = [
    'DetectorFirstStage', 'ExportableAdaptiveAvgPool2d', 'SegmentorLogits', 'export_onnx',
    'max_abs_differences', 'with_exportable_pooling'
]
