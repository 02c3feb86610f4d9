"""Sharded training (FSDP) of ConvNeXt detectors and segmentors with mmengine's FlexibleRunner.

- ``convnext_block_wrap_policy`` (mmengine FUNCTIONS): each ConvNeXt block is its own FSDP
  unit, so a rank holds the full parameters of one block at a time; the neck and heads stay
  in the root unit.
- ``ConvNeXtFSDPStrategy`` (STRATEGIES, in ``fsdp_strategy.py``, imported by the FSDP recipes
  and by ``tools/train.py`` for configs that name a strategy: mmengine's strategies take
  seconds to import).
- ``unwrapped_name`` / ``full_ndims``: what the layer-decay constructor needs to see the
  parameters as they were before FSDP flattened them.
"""
import re
from typing import Dict

import torch.nn as nn
from mmengine.registry import FUNCTIONS

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


__all__ = ['convnext_block_wrap_policy', 'full_ndims', 'unwrapped_name']
