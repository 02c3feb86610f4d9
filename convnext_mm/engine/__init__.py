from .hooks import AtomicCheckpointHook, FiniteLossHook
from .optimizers import ConvNeXtLayerDecayOptimizerConstructor

__all__ = ['AtomicCheckpointHook', 'ConvNeXtLayerDecayOptimizerConstructor', 'FiniteLossHook']
