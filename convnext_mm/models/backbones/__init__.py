from .convnext import ConvNeXt, ConvNeXtBlock
from .layers import GRN, DropPath, LayerNorm2d

__all__ = ['ConvNeXt', 'ConvNeXtBlock', 'DropPath', 'GRN', 'LayerNorm2d']
