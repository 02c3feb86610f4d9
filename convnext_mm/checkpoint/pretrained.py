"""Loading pretrained weights of any supported layout into a ConvNeXt."""
from typing import Optional

import torch.nn as nn
from mmengine.logging import MMLogger

from .formats import convert_checkpoint, describe_arch
from .io import CheckpointError, load_checkpoint_file


def load_pretrained(model: nn.Module, checkpoint: str, prefix: Optional[str] = None) -> None:
    """Load ``checkpoint`` (path or URL, ``.pth`` or ``.safetensors``) into ``model``.

    The layout is detected (see ``convnext_mm.checkpoint.formats``). Raises
    ``CheckpointError`` naming the detected format and arch when no tensor
    matches or the checkpoint was made for another arch.
    """
    raw = load_checkpoint_file(checkpoint)
    if prefix:
        source = raw.get('state_dict', raw.get('model', raw))
        raw = {k[len(prefix):]: v for k, v in source.items() if k.startswith(prefix)}
        if not raw:
            raise CheckpointError(f'No key of {checkpoint!r} starts with prefix {prefix!r}')
    state_dict, source_format, left_out = convert_checkpoint(raw)
    load_converted(model, state_dict, checkpoint, source_format, left_out)


def load_converted(model: nn.Module, state_dict: dict, checkpoint: str,
                   source_format: str, left_out=()) -> None:
    """Load a state dict already in this project's layout, checking that it fits.

    ``checkpoint`` and ``source_format`` name its origin in messages; ``left_out`` names the
    checkpoint's tensors that the conversion dropped (logged).
    """
    logger = MMLogger.get_current_instance()
    depths, _, ckpt_arch = describe_arch(state_dict)
    model_arch = describe_arch(model.state_dict())[2]
    where = f'Checkpoint {checkpoint!r} (format: {source_format}, arch: {ckpt_arch})'

    own = model.state_dict()
    mismatched = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state_dict.items()
                  if k in own and v.shape != own[k].shape]
    if mismatched:
        key, got, want = mismatched[0]
        raise CheckpointError(f'{where} does not fit this ConvNeXt (arch: {model_arch}): '
                              f'{len(mismatched)} shape mismatches, first {key}: checkpoint '
                              f'{got} vs model {want}')
    model_depths = describe_arch(own)[0]
    if depths != model_depths:
        raise CheckpointError(f'{where} does not fit this ConvNeXt (arch: {model_arch}): '
                              f'stage depths {depths} vs {model_depths}')
    matched = [k for k in state_dict if k in own]
    if not matched:
        raise CheckpointError(f'{where}: no tensor matches this ConvNeXt (arch: {model_arch})')

    result = model.load_state_dict(state_dict, strict=False)
    logger.info(f'{where}: loaded {len(matched)}/{len(own)} backbone tensors')
    if left_out:
        logger.info(f'dropped (no part of the backbone): {sorted(left_out)}')
    if result.missing_keys:
        logger.info(f'not in the checkpoint (kept at their init): {result.missing_keys}')
    if result.unexpected_keys:
        logger.warning(f'in the checkpoint but not in the model: {result.unexpected_keys}')


def check_fits_model(model: nn.Module, checkpoint: dict, checkpoint_path: str,
                     config_path: str) -> None:
    """Raise ``CheckpointError`` unless ``checkpoint`` (a whole model's, as mmengine saves it:
    its ``state_dict``, or a bare state dict) has exactly the model's tensors with the model's
    shapes.

    mmengine loads such checkpoints with ``strict=False`` and only warns, so the
    checkpoint of another config would run with randomly initialised layers. The message
    names ``checkpoint_path`` and ``config_path``.
    """
    state_dict = checkpoint.get('state_dict', checkpoint)
    state_dict = {k[len('module.'):] if k.startswith('module.') else k: v
                  for k, v in state_dict.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
                  for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
    problems = [f'{len(keys)} {what} (first: {keys[0]})' for what, keys in (
        ('of another shape', mismatched), ('missing from the checkpoint', missing),
        ('not in the model', unexpected)) if keys]
    if problems:
        raise CheckpointError(f'Checkpoint {checkpoint_path!r} of {config_path!r} does not fit '
                              f'the model: {"; ".join(problems)}. '
                              f'Is it a checkpoint of this config?')
