"""Sharded training (FSDP) of ConvNeXt detectors and segmentors with mmengine's FlexibleRunner.

- ``convnext_block_wrap_policy`` (mmengine FUNCTIONS): each ConvNeXt block is its own FSDP
  unit, so a rank holds the full parameters of one block at a time; the neck and heads stay
  in the root unit.
- ``ConvNeXtFSDPStrategy`` (STRATEGIES): mmengine's ``FSDPStrategy`` made to resume under
  torch 2.14 and to run on the CPU (gloo) too.
- ``unwrapped_name`` / ``full_ndims``: what the layer-decay constructor needs to see the
  parameters as they were before FSDP flattened them.
"""
import re
from typing import Dict

import torch
import torch.nn as nn
from mmengine._strategy import FSDPStrategy
from mmengine.registry import FUNCTIONS, STRATEGIES

from ..models.backbones.convnext import ConvNeXtBlock

_WRAPPER_PREFIXES = re.compile(r'(_fsdp_wrapped_module|_checkpoint_wrapped_module)\.')


@FUNCTIONS.register_module()
def convnext_block_wrap_policy(module: nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
    """FSDP's auto-wrap policy: one unit per ``ConvNeXtBlock``."""
    return recurse or isinstance(module, ConvNeXtBlock)


def unwrapped_name(name: str) -> str:
    """A parameter's name without the FSDP and activation-checkpointing wrappers' parts."""
    return _WRAPPER_PREFIXES.sub('', name)


def full_ndims(model: nn.Module) -> Dict[int, int]:
    """``id(param) -> ndim`` as the model defines its parameters. Under FSDP
    (``use_orig_params=True``) a rank's parameters are 1-D pieces of a flat shard, whatever
    their shape, until gathered: each FSDP unit's own parameters are gathered in turn, outer
    units first (a collective: every rank calls this, with the root ``model``)."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    ndims = {id(p): p.ndim for p in model.parameters()}
    for unit in FSDP.fsdp_modules(model):
        with FSDP.summon_full_params(unit, recurse=False, writeback=False):
            ndims.update({id(p): p.ndim for p in unit.parameters()})
    return ndims


@STRATEGIES.register_module()
class ConvNeXtFSDPStrategy(FSDPStrategy):
    """mmengine's ``FSDPStrategy`` (same arguments), fixed for torch 2.14 and the CPU.

    - Resuming: mmengine 0.10.7 passes ``optim_state_dict_to_load`` its arguments in the order
      of torch < 2.1 (the state dict first), which fails with ``unhashable type: 'dict'``.
    - Without CUDA, FSDP gets the CPU as its device (mmengine passes the local rank as a CUDA
      device id), and whole state dicts are not "offloaded to the CPU": torch 2.14 gathers
      the optimizer states of CPU tensors through a buffer it reuses, and with ``.cpu()`` no
      copy there, every parameter's ``exp_avg`` came back as its ``exp_avg_sq``.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if not torch.cuda.is_available():
            for config in (self.state_dict_config, self.optim_state_dict_config):
                if hasattr(config, 'offload_to_cpu'):
                    config.offload_to_cpu = False

    def _wrap_model(self, model: nn.Module):
        if not torch.cuda.is_available():
            wrapper = dict(self.model_wrapper or dict(type='MMFullyShardedDataParallel'))
            wrapper.setdefault('device_id', torch.device('cpu'))
            self.model_wrapper = wrapper
        return super()._wrap_model(model)

    def load_optim_state_dict(self, state_dict: dict) -> None:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        self.optim_wrapper.load_state_dict(FSDP.optim_state_dict_to_load(
            self.model, self.optim_wrapper.optimizer, state_dict))


__all__ = ['ConvNeXtFSDPStrategy', 'convnext_block_wrap_policy', 'full_ndims', 'unwrapped_name']
