"""CPU accelerators of the ConvNeXt block, beside the model.

GPUs, half precision and every kind of tracing run the model's plain layers. In fp32 eager
mode on the CPU, ``convnext_block`` (the one dispatch point) runs a block on these instead, with
the same outputs and gradients up to float rounding:

- ``depthwise_backward`` (``depthwise_conv.py``): the depthwise convolution's backward as two
  convolutions (training);
- ``inference_mlp`` (``mlp.py``): LayerNorm, the MLP and the shortcut in row chunks through one
  reused buffer, in place (inference).

``CONVNEXT_MM_FAST_CPU=0`` in the environment, read at import, turns them all off (``ENABLED``
holds one flag per accelerator, for benchmarks that measure each). The ops take tensors and
torch layers; they do not import the model.
"""
import os
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import _get_current_dispatch_mode

from .depthwise_conv import depthwise_conv2d
from .mlp import mlp_inference_

_SWITCH = 'CONVNEXT_MM_FAST_CPU'
_switch_value = os.environ.get(_SWITCH, '1')
if _switch_value not in ('0', '1'):
    raise ValueError(f'{_SWITCH}={_switch_value!r} is not allowed; use 1 (CPU accelerators on, '
                     f'the default) or 0 (off)')
FAST_CPU = _switch_value == '1'
ENABLED = dict.fromkeys(('depthwise_backward', 'inference_mlp'), FAST_CPU)

__all__ = ['ENABLED', 'FAST_CPU', 'convnext_block', 'depthwise_conv2d', 'mlp_inference_']


def _plain_layers_only(x: torch.Tensor) -> bool:
    """Where the accelerators step aside: not fp32 on the CPU, autocast, torch.compile and
    torch.export (ONNX's dynamo exporter), torch.jit tracing (ONNX's TorchScript exporter,
    mmengine's FLOP counter), dispatch modes (torch's FLOP counter, fake tensors)."""
    return (type(x) is not torch.Tensor or not x.is_cpu or x.dtype != torch.float32
            or torch.is_autocast_enabled('cpu') or torch.compiler.is_compiling()
            or torch.jit.is_tracing() or _get_current_dispatch_mode() is not None)


def convnext_block(x: torch.Tensor, dwconv: nn.Conv2d, norm: nn.LayerNorm, pwconv1: nn.Linear,
                   grn: Optional[nn.Module], pwconv2: nn.Linear, gamma: Optional[torch.Tensor],
                   drop_path: nn.Module) -> Optional[torch.Tensor]:
    """``x + drop_path(gamma * pwconv2([grn](gelu(pwconv1(norm(dwconv(x)))))))`` (the MLP on
    NHWC) on the accelerators that apply, or None where none does. ``drop_path`` is an
    ``nn.Identity`` or a stochastic-depth module, which draws only in training mode."""
    if _plain_layers_only(x):
        return None
    layers = (dwconv, norm, pwconv1, pwconv2) + (() if grn is None else (grn, ))
    records = torch.is_grad_enabled() and (x.requires_grad or any(
        p.requires_grad for layer in layers for p in layer.parameters()) or (
            gamma is not None and gamma.requires_grad))
    if not records:
        drops = drop_path.training and not isinstance(drop_path, nn.Identity)
        if grn is not None or not ENABLED['inference_mlp'] or drops:
            return None
        y = dwconv(x).permute(0, 2, 3, 1).contiguous()  # owned by the block: written over
        channels = y.shape[-1]
        shortcut = x.permute(0, 2, 3, 1).reshape(-1, channels)
        mlp_inference_(y.view(-1, channels), shortcut, norm, pwconv1, pwconv2, gamma)
        return y.permute(0, 3, 1, 2)
    if not ENABLED['depthwise_backward']:
        return None
    y = depthwise_conv2d(x, dwconv.weight, dwconv.bias).permute(0, 2, 3, 1)
    y = F.gelu(pwconv1(norm(y)))
    y = pwconv2(y if grn is None else grn(y))
    return x + drop_path((y if gamma is None else gamma * y).permute(0, 3, 1, 2))
