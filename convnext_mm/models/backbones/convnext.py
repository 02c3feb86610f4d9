"""ConvNeXt (V1, and V2 with GRN) as a multi-scale OpenMMLab backbone."""
import difflib
import inspect
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule
from mmengine.registry import MODELS

from ...checkpoint import load_pretrained
from .layers import (GRN, MLP_CHUNK_ABOVE_NUMEL, DepthwiseConv2d, LayerNorm2d, cpu_inference,
                     inference_tail_, linear_gelu, mlp_training, onednn_inference, onednn_linear,
                     mlp_function_training, onednn_training, stochastic_depth_factor)

NUM_STAGES = 4
STAGE_STRIDES = (4, 8, 16, 32)
# fp32 CPU inference runs a block's MLP in chunks of MLP_CHUNK_ROWS rows (pixels), on oneDNN's
# kernels once its hidden (4C-wide) tensor would exceed MLP_CHUNK_ABOVE_NUMEL values
# (layers.py), on PyTorch's products always: each chunk's hidden tensor is reused memory
# that is still in cache when pwconv2 reads it. 4096 rows was the fastest chunk for C = 96-512 on
# a 2-core EPYC (fewer rows pay oneDNN's per-call weight reorder more often).
MLP_CHUNK_ROWS = 4096


class ConvNeXtBlock(nn.Module):
    """dwconv 7x7 -> LayerNorm -> Linear(4x) -> GELU [-> GRN] -> Linear -> scale -> + input.

    The LayerNorm and the two Linear layers run on an NHWC view of the tensor; the permutes
    are views, so a channels_last input stays channels_last through the block without a copy.

    The block creates as few full-size tensors as it can (7 channel-widths per block in
    unchunked inference instead of the reference's 13, one in chunked inference, 11 instead of
    13 in training): on the CPU the layer scale is folded into ``pwconv2`` outside the chunked
    tail (fp32/fp64 only: in half precision a 1e-6 scale times the weights underflows), GELU
    runs in place when autograd keeps nothing, and the shortcut is added in place. New large
    tensors are the expensive part on the CPU, where each one is fresh memory that the kernel
    has to map and zero. On a GPU the block runs the plain layers, the scale and the shortcut as
    one ``addcmul`` (``_plain_tail``). On the CPU the depthwise convolution also has a faster
    backward pass (``DepthwiseConv2d``), and in fp32 inference the LayerNorm and the MLP run in
    row chunks written over the depthwise convolution's output (``_chunked_tail``, a custom op
    that ``torch.compile`` keeps; on oneDNN's kernels where the hidden tensor is large). Where
    oneDNN's linear kernels pay (``USE_ONEDNN_LINEAR``), in fp32 inference (and in frozen
    stages) Linear+GELU and Linear+add each run as one oneDNN kernel (``onednn_inference``).
    fp32 CPU training runs Linear -> GELU -> Linear (+ shortcut) as one autograd function
    (``mlp_training``) whose backward makes few hidden-sized tensors and which, for a large
    hidden tensor, keeps no GELU output and computes it again chunk by chunk: in eager mode on
    oneDNN's kernel where that pays (bias and shortcut added inside the product) or PyTorch's
    products, and compiled as custom ops on oneDNN's kernel (on PyTorch's products inductor
    compiles the plain layers). Blocks with GRN run the Linear layers as oneDNN's kernel with
    its own autograd formula (``onednn_linear``) where that pays. Same outputs and gradients up
    to float rounding.
    """

    def __init__(self, channels: int, kernel_size: int = 7, drop_path_rate: float = 0.,
                 layer_scale_init_value: float = 1e-6, use_grn: bool = False,
                 with_cp: bool = False):
        super().__init__()
        self.dwconv = DepthwiseConv2d(channels, kernel_size)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.pwconv1 = nn.Linear(channels, 4 * channels)
        self.grn = GRN(4 * channels) if use_grn else None
        self.pwconv2 = nn.Linear(4 * channels, channels)
        # ConvNeXt V2 replaces layer scale by GRN.
        if layer_scale_init_value > 0 and not use_grn:
            self.gamma = nn.Parameter(torch.full((channels, ), float(layer_scale_init_value)))
        else:
            self.gamma = None
        self.drop_path_rate = drop_path_rate
        self.with_cp = with_cp

    def extra_repr(self) -> str:
        return f'drop_path_rate={self.drop_path_rate:.3f}, with_cp={self.with_cp}'

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        shortcut = x.permute(0, 2, 3, 1)
        if not y.is_cpu:
            return self._plain_tail(y, shortcut).permute(0, 3, 1, 2)
        if self._in_chunks(y, shortcut):
            return self._chunked_tail(y, shortcut).permute(0, 3, 1, 2)
        y = self.norm(y)
        if self.grn is None and mlp_function_training(y, self.pwconv1, self.pwconv2, self.gamma):
            # Folding the scale costs passes (forward and backward) over pwconv2's 4C x C
            # weight; the scale in the add as many over the rows x C output, on new tensors
            # where the folded add works in place: fold unless the weight is over twice as big.
            if 2 * (y.numel() // y.shape[-1]) > self.pwconv2.in_features:
                weight, bias, scale = self._pwconv2_folded(y)
            else:
                weight, bias, scale = self.pwconv2.weight, self.pwconv2.bias, self.gamma
            if scale is None and not self._drop_path_active and shortcut.is_contiguous():
                return mlp_training(y, self.pwconv1.weight, self.pwconv1.bias, weight, bias,
                                    shortcut).permute(0, 3, 1, 2)
            branch = mlp_training(y, self.pwconv1.weight, self.pwconv1.bias, weight, bias)
            return self._scaled_add(shortcut, branch, scale).permute(0, 3, 1, 2)
        if onednn_inference(y, self.pwconv1):
            y = linear_gelu(y, self.pwconv1.weight, self.pwconv1.bias)
        elif onednn_training(y):
            y = F.gelu(onednn_linear(y, self.pwconv1.weight, self.pwconv1.bias))
        else:
            y = self.pwconv1(y)
            y = F.gelu(y) if y.requires_grad else torch.ops.aten.gelu_(y)
        if self.grn is not None:
            y = self.grn(y)
        return self._add_residual(shortcut, y).permute(0, 3, 1, 2)

    def _plain_tail(self, y: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        """The tail after the depthwise convolution on a GPU (NHWC): the reference's layers,
        without the CPU paths' checks (at small batches a GPU waits for the Python time they
        take), the layer scale applied in the shortcut add (``_scaled_add``)."""
        y = self.pwconv1(self.norm(y))
        y = F.gelu(y) if y.requires_grad else torch.ops.aten.gelu_(y)
        if self.grn is not None:
            y = self.grn(y)
        return self._scaled_add(shortcut, self.pwconv2(y), self.gamma)

    @property
    def _drop_path_active(self) -> bool:
        return self.training and self.drop_path_rate > 0

    def _in_chunks(self, y: torch.Tensor, shortcut: torch.Tensor) -> bool:
        """Whether the block's tail after the depthwise convolution (output ``y``, NHWC) runs
        in row chunks (``_chunked_tail``): in fp32 CPU inference, eager or compiled, on
        PyTorch's products at every size (they write into reused memory), on oneDNN's kernels
        (which make new tensors) where the hidden tensor would exceed ``MLP_CHUNK_ABOVE_NUMEL``
        values."""
        if not (self.grn is None and not self._drop_path_active and y.is_contiguous()
                and shortcut.is_contiguous() and
                cpu_inference(y, self.norm, self.pwconv1, self.pwconv2, self.gamma, shortcut)):
            return False
        if not onednn_inference(y):
            return True
        hidden_numel = y.numel() // y.shape[-1] * self.pwconv1.out_features
        return hidden_numel > MLP_CHUNK_ABOVE_NUMEL

    def _chunked_tail(self, y: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        """``shortcut + gamma * pwconv2(gelu(pwconv1(norm(y))))`` (NHWC), ``MLP_CHUNK_ROWS``
        rows at a time (``inference_tail_``), with the oneDNN kernels where they pay
        (``onednn_inference``; the layer scale folded into pwconv2, since the shortcut is added
        inside the product) and PyTorch's products elsewhere. The result overwrites ``y`` (the
        depthwise convolution's output, which the block owns), so that no new full-size tensor
        is made."""
        use_onednn = onednn_inference(y)
        if use_onednn:
            weight, bias, scale = self._pwconv2_folded(y)
        else:
            weight, bias, scale = self.pwconv2.weight, self.pwconv2.bias, self.gamma
        channels = y.shape[-1]
        inference_tail_(y.view(-1, channels), shortcut.reshape(-1, channels), self.norm.weight,
                        self.norm.bias, self.norm.eps, self.pwconv1.weight, self.pwconv1.bias,
                        weight, bias, scale, MLP_CHUNK_ROWS, use_onednn)
        return y

    def _pwconv2_folded(self, y: torch.Tensor):
        """pwconv2's weight and bias with the layer scale folded in where that is exact
        enough (fp32/fp64) and saves a pass over the output, and the scale left to apply (None
        once folded). CPU paths only: on a GPU the pass saved costs less than launching the two
        products (``_plain_tail``). Not in compiled inference on the plain layers outside the
        chunked tail (strided tensors, or stochastic depth under ``no_grad``), where inductor
        fuses the scale into the shortcut add and folding would only add a product per call."""
        scale, weight, bias = self.gamma, self.pwconv2.weight, self.pwconv2.bias
        compiled_plain_inference = (torch.compiler.is_compiling() and not torch.is_grad_enabled()
                                    and not onednn_inference(y))
        # Traced (FLOP counters, ONNX) the module is called, so that it shows in per-module tables.
        if (scale is not None and y.dtype == weight.dtype
                and weight.dtype in (torch.float32, torch.float64) and not torch.jit.is_tracing()
                and not compiled_plain_inference):
            return weight * scale[:, None], bias * scale, None
        return weight, bias, scale

    def _add_residual(self, shortcut: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``shortcut + drop_path(gamma * pwconv2(y))`` on NHWC tensors."""
        weight, bias, scale = self._pwconv2_folded(y)
        folded = scale is None and self.gamma is not None
        use_onednn = onednn_training(y)
        if (scale is None and shortcut.is_contiguous() and not self._drop_path_active
                and (use_onednn or onednn_inference(y, self.pwconv2, self.gamma, shortcut))):
            return onednn_linear(y, weight, bias, shortcut)
        if use_onednn:
            branch = onednn_linear(y, weight, bias)
        else:
            branch = F.linear(y, weight, bias) if folded else self.pwconv2(y)
        return self._scaled_add(shortcut, branch, scale)

    def _scaled_add(self, shortcut: torch.Tensor, branch: torch.Tensor,
                    scale: Optional[torch.Tensor]) -> torch.Tensor:
        """``shortcut + drop_path(scale * branch)`` (no scale: 1), in place into ``branch``
        where it can."""
        if self._drop_path_active:
            factor = stochastic_depth_factor(branch, self.drop_path_rate)
            scale = factor if scale is None else scale * factor
        if scale is not None:
            if branch.dtype == shortcut.dtype == scale.dtype:
                return torch.addcmul(shortcut, branch, scale)
            # Autocast (half branch, fp32 scale): addcmul would first copy its inputs to one
            # type; the product reads the half branch as it is and gives fp32, as the
            # reference's `gamma * x` does.
            branch = branch * scale
        if branch.dtype != torch.promote_types(branch.dtype, shortcut.dtype):
            return shortcut + branch  # keep the reference's type promotion
        return branch.add_(shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


def _unknown_args_message(unknown_args: dict, signature: inspect.Signature) -> str:
    allowed = [name for name in signature.parameters if name != 'unknown_args']
    hints = []
    for name in sorted(unknown_args):
        close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.5)
        hints.append(f'{name!r}' + (f' (did you mean {close[0]!r}?)' if close else ''))
    return f'ConvNeXt got unknown argument(s) {", ".join(hints)}; allowed: {allowed}'


@MODELS.register_module()
class ConvNeXt(BaseModule):
    """ConvNeXt backbone for detection and segmentation.

    "A ConvNet for the 2020s" (https://arxiv.org/abs/2201.03545) and, with
    ``use_grn=True``, the ConvNeXt V2 block (https://arxiv.org/abs/2301.00808).
    Every stage in ``out_indices`` is returned through its own channels-first
    LayerNorm ``norm{i}``; the un-normalised tensor goes on to the next stage.
    Parameter names follow the official detection/segmentation code, so its
    checkpoints load as they are.

    Args:
        arch (str | dict): A name in ``arch_settings`` or a dict with
            ``depths`` and ``channels`` (4 ints each). Defaults to 'tiny'.
        in_channels (int): Channels of the input image. Defaults to 3.
        kernel_size (int): Kernel of the depthwise convolutions (odd).
            Defaults to 7.
        drop_path_rate (float): Stochastic depth rate of the last block; the
            rates rise linearly from 0 over all blocks. Defaults to 0.
        layer_scale_init_value (float): Initial layer scale; 0 disables layer
            scale. Ignored with ``use_grn`` (V2 has none). Defaults to 1e-6.
        use_grn (bool): Use the ConvNeXt V2 block (GRN after the activation,
            no layer scale). Defaults to False.
        out_indices (Sequence[int]): Stages to return, 0-3; negative indices
            count from the end. Defaults to (0, 1, 2, 3).
        frozen_stages (int): Freeze the stem and the first ``frozen_stages``
            stages (eval mode, no gradient), kept so after ``train()``.
            0 or -1 freezes nothing. Defaults to 0.
        with_cp (bool): Gradient checkpointing in every block: less memory,
            same outputs and gradients, more compute. Defaults to False.
        init_cfg (dict | list[dict], optional): mmengine init config.
            ``dict(type='Pretrained', checkpoint=PATH_OR_URL)`` loads any
            supported checkpoint format (see ``convnext_mm.checkpoint``).
            Defaults to the official truncated-normal (std 0.02) init.

    Any other keyword (a typo in a config) raises ``TypeError`` naming it, the
    closest allowed argument and the full list.
    """

    arch_settings: Dict[str, Dict[str, List[int]]] = {
        'atto': dict(depths=[2, 2, 6, 2], channels=[40, 80, 160, 320]),
        'femto': dict(depths=[2, 2, 6, 2], channels=[48, 96, 192, 384]),
        'pico': dict(depths=[2, 2, 6, 2], channels=[64, 128, 256, 512]),
        'nano': dict(depths=[2, 2, 8, 2], channels=[80, 160, 320, 640]),
        'tiny': dict(depths=[3, 3, 9, 3], channels=[96, 192, 384, 768]),
        'small': dict(depths=[3, 3, 27, 3], channels=[96, 192, 384, 768]),
        'base': dict(depths=[3, 3, 27, 3], channels=[128, 256, 512, 1024]),
        'large': dict(depths=[3, 3, 27, 3], channels=[192, 384, 768, 1536]),
        'xlarge': dict(depths=[3, 3, 27, 3], channels=[256, 512, 1024, 2048]),
        'huge': dict(depths=[3, 3, 27, 3], channels=[352, 704, 1408, 2816]),
    }

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 in_channels: int = 3,
                 kernel_size: int = 7,
                 drop_path_rate: float = 0.,
                 layer_scale_init_value: float = 1e-6,
                 use_grn: bool = False,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = 0,
                 with_cp: bool = False,
                 init_cfg: Optional[Union[dict, List[dict]]] = None,
                 **unknown_args):
        if unknown_args:  # a typo in a config's backbone dict: name it and the likely key
            raise TypeError(_unknown_args_message(unknown_args, inspect.signature(ConvNeXt)))
        if init_cfg is None:  # the official initialisation
            init_cfg = [
                dict(type='TruncNormal', layer=['Conv2d', 'Linear'], std=.02, bias=0.),
                dict(type='Constant', layer=['LayerNorm'], val=1., bias=0.)
            ]
        super().__init__(init_cfg=init_cfg)
        self.depths, self.channels = self._parse_arch(arch)
        self.arch = arch
        if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
            raise ValueError(f'in_channels must be a positive int, got {in_channels!r}')
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f'kernel_size must be a positive odd int (e.g. 3, 5, 7, 9, 11), '
                             f'got {kernel_size!r}')
        if not isinstance(drop_path_rate, (int, float)) or not 0 <= drop_path_rate < 1:
            raise ValueError(f'drop_path_rate must be in [0, 1), got {drop_path_rate!r}')
        if not isinstance(layer_scale_init_value, (int, float)) or layer_scale_init_value < 0:
            raise ValueError(f'layer_scale_init_value must be >= 0 (0 disables layer scale), '
                             f'got {layer_scale_init_value!r}')
        self.out_indices = self._parse_out_indices(out_indices)
        if (not isinstance(frozen_stages, int) or isinstance(frozen_stages, bool)
                or not -1 <= frozen_stages <= NUM_STAGES):
            raise ValueError(f'frozen_stages must be an int in [-1, {NUM_STAGES}] '
                             f'(-1 or 0: nothing frozen), got {frozen_stages!r}')
        self.in_channels = in_channels
        self.frozen_stages = frozen_stages
        self.with_cp = with_cp
        self.use_grn = use_grn

        channels = self.channels
        self.downsample_layers = nn.ModuleList([
            nn.Sequential(
                nn.Conv2d(in_channels, channels[0], kernel_size=4, stride=4),
                LayerNorm2d(channels[0], eps=1e-6))
        ])
        for i in range(1, NUM_STAGES):
            self.downsample_layers.append(
                nn.Sequential(
                    LayerNorm2d(channels[i - 1], eps=1e-6),
                    nn.Conv2d(channels[i - 1], channels[i], kernel_size=2, stride=2)))

        rates = torch.linspace(0, drop_path_rate, sum(self.depths), device='cpu').tolist()
        self.stages = nn.ModuleList()
        for i, depth in enumerate(self.depths):
            first = sum(self.depths[:i])
            self.stages.append(
                nn.Sequential(*[
                    ConvNeXtBlock(channels[i], kernel_size, rates[first + j],
                                  layer_scale_init_value, use_grn, with_cp)
                    for j in range(depth)
                ]))

        for i in self.out_indices:
            self.add_module(f'norm{i}', LayerNorm2d(channels[i], eps=1e-6))

        self._freeze_stages()

    @property
    def out_channels(self) -> List[int]:
        """Channels of each returned feature map, in output order."""
        return [self.channels[i] for i in self.out_indices]

    @property
    def out_strides(self) -> List[int]:
        """Stride of each returned feature map, in output order."""
        return [STAGE_STRIDES[i] for i in self.out_indices]

    @classmethod
    def _parse_arch(cls, arch) -> Tuple[List[int], List[int]]:
        if isinstance(arch, str):
            if arch not in cls.arch_settings:
                raise ValueError(f'Unknown ConvNeXt arch {arch!r}; choose one of '
                                 f'{sorted(cls.arch_settings)} or pass a dict with '
                                 f"'depths' and 'channels'")
            setting = cls.arch_settings[arch]
            return list(setting['depths']), list(setting['channels'])
        if not isinstance(arch, dict):
            raise TypeError(f'arch must be a str or a dict, got {type(arch).__name__}: {arch!r}')
        if set(arch) != {'depths', 'channels'}:
            raise ValueError(f"A custom arch dict needs exactly the keys 'depths' and "
                             f"'channels', got keys {sorted(arch)}")
        parsed = []
        for key in ('depths', 'channels'):
            value = arch[key]
            if (not isinstance(value, (list, tuple)) or len(value) != NUM_STAGES or not all(
                    isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
                raise ValueError(f'arch[{key!r}] must be {NUM_STAGES} positive ints, '
                                 f'got {value!r}')
            parsed.append(list(value))
        return parsed[0], parsed[1]

    @staticmethod
    def _parse_out_indices(out_indices) -> Tuple[int, ...]:
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        if not isinstance(out_indices, (list, tuple)) or not out_indices:
            raise ValueError(f'out_indices must be a non-empty sequence of stage indices in '
                             f'[-{NUM_STAGES}, {NUM_STAGES - 1}], got {out_indices!r}')
        normalised = []
        for index in out_indices:
            if (not isinstance(index, int) or isinstance(index, bool)
                    or not -NUM_STAGES <= index < NUM_STAGES):
                raise ValueError(f'out_indices entry {index!r} is out of range; allowed: '
                                 f'integers in [-{NUM_STAGES}, {NUM_STAGES - 1}]')
            normalised.append(index % NUM_STAGES)
        if len(set(normalised)) != len(normalised):
            raise ValueError(f'out_indices {list(out_indices)!r} name the same stage twice '
                             f'(after resolving negative indices: {normalised})')
        return tuple(sorted(normalised))

    def init_weights(self) -> None:
        if isinstance(self.init_cfg, dict) and self.init_cfg.get('type') == 'Pretrained':
            load_pretrained(self, self.init_cfg['checkpoint'], prefix=self.init_cfg.get('prefix'))
            self._is_init = True
            return
        super().init_weights()

    def _freeze_stages(self) -> None:
        for i in range(max(self.frozen_stages, 0)):
            for module in (self.downsample_layers[i], self.stages[i]):
                module.eval()
                for param in module.parameters():
                    param.requires_grad = False

    def train(self, mode: bool = True) -> 'ConvNeXt':
        super().train(mode)
        self._freeze_stages()
        return self

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'ConvNeXt expects an (N, {self.in_channels}, H, W) tensor, '
                             f'got shape {tuple(x.shape)}')
        outs = []
        for i in range(NUM_STAGES):
            x = self.stages[i](self.downsample_layers[i](x))
            if i in self.out_indices:
                # The channels-first LayerNorm leaves NHWC strides; mmcv's RoIAlign and other
                # CUDA/C++ ops read raw NCHW memory, so the outputs are made contiguous.
                outs.append(getattr(self, f'norm{i}')(x).contiguous())
        return tuple(outs)
