"""Reading checkpoint files without running code from them.

``.pth``/``.pt``/``.bin`` files go through ``torch.load(weights_only=True)``,
PyTorch's restricted unpickler; ``.safetensors`` files hold only tensors.
There is no fallback to the unrestricted unpickler.
"""
import os
import os.path as osp
from typing import Any, Dict

import torch

SAFETENSORS_SUFFIX = '.safetensors'


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


def resolve_checkpoint_path(path_or_url: str) -> str:
    """Return a local file for ``path_or_url``, downloading URLs once into torch's hub cache."""
    if not isinstance(path_or_url, (str, os.PathLike)):
        raise TypeError(f'checkpoint must be a path or URL string, got {path_or_url!r}')
    path_or_url = str(path_or_url)
    if path_or_url.startswith(('http://', 'https://')):
        cache_dir = osp.join(torch.hub.get_dir(), 'checkpoints')
        os.makedirs(cache_dir, exist_ok=True)
        local = osp.join(cache_dir, osp.basename(path_or_url.split('?')[0]))
        if not osp.isfile(local):
            torch.hub.download_url_to_file(path_or_url, local, progress=True)
        return local
    if not osp.isfile(path_or_url):
        raise FileNotFoundError(f'Checkpoint file not found: {path_or_url!r}')
    return path_or_url


def load_checkpoint_file(path_or_url: str) -> Dict[str, Any]:
    """Load a checkpoint as plain containers and tensors, refusing anything else."""
    path = resolve_checkpoint_path(path_or_url)
    if path.endswith(SAFETENSORS_SUFFIX):
        from safetensors.torch import load_file
        try:
            return load_file(path, device='cpu')
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f'Cannot read safetensors checkpoint {path!r}: {e}') from e
    try:
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        if 'Unsupported global' in str(e) or 'weights_only' in str(e):
            raise CheckpointError(
                f'Refused to load {path!r}: it contains Python objects that are not plain '
                f'tensors or containers, and loading them could run code. Convert it to a '
                f'state dict (or .safetensors) in a trusted environment. Details: {e}') from e
        raise CheckpointError(f'Cannot read checkpoint {path!r} (truncated or not a PyTorch '
                              f'checkpoint?): {e}') from e
    if not isinstance(obj, dict):
        raise CheckpointError(f'Checkpoint {path!r} holds a {type(obj).__name__}, '
                              f'not a dict of tensors')
    return obj


def save_checkpoint_file(state_dict: Dict[str, torch.Tensor], path: str) -> None:
    """Write a state dict as ``.safetensors`` or as ``{'state_dict': ...}`` ``.pth``.

    The file is written beside its destination and renamed into place, so an
    interrupted write never leaves a half-written file under ``path``.
    """
    tmp = f'{path}.tmp-{os.getpid()}'
    try:
        if path.endswith(SAFETENSORS_SUFFIX):
            from safetensors.torch import save_file
            save_file({k: v.contiguous() for k, v in state_dict.items()}, tmp)
        else:
            torch.save({'state_dict': state_dict}, tmp)
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
