"""Recognise ConvNeXt checkpoint layouts and rename them to this project's.

This project's layout is the official one (``downsample_layers.i.k``,
``stages.i.j.dwconv|norm|pwconv1|pwconv2|gamma|grn``, ``norm{i}``). Supported:

======================  =====================================================
layout                  recognised by
======================  =====================================================
official                ``downsample_layers.0.0.*`` and ``stages.i.j.dwconv``;
                        classification ``{'model': ...}`` (1K/22K, V1/V2) or
                        detection/segmentation ``state_dict`` with ``backbone.``
fcmae                   ConvNeXt-V2 FCMAE pre-training, sparse encoder:
                        ``encoder.`` prefix, ``*.kernel``, ``.ln.``/``.linear.``
mmpretrain              ``stages.i.j.depthwise_conv`` / ``pointwise_conv1``
timm                    ``stem.0``, ``stages.i.downsample``, ``blocks.j.conv_dw``
torchvision             ``features.N...block.K``, ``layer_scale``
transformers            Hugging Face ``ConvNext[V2]Model`` / ``...ForImageClassification``
                        / ``...Backbone``: ``embeddings.patch_embeddings``,
                        ``encoder.stages.i.layers.j``, ``convnext[v2].`` prefix
======================  =====================================================

Classifier heads and the classifier's final norm are dropped, and so is the
FCMAE decoder (``proj``, ``mask_token``, ``decoder.*``, ``pred``); the
per-stage output norms ``norm0..3`` of the detection backbone start fresh
unless the checkpoint is itself a detection/segmentation one (or a transformers
``Backbone``, whose ``hidden_states_norms`` they are).
"""
import math
import re
from typing import Dict, List, Optional, Tuple

import torch

from ..arch import ARCH_SETTINGS, NUM_STAGES
from .io import CheckpointError

LAYOUTS = ('official', 'fcmae', 'mmpretrain', 'timm', 'torchvision', 'transformers')

# What the FCMAE pre-training model (official models/fcmae.py) holds besides its encoder.
_FCMAE_DECODER = re.compile(r'^(proj|mask_token|decoder|pred)(\.|$)')

_TORCHVISION_BLOCK = {'0': 'dwconv', '2': 'norm', '3': 'pwconv1', '5': 'pwconv2'}

# (pattern, replacement) per layout, applied in order; the first match wins.
# A replacement of None drops the tensor (heads, classifier norms).
_RENAMES: Dict[str, List[Tuple[str, object]]] = {
    'official': [
        (r'^(norm|head)\.', None),
        (r'^(downsample_layers|stages|norm\d)\.', r'\g<0>'),
    ],
    'mmpretrain': [
        (r'^head\.', None),
        (r'^(stages\.\d+\.\d+\.)depthwise_conv\.', r'\1dwconv.'),
        (r'^(stages\.\d+\.\d+\.)pointwise_conv1\.', r'\1pwconv1.'),
        (r'^(stages\.\d+\.\d+\.)pointwise_conv2\.', r'\1pwconv2.'),
        (r'^(downsample_layers|stages|norm\d)\.', r'\g<0>'),
    ],
    'timm': [
        (r'^(head|norm_pre)\.', None),
        (r'^stem\.(\d)\.', r'downsample_layers.0.\1.'),
        (r'^stages\.(\d)\.downsample\.(\d)\.', r'downsample_layers.\1.\2.'),
        (r'^stages\.(\d)\.blocks\.(\d+)\.conv_dw\.', r'stages.\1.\2.dwconv.'),
        (r'^stages\.(\d)\.blocks\.(\d+)\.norm\.', r'stages.\1.\2.norm.'),
        (r'^stages\.(\d)\.blocks\.(\d+)\.mlp\.fc1\.', r'stages.\1.\2.pwconv1.'),
        (r'^stages\.(\d)\.blocks\.(\d+)\.mlp\.fc2\.', r'stages.\1.\2.pwconv2.'),
        (r'^stages\.(\d)\.blocks\.(\d+)\.mlp\.grn\.weight$', r'stages.\1.\2.grn.gamma'),
        (r'^stages\.(\d)\.blocks\.(\d+)\.mlp\.grn\.bias$', r'stages.\1.\2.grn.beta'),
        (r'^stages\.(\d)\.blocks\.(\d+)\.gamma$', r'stages.\1.\2.gamma'),
    ],
    'torchvision': [
        (r'^classifier\.', None),
        (r'^features\.0\.(\d)\.', r'downsample_layers.0.\1.'),
        (r'^features\.([246])\.(\d)\.', lambda m: f'downsample_layers.{int(m[1]) // 2}.{m[2]}.'),
        (r'^features\.([1357])\.(\d+)\.block\.([0235])\.',
         lambda m: f'stages.{int(m[1]) // 2}.{m[2]}.{_TORCHVISION_BLOCK[m[3]]}.'),
        (r'^features\.([1357])\.(\d+)\.layer_scale$',
         lambda m: f'stages.{int(m[1]) // 2}.{m[2]}.gamma'),
    ],
    # after the classification model's ``convnext.`` / ``convnextv2.`` prefix is removed
    'transformers': [
        (r'^(classifier|layernorm)\.', None),
        (r'^embeddings\.patch_embeddings\.', 'downsample_layers.0.0.'),
        (r'^embeddings\.layernorm\.', 'downsample_layers.0.1.'),
        (r'^encoder\.stages\.(\d)\.downsampling_layer\.(\d)\.', r'downsample_layers.\1.\2.'),
        (r'^encoder\.stages\.(\d)\.layers\.(\d+)\.layernorm\.', r'stages.\1.\2.norm.'),
        (r'^encoder\.stages\.(\d)\.layers\.(\d+)\.layer_scale_parameter$', r'stages.\1.\2.gamma'),
        (r'^encoder\.stages\.(\d)\.layers\.(\d+)\.grn\.weight$', r'stages.\1.\2.grn.gamma'),
        (r'^encoder\.stages\.(\d)\.layers\.(\d+)\.grn\.bias$', r'stages.\1.\2.grn.beta'),
        (r'^encoder\.stages\.(\d)\.layers\.(\d+)\.(dwconv|pwconv1|pwconv2)\.',
         r'stages.\1.\2.\3.'),
        (r'^hidden_states_norms\.stage(\d)\.', lambda m: f'norm{int(m[1]) - 1}.'),
    ],
}
# The transformers classification models keep the backbone under their base_model_prefix.
_TRANSFORMERS_PREFIX = re.compile(r'^convnext(v2)?\.')
_TRANSFORMERS_STEM = re.compile(r'^(convnext(v2)?\.)?embeddings\.patch_embeddings\.')


def unwrap_state_dict(checkpoint: dict) -> Tuple[Dict[str, torch.Tensor], str]:
    """Find the tensors of a checkpoint; returns them and the container's name."""
    for key in ('state_dict', 'model', 'module'):
        if isinstance(checkpoint.get(key), dict):
            checkpoint, container = checkpoint[key], f"{{'{key}': ...}}"
            break
    else:
        container = 'plain state dict'
    tensors = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f'No tensors found in the checkpoint ({container}); '
                              f'top-level keys: {sorted(checkpoint)[:10]}')
    if all(k.startswith('module.') for k in tensors):
        tensors = {k[len('module.'):]: v for k, v in tensors.items()}
    if any(k.startswith('backbone.') for k in tensors):
        container += ' with backbone. prefix'
        tensors = {k[len('backbone.'):]: v for k, v in tensors.items() if k.startswith('backbone.')}
    return tensors, container


def detect_layout(keys) -> str:
    """Name the key layout of a ConvNeXt state dict, or raise naming what it looks like."""
    keys = list(keys)

    def has(pattern):
        return any(re.search(pattern, k) for k in keys)

    if has(r'\.kernel$') or has(r'\.(ln|linear)\.(weight|bias)$'):
        return 'fcmae'
    if has(r'^features\.\d+\.\d+\.block\.'):
        return 'torchvision'
    if any(_TRANSFORMERS_STEM.match(k) for k in keys):
        return 'transformers'
    if has(r'^stem\.0\.') and has(r'^stages\.\d+\.blocks\.\d+\.conv_dw\.'):
        return 'timm'
    if has(r'^stages\.\d+\.\d+\.depthwise_conv\.'):
        return 'mmpretrain'
    if has(r'^downsample_layers\.0\.0\.') and has(r'^stages\.\d+\.\d+\.dwconv\.'):
        return 'official'
    hint = ''
    if has(r'^layer\d\.') and has(r'^conv1\.'):
        hint = ' It looks like a ResNet checkpoint.'
    elif has(r'^(patch_embed|layers\.\d+\.blocks)'):
        hint = ' It looks like a Swin/ViT checkpoint.'
    raise CheckpointError(
        f'Not a ConvNeXt checkpoint in any supported layout {LAYOUTS}.{hint} '
        f'First keys: {keys[:6]}')


def convnext_mm_key(key: str, layout: str) -> Optional[str]:
    """This project's name for ``key`` of a ``layout`` checkpoint; None if not a backbone key."""
    for pattern, replacement in _RENAMES[layout]:
        match = re.match(pattern, key)
        if match:
            if replacement is None:
                return None
            return re.sub(pattern, replacement, key, count=1)
    return None


def fcmae_encoder_to_official(tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The sparse FCMAE encoder's tensors in the official dense layout, as the official
    fine-tuning code remaps them (ConvNeXt-V2 ``utils.remap_checkpoint_keys``).

    MinkowskiEngine stores a convolution kernel as (kernel volume, in, out), or (kernel
    volume, channels) when depthwise, with the volume index running over the first spatial
    axis fastest: offset (h, w) is index ``w * k + h``. The ``ln``/``linear`` wrappers
    leave the names and (1, C) biases become (C,).
    """
    converted = {}
    for key, value in tensors.items():
        if key.endswith('.kernel'):
            key = key[:-len('kernel')] + 'weight'
            size = math.isqrt(value.shape[0])
            if value.dim() == 3:  # (k * k, in, out) -> (out, in, k, k)
                value = value.permute(2, 1, 0).reshape(value.shape[2], value.shape[1], size, size)
            else:  # depthwise (k * k, C) -> (C, 1, k, k)
                value = value.permute(1, 0).reshape(value.shape[1], 1, size, size)
            value = value.transpose(3, 2)
        else:
            key = re.sub(r'\.(ln|linear)\.', '.', key)
            if key.endswith('.bias'):
                value = value.reshape(-1)
        converted[key] = value.contiguous()
    return converted


def _split_fcmae_decoder(tensors: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], str]:
    """Drop an FCMAE checkpoint's decoder and its ``encoder.`` prefix; returns the encoder's
    tensors and a note naming what was dropped ('' for other checkpoints)."""
    decoder = sorted(k for k in tensors if _FCMAE_DECODER.match(k))
    if not any(k.startswith('encoder.') for k in tensors) and not decoder:
        return tensors, ''
    encoder = {k[len('encoder.'):] if k.startswith('encoder.') else k: v
               for k, v in tensors.items() if not _FCMAE_DECODER.match(k)}
    parts = sorted({re.sub(r'\.\d+\..*|\.(weight|bias)$', '', k) for k in decoder})
    note = f'; FCMAE decoder dropped: {len(decoder)} tensors of {parts}' if decoder else ''
    return encoder, note


def _reshape_to_layout(key: str, value: torch.Tensor) -> torch.Tensor:
    """Bring the shapes that differ between layouts to this project's shapes."""
    if re.search(r'\.grn\.(gamma|beta)$', key):
        return value.reshape(1, 1, 1, -1)
    if re.search(r'^stages\.\d+\.\d+\.gamma$', key):
        return value.reshape(-1)
    if re.search(r'\.pwconv[12]\.weight$', key) and value.dim() == 4:
        return value.flatten(1)  # a 1x1 convolution stored for a Linear
    return value


def to_convnext_mm(checkpoint: dict) -> Tuple[Dict[str, torch.Tensor], str]:
    """Convert any supported checkpoint to this project's backbone layout.

    Returns the converted state dict and a description of the source format.
    """
    converted, source, _ = convert_checkpoint(checkpoint)
    return converted, source


def convert_checkpoint(checkpoint: dict) -> Tuple[Dict[str, torch.Tensor], str, List[str]]:
    """``to_convnext_mm`` that also returns the names of the tensors left out as no part of the
    backbone (classifier heads and norms; the FCMAE decoder is named in the description)."""
    tensors, container = unwrap_state_dict(checkpoint)
    dropped = ''
    if not any(_TRANSFORMERS_STEM.match(k) for k in tensors):  # their encoder. is no FCMAE's
        tensors, dropped = _split_fcmae_decoder(tensors)
    layout = detect_layout(tensors)
    if layout == 'fcmae':
        tensors = fcmae_encoder_to_official(tensors)
    if layout == 'transformers':
        tensors = {_TRANSFORMERS_PREFIX.sub('', k): v for k, v in tensors.items()}
    is_classifier = 'norm0.weight' not in tensors and layout in ('official', 'mmpretrain')
    converted, left_out = {}, []
    for key, value in tensors.items():
        new_key = convnext_mm_key(key, 'official' if layout == 'fcmae' else layout)
        # mmpretrain's classifier stores its final norm as norm3
        if new_key is None or is_classifier and re.match(r'^norm\d\.', new_key):
            left_out.append(key)
            continue
        converted[new_key] = _reshape_to_layout(new_key, value)
    if not converted:
        raise CheckpointError(f'No backbone tensors left after converting the {layout} '
                              f'checkpoint ({container})')
    return converted, f'{layout} ({container}{dropped})', left_out


def describe_arch(state_dict: Dict[str, torch.Tensor]) -> Tuple[List[int], List[int], str]:
    """Depths, channels and a readable arch name of a converted state dict."""
    depths, channels = [], []
    for i in range(NUM_STAGES):
        blocks = {int(m[1]) for k in state_dict for m in [re.match(rf'^stages\.{i}\.(\d+)\.', k)] if m}
        depths.append(max(blocks) + 1 if blocks else 0)
        conv_key = f'downsample_layers.{i}.{0 if i == 0 else 1}.weight'
        channels.append(int(state_dict[conv_key].shape[0]) if conv_key in state_dict else 0)
    version = 'V2' if any('.grn.' in k for k in state_dict) else 'V1'
    name = next((n for n, s in ARCH_SETTINGS.items()
                 if s['depths'] == depths and s['channels'] == channels), None)
    readable = f'{name} {version}' if name else f'depths={depths} channels={channels} {version}'
    return depths, channels, readable
