"""The small layers of the ConvNeXt backbone: channels-first LayerNorm, GRN, drop path."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor.

    The tensor is viewed as NHWC (a permute, no copy for channels_last input) so that
    PyTorch's fused ``layer_norm`` does the work. Under autocast ``layer_norm`` runs in fp32
    and returns fp32, as in the reference code; on half-precision tensors PyTorch's kernels
    accumulate its statistics in fp32.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                         self.eps)
        return x.permute(0, 3, 1, 2)


class GRN(nn.Module):
    """Global Response Normalization of ConvNeXt V2, on NHWC tensors.

    ``gamma`` and ``beta`` keep the (1, 1, 1, C) shape of the official V2 checkpoints so that
    those load unchanged.
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, channels))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + self.eps)
        return self.gamma * (x * nx) + self.beta + x


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a residual branch for a random ``drop_prob`` share of
    the samples and scale the kept ones by ``1 / (1 - drop_prob)`` (as timm's ``DropPath``,
    drawing the same random numbers)."""

    def __init__(self, drop_prob: float = 0.):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0:
            return x
        keep_prob = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0], ) + (1, ) * (x.ndim - 1)).bernoulli_(keep_prob)
        return x * mask.div_(keep_prob)

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob:.3f}'
