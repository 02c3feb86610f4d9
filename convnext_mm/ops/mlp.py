"""The block's tail in inference on the CPU: LayerNorm -> MLP -> layer scale -> + shortcut in row
chunks, with no hidden-sized tensor.

Each new CPU tensor over 32 MiB is fresh memory that glibc maps and the kernel zeroes, and the
MLP's hidden tensor is 4x the block's width. Here the hidden values go through one buffer that
every chunk of rows reuses while it is still in cache, and each chunk's result is written over
the depthwise convolution's output. Bought: ConvNeXt-T inference 1.21-1.24x the plain layers at
8x3x224x224 and 1.07x at 1x3x800x1216 (2-core Intel Xeon, AVX-512; docs/benchmarks.md).
"""
from typing import Optional

import torch
import torch.nn.functional as F

INFERENCE_CHUNK_ROWS = 4096  # fastest for C = 96-512 on a 2-core EPYC


def row_chunks(num_rows: int, chunk_rows: int, buffer_width: int, like: torch.Tensor):
    """Slices of ``chunk_rows`` of ``num_rows`` rows (the last one shorter), each with as many
    rows of one ``buffer_width``-wide buffer of ``like``'s type that every chunk reuses."""
    buffer = like.new_empty(min(chunk_rows, num_rows), buffer_width)
    for start in range(0, num_rows, chunk_rows):
        stop = min(start + chunk_rows, num_rows)
        yield slice(start, stop), buffer[:stop - start]


@torch.no_grad()
def mlp_inference_(rows: torch.Tensor, shortcut: torch.Tensor, norm: torch.nn.LayerNorm,
                   pwconv1: torch.nn.Linear, pwconv2: torch.nn.Linear,
                   scale: Optional[torch.Tensor]) -> torch.Tensor:
    """``rows = shortcut + scale * pwconv2(gelu(pwconv1(norm(rows))))`` in place on 2-D (pixels
    x channels) tensors, ``INFERENCE_CHUNK_ROWS`` rows at a time (no scale: 1)."""
    for chunk, hidden in row_chunks(rows.shape[0], INFERENCE_CHUNK_ROWS, pwconv1.out_features,
                                    rows):
        normed = F.layer_norm(rows[chunk], norm.normalized_shape, norm.weight, norm.bias,
                              norm.eps)
        torch.addmm(pwconv1.bias, normed, pwconv1.weight.t(), out=hidden)
        branch = torch.addmm(pwconv2.bias, torch.ops.aten.gelu_(hidden), pwconv2.weight.t(),
                             out=rows[chunk])
        if scale is None:
            branch.add_(shortcut[chunk])
        else:
            torch.addcmul(shortcut[chunk], branch, scale, out=branch)
    return rows
