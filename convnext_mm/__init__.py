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

import os.path as osp  # noqa: E402

from .backbone_swap import convnext_overrides, use_convnext  # noqa: E402
from .checkpoint import use_restricted_checkpoint_loading  # noqa: E402
from .engine import (AtomicCheckpointHook, ConvNeXtLayerDecayOptimizerConstructor,  # noqa: E402
                     FiniteLossHook, LayerDecayLrLogHook)
from .models import ConvNeXt  # noqa: E402

use_restricted_checkpoint_loading()

__all__ = [
    '__version__', 'AtomicCheckpointHook', 'ConvNeXt', 'ConvNeXtLayerDecayOptimizerConstructor',
    'FiniteLossHook', 'LayerDecayLrLogHook', 'convnext_overrides', 'get_config_path',
    'use_convnext'
]


def get_config_path(name: str) -> str:
    """Path of a config shipped with the package, e.g. 'cascade_convnext_t_coco.py'.

    Installed packages carry configs/ as convnext_mm/.mim/configs; a source
    checkout also finds them in the repository's configs/.
    """
    here = osp.dirname(osp.abspath(__file__))
    for root in (osp.join(here, '.mim', 'configs'), osp.join(osp.dirname(here), 'configs')):
        path = osp.join(root, name)
        if osp.isfile(path):
            return path
    raise FileNotFoundError(f'No shipped config named {name!r} (looked in {here}/.mim/configs '
                            f'and the source tree)')

