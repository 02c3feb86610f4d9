from .hooks import AtomicCheckpointHook, FiniteLossHook, LayerDecayLrLogHook
from .optimizers import ConvNeXtLayerDecayOptimizerConstructor

__all__ = [
    'AtomicCheckpointHook', 'ConvNeXtLayerDecayOptimizerConstructor', 'FiniteLossHook',
    'LayerDecayLrLogHook'
]
