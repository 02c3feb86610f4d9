"""Put ConvNeXt into any mmdet or mmseg config: the backbone and everything that reads it.

``convnext_overrides(cfg, arch)`` says what to change, in mmengine's merge format (what
``tools/swap_backbone.py`` writes below ``_base_``); ``use_convnext(cfg, arch)`` returns the
config with those changes made.
"""
import copy
import logging
from typing import List, Optional, Union

import torch
from mmengine.config import Config

from .config_writer import merged_config

# The default layer decay of the recipes of each scope (the T-size values).
DEFAULT_LAYER_DECAY = {
    'mmdet': dict(decay_rate=0.7, decay_type='layer_wise'),
    'mmseg': dict(decay_rate=0.9, decay_type='stage_wise'),
}
# Heads that read the backbone when a model has no neck, by config key.
HEAD_KEYS = ('decode_head', 'auxiliary_head', 'panoptic_head', 'bbox_head', 'mask_head')


def _outputs_read(model: dict) -> int:
    """How many feature maps the model's neck or heads take from its backbone: the old
    backbone's ``out_indices``, else the length of the neck's ``in_channels``, else 4."""
    out_indices = model['backbone'].get('out_indices')
    if out_indices is not None:
        return len(out_indices) if isinstance(out_indices, (list, tuple)) else 1
    neck = model.get('neck')
    neck = neck[0] if isinstance(neck, (list, tuple)) else neck
    if neck is not None and isinstance(neck.get('in_channels'), (list, tuple)):
        return len(neck['in_channels'])
    return 4


def _convnext_channels(arch, out_indices) -> List[int]:
    from .models import ConvNeXt
    with torch.device('meta'):
        return ConvNeXt(arch, out_indices=out_indices).out_channels


def _adapt_reader(reader: dict, where: str, channels: List[int]) -> dict:
    """The changes that make ``reader`` (a neck or head config reading the backbone's outputs)
    take ConvNeXt's ``channels``.

    An mmseg head reads the outputs its ``in_index`` names: one (``in_channels`` an int), or
    several (a list: concatenated with ``input_transform='resize_concat'``, or handed over as a
    list with ``'multiple_select'``). K-Net's ``IterativeDecodeHead`` reads the backbone
    through its ``kernel_generate_head``.
    """
    if reader.get('kernel_generate_head') is not None:
        return dict(kernel_generate_head=_adapt_reader(
            reader['kernel_generate_head'], f'{where}.kernel_generate_head', channels))
    changes = {}
    in_index = reader.get('in_index')
    if in_index is not None:  # mmseg heads: which backbone outputs they read
        indices = list(in_index) if isinstance(in_index, (list, tuple)) else [in_index]
        if any(not -len(channels) <= i < len(channels) for i in indices):
            raise ValueError(f'{where}.in_index={in_index!r} reads beyond the backbone\'s '
                             f'{len(channels)} outputs')
        picked = [channels[i] for i in indices]
        changes['in_channels'] = picked if isinstance(in_index, (list, tuple)) else picked[0]
        if 'c1_in_channels' in reader:  # DeepLabV3+ also reads the first output
            changes['c1_in_channels'] = channels[0]
        return changes
    in_channels = reader.get('in_channels')
    if isinstance(in_channels, (list, tuple)) and len(in_channels) == len(channels):
        return dict(in_channels=list(channels))
    if isinstance(in_channels, int) and len(channels) == 1:
        return dict(in_channels=channels[0])
    raise ValueError(f'{where}.in_channels={in_channels!r} (type {reader.get("type")!r}): cannot '
                     f'tell which of the backbone\'s {len(channels)} outputs it reads, so it '
                     f'cannot be given ConvNeXt\'s channels {channels}')


def _merge_into(target: dict, changes: dict) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge_into(target[key], value)
        else:
            target[key] = value


def _readers(model: dict):
    """(config key, config) of what reads the backbone's outputs: the neck (its first module
    when it is a list), else the heads (each of a list: the cascade of heads of mmseg's
    ``CascadeEncoderDecoder`` all read the backbone)."""
    if model.get('neck') is not None:
        return [('neck', model['neck'])]
    readers = [(key, model[key]) for key in HEAD_KEYS if model.get(key) is not None]
    if not readers:
        raise ValueError('model has neither a neck nor a head that reads the backbone '
                         f'({", ".join(("neck", ) + HEAD_KEYS)})')
    return readers


def convnext_overrides(cfg: Config, arch: Union[str, dict] = 'tiny',
                       checkpoint: Optional[str] = None, layer_decay=None,
                       **backbone_kwargs) -> dict:
    """What to change in ``cfg`` (an mmdet or mmseg config) to use a ConvNeXt backbone, as a
    dict in mmengine's merge format (``_delete_=True`` where a dict is replaced).

    Args:
        cfg (Config): The config to adapt; not changed.
        arch (str | dict): ConvNeXt arch name or dict(depths=..., channels=...).
        checkpoint (str, optional): Pretrained weights (path or URL, any layout that
            ``init_cfg=dict(type='Pretrained')`` reads). Defaults to None (no init_cfg).
        layer_decay (bool | dict, optional): Switch the optimizer to
            ``ConvNeXtLayerDecayOptimizerConstructor``; True takes the recipes' T values for
            the config's scope (detection layer_wise 0.7, segmentation stage_wise 0.9), a dict
            sets ``decay_rate``/``decay_type``/``num_layers``. Defaults to None (unchanged).
        **backbone_kwargs: More ConvNeXt arguments (``drop_path_rate``, ``use_grn``, ...).

    The backbone gives as many outputs as the old one (its last stages: ResNet's
    ``(1, 2, 3)`` stays ``(1, 2, 3)``, CSPNeXt's ``(2, 3, 4)`` becomes ``(1, 2, 3)``); the
    neck's ``in_channels``, or the heads' when there is no neck (by their ``in_index`` in
    mmseg), get ConvNeXt's channels; ``model.pretrained`` (mmseg) is cleared and
    ``custom_imports`` gets ``convnext_mm``. Raises ValueError naming the config key it
    cannot adapt.
    """
    model = cfg.get('model')
    if model is None or model.get('backbone') is None:
        raise ValueError(f'{cfg.filename}: no model.backbone to replace (wrapped models such as '
                         f'semi-supervised or distillation ones are not adapted)')
    if 'out_indices' in backbone_kwargs:
        out_indices = tuple(backbone_kwargs.pop('out_indices'))
    else:
        out_indices = tuple(range(4 - _outputs_read(model), 4))
    channels = _convnext_channels(arch, out_indices)
    roi_head = model.get('roi_head') or {}
    if roi_head.get('shared_head') is not None:
        raise ValueError('model.roi_head.shared_head is a stage of the old backbone (C4 models); '
                         'it cannot be given to ConvNeXt: use an FPN config instead')

    backbone = dict(_delete_=True, type='ConvNeXt', arch=arch, out_indices=out_indices,
                    **backbone_kwargs)
    if checkpoint is not None:
        backbone['init_cfg'] = dict(type='Pretrained', checkpoint=checkpoint)
    model_changes = dict(backbone=backbone)
    for key, reader in _readers(model):
        if isinstance(reader, (list, tuple)):  # a list is replaced whole by a merge
            readers = [copy.deepcopy(r) for r in reader]
            for i, one in enumerate(readers[:1] if key == 'neck' else readers):
                _merge_into(one, _adapt_reader(one, f'model.{key}[{i}]', channels))
            model_changes[key] = readers
        else:
            model_changes[key] = _adapt_reader(reader, f'model.{key}', channels)
    if model.get('pretrained') is not None:  # mmseg passes it to the backbone, which refuses it
        model_changes['pretrained'] = None
    overrides = dict(model=model_changes)

    imports = (cfg.get('custom_imports') or {}).get('imports', [])
    imports = [imports] if isinstance(imports, str) else list(imports)
    if 'convnext_mm' not in imports:
        overrides['custom_imports'] = dict(imports=imports + ['convnext_mm'],
                                           allow_failed_imports=False)
    if layer_decay:
        scope = cfg.get('default_scope')
        if layer_decay is True:
            if scope not in DEFAULT_LAYER_DECAY:
                raise ValueError(f"layer_decay=True needs default_scope 'mmdet' or 'mmseg', got "
                                 f'{scope!r}: give dict(decay_rate=..., decay_type=...)')
            layer_decay = DEFAULT_LAYER_DECAY[scope]
        paramwise_cfg = dict((cfg.get('optim_wrapper') or {}).get('paramwise_cfg') or {})
        paramwise_cfg.update(layer_decay)  # kept: the config's custom_keys, decay_mults
        overrides['optim_wrapper'] = dict(
            constructor='ConvNeXtLayerDecayOptimizerConstructor', paramwise_cfg=paramwise_cfg)
    return overrides


def use_convnext(cfg: Config, arch: Union[str, dict] = 'tiny', **kwargs) -> Config:
    """``cfg`` with a ConvNeXt backbone: ``convnext_overrides(cfg, arch, **kwargs)`` merged
    into a copy of it."""
    return merged_config(cfg, convnext_overrides(cfg, arch, **kwargs))


# The synthetic batch of check_swapped_model: two images of this size.
CHECK_IMAGE_SIZE = 128


def _mentions(node, word: str) -> bool:
    """Whether a config tree has a key or a type name holding ``word`` (any case)."""
    if isinstance(node, dict):
        return any(word in str(key).lower() for key in node) or \
            word in str(node.get('type', '')).lower() or \
            any(_mentions(value, word) for value in node.values())
    if isinstance(node, (list, tuple)):
        return any(_mentions(value, word) for value in node)
    return False


def _synthetic_batch(model_cfg: dict, scope: str, size: int) -> dict:
    """Two images with the ground truth the model learns from: mmdet's demo inputs (boxes of
    label 0; masks and a semantic map where the model's config speaks of them: box-only
    assigners may use masks when given), or mmseg label maps of classes 0 and 1."""
    if scope == 'mmdet':
        from mmdet.testing import demo_mm_inputs
        data = demo_mm_inputs(2, [(3, size, size)] * 2, num_items=[3, 2], num_classes=2,
                              with_mask=_mentions(model_cfg, 'mask'),
                              with_semantic=any(_mentions(model_cfg, word)
                                                for word in ('semantic', 'stuff', 'panoptic')))
        for sample in data['data_samples']:  # label 0 exists whatever num_classes is
            sample.gt_instances.labels.zero_()
        return data
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    generator = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(2):
        sample = SegDataSample(metainfo=dict(img_shape=(size, size), pad_shape=(size, size),
                                             ori_shape=(size, size)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 2, (1, size, size),
                                                         generator=generator))
        samples.append(sample)
    images = [torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator)
              for _ in range(2)]
    return dict(inputs=images, data_samples=samples)


def build_shallow_model(cfg: Config) -> torch.nn.Module:
    """The model of a config with a ConvNeXt backbone, built (on the CPU, initialised) with one
    block per stage of the configured channels and no pretrained weights: what the neck and
    heads read is the full model's, at a fraction of its cost. mmdet's fixed-size batch padding
    (``batch_augments``) is left out and mmseg's pad size set to ``CHECK_IMAGE_SIZE``."""
    from mmengine.registry import MODELS, init_default_scope

    from .models import ConvNeXt
    scope = cfg.get('default_scope')
    if scope not in DEFAULT_LAYER_DECAY:
        raise ValueError(f"default_scope must be 'mmdet' or 'mmseg', got {scope!r}")
    model_cfg = copy.deepcopy(cfg.model)
    backbone = model_cfg['backbone']
    _, channels = ConvNeXt._parse_arch(backbone.get('arch', 'tiny'))
    backbone.update(arch=dict(depths=[1] * len(channels), channels=channels), init_cfg=None)
    preprocessor = model_cfg.get('data_preprocessor') or {}
    if preprocessor.get('batch_augments') is not None:
        preprocessor['batch_augments'] = None
    if scope == 'mmseg' and preprocessor.get('size') is not None:
        preprocessor['size'] = (CHECK_IMAGE_SIZE, CHECK_IMAGE_SIZE)
    init_default_scope(scope)
    model = MODELS.build(model_cfg)
    model.init_weights()
    return model


def run_swapped_model(cfg: Config):
    """Build ``cfg``'s model as ``build_shallow_model`` does and compute its training losses on
    two synthetic images (every head, auxiliary heads included); returns (model, losses)."""
    model = build_shallow_model(cfg)
    model.train()
    data = model.data_preprocessor(
        _synthetic_batch(cfg.model, cfg.default_scope, CHECK_IMAGE_SIZE), True)
    return model, model(**data, mode='loss')


def check_swapped_model(cfg: Config, source: str = '') -> bool:
    """Raise ValueError naming ``source`` (the swapped config) when the model of ``cfg`` fails
    to build or to compute its losses (``run_swapped_model``): a neck or head given channels
    it does not read fails here, at swap time, not at a run's first iteration.

    Returns True when the model ran, False (with a warning) when it needs a package this
    environment lacks (PAA's loss needs scikit-learn): that is no fault of the swap.
    """
    from mmengine.logging import print_log
    source = source or cfg.filename
    try:
        run_swapped_model(cfg)
    except ImportError as e:
        print_log(f'The config swapped to ConvNeXt from {source!r} was not run: {e}',
                  logger='current', level=logging.WARNING)
        return False
    except Exception as e:
        raise ValueError(f'The config swapped to ConvNeXt from {source!r} does not run: '
                         f'{type(e).__name__}: {e} (--no-check writes it all the same)') from e
    return True


__all__ = ['check_swapped_model', 'convnext_overrides', 'run_swapped_model', 'use_convnext']
