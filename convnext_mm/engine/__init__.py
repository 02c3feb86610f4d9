from .fsdp import convnext_block_wrap_policy
from .hooks import AtomicCheckpointHook, FiniteLossHook, LayerDecayLrLogHook
from .optimizers import ConvNeXtLayerDecayOptimizerConstructor

__all__ = [
    'AtomicCheckpointHook', 'ConvNeXtLayerDecayOptimizerConstructor',
    'FiniteLossHook', 'LayerDecayLrLogHook', 'convnext_block_wrap_policy'
]
