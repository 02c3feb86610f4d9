"""Checkpoint reading, format conversion and pretrained loading."""
from .formats import LAYOUTS, describe_arch, detect_layout, to_convnext_mm
from .io import CheckpointError, check_checkpoint_file, load_checkpoint_file, save_checkpoint_file
from .mmengine_loader import allow_mmengine_checkpoint_globals, use_restricted_checkpoint_loading
from .pretrained import check_fits_model, load_converted, load_pretrained

__all__ = [
    'LAYOUTS', 'CheckpointError', 'allow_mmengine_checkpoint_globals', 'check_checkpoint_file',
    'check_fits_model',
    'describe_arch', 'detect_layout', 'load_checkpoint_file', 'load_converted', 'load_pretrained',
    'save_checkpoint_file', 'to_convnext_mm', 'use_restricted_checkpoint_loading'
]
