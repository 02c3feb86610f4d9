"""Layer-wise learning-rate decay for ConvNeXt backbones.

The rule of the official ConvNeXt detection/segmentation code (and of mmdet's
and mmseg's ``LearningRateDecayOptimizerConstructor``): every parameter gets a
layer id, and its lr is ``base_lr * decay_rate ** (num_layers + 1 - layer_id)``.

``layer_wise``: stem -> 0; stage 0 -> 1; downsample 1 and stage 1 -> 2;
downsample 2 -> 3; stage 2 blocks in groups of three -> 3, 4, ...;
downsample 3 and stage 3 -> num_layers; anything outside the backbone stages
(output norms, neck, heads) -> num_layers + 1.

``stage_wise``: all downsample layers -> 0; stage i -> i + 1; anything else ->
num_layers + 1.

Other heads' settings compose with it as in mmengine's ``DefaultOptimWrapperConstructor``:
``custom_keys`` (``lr_mult`` / ``decay_mult`` for the parameters whose name contains the key,
the longest key first) multiply the layer-decay lr and the weight decay, and
``norm_decay_mult`` / ``bias_decay_mult`` set the weight decay factor of norm-layer
parameters and of biases (which otherwise get none, as in the official recipes), and
``bias_lr_mult`` multiplies the lr of biases outside norm layers.
"""
from typing import List, Optional, Tuple

import torch.nn as nn
from mmengine.dist import get_dist_info
from mmengine.logging import MMLogger
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

from ...models.backbones.convnext import ConvNeXt
from ..fsdp import full_ndims, unwrapped_name

DECAY_TYPES = ('layer_wise', 'stage_wise')
PARAMWISE_KEYS = ('decay_rate', 'decay_type', 'num_layers', 'custom_keys', 'norm_decay_mult',
                  'bias_decay_mult', 'bias_lr_mult', 'bypass_duplicate')
CUSTOM_KEY_FIELDS = ('lr_mult', 'decay_mult')
NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm,
         nn.LayerNorm)


def fitting_num_layers(backbone: ConvNeXt) -> int:
    """The ``num_layers`` of the official recipes: 6 for 9 or fewer blocks in stage 2, else 12."""
    depth = backbone.depths[2]
    return 6 if depth <= 9 else max(12, 4 + (depth - 1) // 3)


def get_layer_id(name: str, num_layers: int, decay_type: str) -> int:
    """Layer id of the parameter ``name`` of a model whose backbone is a ConvNeXt."""
    parts = name.split('.')
    if parts[0] != 'backbone' or parts[1] not in ('downsample_layers', 'stages'):
        return num_layers + 1
    stage = int(parts[2])
    if decay_type == 'stage_wise':
        return 0 if parts[1] == 'downsample_layers' else stage + 1
    if parts[1] == 'downsample_layers':
        return (0, 2, 3, num_layers)[stage]
    return (1, 2, 3 + int(parts[3]) // 3, num_layers)[stage]


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class ConvNeXtLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Optimizer-wrapper constructor with layer-wise lr decay for ConvNeXt.

    ``paramwise_cfg`` keys:

    - ``decay_rate`` (float, required): in (0, 1].
    - ``decay_type`` (str): 'layer_wise' (default) or 'stage_wise'.
    - ``num_layers`` (int, optional): 6 for backbones with at most 9 blocks in
      stage 2 (T and smaller), 12 for the 27-block ones; derived when omitted.
    - ``custom_keys`` (dict, optional): ``{name part: dict(lr_mult=..., decay_mult=...)}``,
      as in mmengine; the multipliers apply on top of the layer decay.
    - ``norm_decay_mult``, ``bias_decay_mult`` (float, optional): weight decay factor of
      norm-layer parameters and of the other biases; ``bias_lr_mult`` (float, optional): lr
      multiplier of those biases.
    - ``bypass_duplicate`` (bool): accepted; a parameter shared by several modules is always
      put in one group only.

    Biases and all 1-D parameters (norms, layer scale) as well as GRN get no
    weight decay unless the two mults say otherwise; frozen parameters are left out.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict = None):
        paramwise_cfg = dict(paramwise_cfg or {})
        unknown = sorted(set(paramwise_cfg) - set(PARAMWISE_KEYS))
        if unknown:
            raise ValueError(f'Unknown paramwise_cfg keys {unknown} for '
                             f'ConvNeXtLayerDecayOptimizerConstructor; allowed: {PARAMWISE_KEYS}')
        decay_rate = paramwise_cfg.get('decay_rate')
        if (not isinstance(decay_rate, (int, float)) or isinstance(decay_rate, bool)
                or not 0 < decay_rate <= 1):
            raise ValueError(f'paramwise_cfg.decay_rate must be a number in (0, 1], '
                             f'got {decay_rate!r}')
        paramwise_cfg.setdefault('decay_type', 'layer_wise')
        if paramwise_cfg['decay_type'] not in DECAY_TYPES:
            raise ValueError(f"paramwise_cfg.decay_type {paramwise_cfg['decay_type']!r} is "
                             f'unknown; choose one of {DECAY_TYPES}')
        num_layers = paramwise_cfg.get('num_layers')
        if num_layers is not None and (not isinstance(num_layers, int) or num_layers < 1):
            raise ValueError(f'paramwise_cfg.num_layers must be a positive int or omitted, '
                             f'got {num_layers!r}')
        for key in ('norm_decay_mult', 'bias_decay_mult', 'bias_lr_mult'):
            value = paramwise_cfg.get(key)
            if value is not None and (not isinstance(value, (int, float)) or value < 0):
                raise ValueError(f'paramwise_cfg.{key} must be a number >= 0, got {value!r}')
        custom_keys = paramwise_cfg.get('custom_keys') or {}
        for key, mults in custom_keys.items():
            unknown = sorted(set(mults) - set(CUSTOM_KEY_FIELDS)) if isinstance(mults, dict) \
                else [mults]
            if unknown:
                raise ValueError(f'paramwise_cfg.custom_keys[{key!r}] may set {CUSTOM_KEY_FIELDS}, '
                                 f'got {unknown}')
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        # The runner passes a ConfigDict, which would turn each param group put into it into a
        # ConfigDict too; torch.compile cannot trace an optimizer step over those (mmengine's
        # `compile`, which compiles the whole train_step), so the groups stay plain dicts.
        self.optimizer_cfg = dict(self.optimizer_cfg)

    def __call__(self, model: nn.Module):
        # the parameters' own shapes, before mmengine unwraps DDP / FSDP (whose root unit
        # holds the neck's and heads' parameters as flat shards)
        self._ndims = full_ndims(model)
        return super().__call__(model)

    def add_params(self, params: List[dict], module: nn.Module, **kwargs) -> None:
        backbone = getattr(module, 'backbone', None)
        if not isinstance(backbone, ConvNeXt):
            raise TypeError(f'ConvNeXtLayerDecayOptimizerConstructor needs a model whose '
                            f"'backbone' is a convnext_mm ConvNeXt, got "
                            f'{type(backbone).__name__ if backbone is not None else "no backbone"}'
                            f' in {type(module).__name__}')
        fits = fitting_num_layers(backbone)
        num_layers = self.paramwise_cfg.get('num_layers', fits)
        if num_layers != fits:
            raise ValueError(f'paramwise_cfg.num_layers={num_layers} does not fit this backbone '
                             f'(stage depths {backbone.depths}); use num_layers={fits} '
                             f'or leave it out')
        decay_rate = self.paramwise_cfg['decay_rate']
        decay_type = self.paramwise_cfg['decay_type']

        groups, seen = {}, set()
        for module_name, owner in module.named_modules():
            for param_name, param in owner.named_parameters(recurse=False):
                if not param.requires_grad or id(param) in seen:
                    continue
                seen.add(id(param))
                name = unwrapped_name(f'{module_name}.{param_name}' if module_name
                                      else param_name)
                layer_id = get_layer_id(name, num_layers, decay_type)
                lr_mult, decay_factor = self._multipliers(name, param, owner)
                key = (layer_id, lr_mult, decay_factor)
                if key not in groups:
                    scale = decay_rate**(num_layers + 1 - layer_id)
                    suffix = 'no_decay' if decay_factor == 0 else 'decay'
                    suffix += '' if decay_factor in (0, 1) else f'_x{decay_factor:g}'
                    suffix += '' if lr_mult == 1 else f'_lr_x{lr_mult:g}'
                    groups[key] = dict(
                        params=[], param_names=[], lr=self.base_lr * scale * lr_mult,
                        lr_scale=scale, lr_mult=lr_mult,
                        weight_decay=(self.base_wd or 0.) * decay_factor,
                        group_name=f'layer_{layer_id}_{suffix}')
                groups[key]['params'].append(param)
                groups[key]['param_names'].append(name)
        # per layer: decayed group first, then those without decay
        ordered = [groups[key] for key in sorted(groups, key=lambda k: (k[0], k[1], -k[2]))]
        params.extend(ordered)
        if get_dist_info()[0] == 0:
            self._log_table(ordered, decay_type, decay_rate, num_layers)

    def _multipliers(self, name: str, param: nn.Parameter,
                     owner: nn.Module) -> Tuple[float, float]:
        """(lr multiplier, weight decay factor) of one parameter; ``owner`` holds it."""
        is_norm = isinstance(owner, NORMS)
        is_bias = name.endswith('.bias')
        ndim = getattr(self, '_ndims', {}).get(id(param), param.ndim)
        decay_factor = 0. if ndim == 1 or is_bias or '.grn.' in name else 1.
        lr_mult = 1.
        norm_mult: Optional[float] = self.paramwise_cfg.get('norm_decay_mult')
        bias_mult: Optional[float] = self.paramwise_cfg.get('bias_decay_mult')
        if is_norm and norm_mult is not None:
            decay_factor = float(norm_mult)
        elif is_bias and not is_norm:
            decay_factor = decay_factor if bias_mult is None else float(bias_mult)
            lr_mult = float(self.paramwise_cfg.get('bias_lr_mult', 1.))
        custom_keys = self.paramwise_cfg.get('custom_keys') or {}
        for key in sorted(sorted(custom_keys), key=len, reverse=True):  # mmengine's order
            if key in name:
                mults = custom_keys[key]
                return (lr_mult * mults.get('lr_mult', 1.),
                        decay_factor * mults.get('decay_mult', 1.))
        return lr_mult, decay_factor

    @staticmethod
    def _log_table(groups: List[dict], decay_type: str, decay_rate: float,
                   num_layers: int) -> None:
        lines = [f'ConvNeXt layer decay: {decay_type}, decay_rate={decay_rate}, '
                 f'num_layers={num_layers}, {len(groups)} param groups',
                 f'{"group":<20} {"lr_scale":>8} {"wd":>6} {"tensors":>7} {"params":>10}  '
                 f'first .. last']
        for g in groups:
            lines.append(f'{g["group_name"]:<20} {g["lr_scale"]:>8.4f} {g["weight_decay"]:>6.3g} '
                         f'{len(g["params"]):>7} {sum(p.numel() for p in g["params"]):>10}  '
                         f'{g["param_names"][0]} .. {g["param_names"][-1]}')
        MMLogger.get_current_instance().info('\n'.join(lines))
