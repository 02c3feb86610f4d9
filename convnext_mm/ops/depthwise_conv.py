"""Depthwise convolution whose CPU backward is two convolutions.

PyTorch's CPU backward of a depthwise convolution is slow (12-60x the forward time on a 2-core
EPYC, mostly the weight gradient). Both gradients are convolutions themselves: the input
gradient convolves the output gradient with the flipped kernel, and the weight gradient, per
sample, is a depthwise convolution of the input whose kernel is that sample's output gradient;
oneDNN runs both fast. Bought: a ConvNeXt-T training step 1.10x at 8x3x224x224 on a 2-core
Intel Xeon (AVX-512), docs/benchmarks.md.
"""
from typing import Optional

import torch
import torch.nn.functional as F


class _DepthwiseConv2d(torch.autograd.Function):
    """Depthwise convolution, stride 1, 'same' padding."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        n, c = x.shape[:2]
        pad = weight.shape[-1] // 2
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad, weight.flip(-2, -1), padding=pad, groups=c)
        if ctx.needs_input_grad[1]:
            # One convolution per sample works on channels_last tensors as they are; one over
            # all (sample, channel) groups needs NCHW copies and was 1.5-5x slower.
            grad_weight = weight.new_zeros(weight.shape)
            for i in range(n):
                sample_grad = F.conv2d(x[i:i + 1], grad[i].unsqueeze(1), padding=pad, groups=c)
                grad_weight += sample_grad.view(weight.shape)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3))
        return grad_x, grad_weight, grad_bias


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor,
                     bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=k // 2, groups=C)`` with the two-convolution
    backward."""
    return _DepthwiseConv2d.apply(x, weight, bias)
