"""ConvNeXt (V1, and V2 with GRN) as a multi-scale OpenMMLab backbone."""
import difflib
import inspect
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule
from mmengine.registry import MODELS

from ... import ops
from ...arch import ARCH_SETTINGS, NUM_STAGES, STAGE_STRIDES
from ...checkpoint import load_pretrained
from .layers import GRN, DropPath, LayerNorm2d


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block: depthwise conv -> LayerNorm -> Linear(C, 4C) -> GELU [-> GRN] ->
    Linear(4C, C) -> layer scale -> drop path -> + input.

    The LayerNorm and the Linear layers (the paper's 1x1 convolutions) run on an NHWC view.
    Parameter names are the official code's, so its checkpoints load as they are.

    Args:
        channels (int): Input and output channels.
        kernel_size (int): Kernel of the depthwise convolution. Defaults to 7.
        drop_path_rate (float): Stochastic depth rate of the block. Defaults to 0.
        layer_scale_init_value (float): Initial layer scale; 0 disables it. Defaults to 1e-6.
        use_grn (bool): The ConvNeXt V2 block: GRN after GELU, no layer scale.
            Defaults to False.
        with_cp (bool): Gradient checkpointing. Defaults to False.
    """

    def __init__(self, channels: int, kernel_size: int = 7, drop_path_rate: float = 0.,
                 layer_scale_init_value: float = 1e-6, use_grn: bool = False,
                 with_cp: bool = False):
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2,
                                groups=channels)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.pwconv1 = nn.Linear(channels, 4 * channels)
        self.act = nn.GELU()
        self.grn = GRN(4 * channels) if use_grn else None
        self.pwconv2 = nn.Linear(4 * channels, channels)
        with_scale = layer_scale_init_value > 0 and not use_grn
        self.gamma = nn.Parameter(torch.full((channels, ), float(layer_scale_init_value))
                                  ) if with_scale else None
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.with_cp = with_cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if (out := ops.convnext_block(x, self.dwconv, self.norm, self.pwconv1, self.grn,
                                      self.pwconv2, self.gamma, self.drop_path)) is not None:
            return out  # the CPU accelerators (convnext_mm/ops), same result
        shortcut = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        x = self.norm(x)
        x = self.pwconv1(x)
        x = self.act(x)
        if self.grn is not None:
            x = self.grn(x)
        x = self.pwconv2(x)
        if self.gamma is not None:
            x = self.gamma * x
        x = x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        return shortcut + self.drop_path(x)


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

    arch_settings = ARCH_SETTINGS

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
