from .checkpoint_hook import AtomicCheckpointHook
from .finite_loss_hook import FiniteLossHook

__all__ = ['AtomicCheckpointHook', 'FiniteLossHook']
