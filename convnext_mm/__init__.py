"""ConvNeXt for OpenMMLab 2.x detection and segmentation.

Importing the package registers ``ConvNeXt`` (MODELS) and
``ConvNeXtLayerDecayOptimizerConstructor`` (OPTIM_WRAPPER_CONSTRUCTORS) in
mmengine's root registries, so they build under any downstream scope
(mmdet, mmseg, ...) without mmdet or mmseg being imported here.
"""
__version__ = '0.1.0'

from .engine import ConvNeXtLayerDecayOptimizerConstructor  # noqa: E402
from .models import ConvNeXt  # noqa: E402

__all__ = ['__version__', 'ConvNeXt', 'ConvNeXtLayerDecayOptimizerConstructor']
