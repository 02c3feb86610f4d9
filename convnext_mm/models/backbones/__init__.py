from .convnext import ConvNeXt, ConvNeXtBlock
from .layers import GRN, LayerNorm2d

__all__ = ['ConvNeXt', 'ConvNeXtBlock', 'GRN', 'LayerNorm2d']
