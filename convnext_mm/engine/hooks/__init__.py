from .checkpoint_hook import AtomicCheckpointHook
from .finite_loss_hook import FiniteLossHook
from .layer_decay_lr_hook import LayerDecayLrLogHook

__all__ = ['AtomicCheckpointHook', 'FiniteLossHook', 'LayerDecayLrLogHook']
