from .optimizers import ConvNeXtLayerDecayOptimizerConstructor

__all__ = ['ConvNeXtLayerDecayOptimizerConstructor']
