from .layer_decay import ConvNeXtLayerDecayOptimizerConstructor

__all__ = ['ConvNeXtLayerDecayOptimizerConstructor']
