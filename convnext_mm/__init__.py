"""ConvNeXt for OpenMMLab 2.x detection and segmentation.

Importing the package registers ``ConvNeXt`` (MODELS) and
``ConvNeXtLayerDecayOptimizerConstructor`` (OPTIM_WRAPPER_CONSTRUCTORS) in
mmengine's root registries, so they build under any downstream scope
(mmdet, mmseg, ...) without mmdet or mmseg being imported here, registers the
``AtomicCheckpointHook``, ``FiniteLossHook`` and ``LayerDecayLrLogHook`` (HOOKS), and
routes mmengine's checkpoint loading through the restricted unpickler
(``convnext_mm.checkpoint.use_restricted_checkpoint_loading``). ``use_convnext(cfg, arch)``
puts ConvNeXt into any mmdet/mmseg config.
"""
__version__ = '0.1.0'

from .backbone_swap import convnext_overrides, use_convnext  # noqa: E402
from .checkpoint import use_restricted_checkpoint_loading  # noqa: E402
from .engine import (AtomicCheckpointHook, ConvNeXtLayerDecayOptimizerConstructor,  # noqa: E402
                     FiniteLossHook, LayerDecayLrLogHook)
from .models import ConvNeXt  # noqa: E402
from .recipes import get_config_path  # noqa: E402

use_restricted_checkpoint_loading()

__all__ = [
    '__version__', 'AtomicCheckpointHook', 'ConvNeXt', 'ConvNeXtLayerDecayOptimizerConstructor',
    'FiniteLossHook', 'LayerDecayLrLogHook', 'convnext_overrides', 'get_config_path',
    'use_convnext'
]
