"""Reading checkpoint files without running code from them.

``.pth``/``.pt``/``.bin`` files go through ``torch.load(weights_only=True)``,
PyTorch's restricted unpickler; ``.safetensors`` files hold only tensors.
There is no fallback to the unrestricted unpickler.

A checkpoint is a file, an http(s) URL, a Hugging Face hub id (``hf-hub:owner/name``,
``convnext_mm.checkpoint.hub``), a folder written by transformers' ``save_pretrained``, or
the index (``*.index.json``) of a sharded one.
"""
import json
import os
import os.path as osp
import zipfile
from typing import Any, Dict

import torch

SAFETENSORS_SUFFIX = '.safetensors'
SHARD_INDEX_SUFFIX = '.index.json'
# What transformers' save_pretrained writes, in the order it prefers them.
PRETRAINED_FOLDER_FILES = ('model.safetensors', 'model.safetensors.index.json',
                           'pytorch_model.bin', 'pytorch_model.bin.index.json')


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


def resolve_checkpoint_path(path_or_url: str) -> str:
    """Return a local file for ``path_or_url``, downloading URLs once into torch's hub cache."""
    if not isinstance(path_or_url, (str, os.PathLike)):
        raise TypeError(f'checkpoint must be a path or URL string, got {path_or_url!r}')
    path_or_url = str(path_or_url)
    from .hub import HF_HUB_PREFIX, download_from_hub
    if path_or_url.startswith(HF_HUB_PREFIX):
        return download_from_hub(path_or_url)
    if path_or_url.startswith(('http://', 'https://')):
        cache_dir = osp.join(torch.hub.get_dir(), 'checkpoints')
        os.makedirs(cache_dir, exist_ok=True)
        local = osp.join(cache_dir, osp.basename(path_or_url.split('?')[0]))
        if not osp.isfile(local):
            download_checkpoint(path_or_url, local)
        return local
    if osp.isdir(path_or_url):
        return weights_in_folder(path_or_url)
    if not osp.isfile(path_or_url):
        raise FileNotFoundError(f'Checkpoint file not found: {path_or_url!r}')
    return path_or_url


def download_checkpoint(url: str, path: str) -> None:
    """Download ``url`` to ``path``, which is written only once the whole file has arrived and
    reads as a checkpoint: a download cut short or a page that is no checkpoint raises
    ``CheckpointError`` naming the URL, and leaves nothing at ``path`` to be read later."""
    import http.client
    import shutil
    import urllib.request
    root, suffix = osp.splitext(path)
    tmp = f'{root}.partial-{os.getpid()}{suffix}'  # the suffix says how it is read
    expected = None
    try:
        try:
            with urllib.request.urlopen(url) as response, open(tmp, 'wb') as f:
                expected = response.headers.get('Content-Length')
                shutil.copyfileobj(response, f, 1 << 20)
        except http.client.IncompleteRead:
            pass  # the size check below names it
        except (OSError, http.client.HTTPException) as e:  # URLError, HTTPError, resets
            raise CheckpointError(f'Cannot download {url!r}: {e}; nothing was cached') from e
        got = osp.getsize(tmp)
        if expected is not None and got != int(expected):
            raise CheckpointError(f'The download of {url!r} was cut short: {got} of {expected} '
                                  f'bytes; nothing was cached')
        try:
            load_checkpoint_file(tmp)
        except (CheckpointError, OSError) as e:
            raise CheckpointError(f'{url!r} is not a checkpoint this project reads: {e}; '
                                  f'nothing was cached') from e
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def weights_in_folder(folder: str) -> str:
    """The weights file of a folder written by transformers' ``save_pretrained``."""
    for name in PRETRAINED_FOLDER_FILES:
        if osp.isfile(osp.join(folder, name)):
            return osp.join(folder, name)
    raise FileNotFoundError(f'Checkpoint folder {folder!r} holds none of the weight files '
                            f'{PRETRAINED_FOLDER_FILES} (transformers\' save_pretrained layout); '
                            f'give the file itself')


def read_shard_index(index_path: str) -> Dict[str, str]:
    """The ``weight_map`` (tensor name -> shard file) of a sharded checkpoint's index."""
    try:
        with open(index_path) as f:
            return dict(json.load(f)['weight_map'])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f'{index_path!r} is not a shard index (a JSON file with a '
                              f'"weight_map"): {e}') from e


def _load_shards(index_path: str, map_location) -> Dict[str, Any]:
    """The tensors of a sharded checkpoint: each shard its index names, merged."""
    weight_map = read_shard_index(index_path)
    folder, tensors = osp.dirname(index_path), {}
    for shard in sorted(set(weight_map.values())):
        shard_path = osp.join(folder, shard)
        if not osp.isfile(shard_path):
            raise FileNotFoundError(f'Shard {shard!r} named by {index_path!r} not found: '
                                    f'{shard_path!r}')
        tensors.update(load_checkpoint_file(shard_path, map_location))
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise CheckpointError(f'{index_path!r}: {len(missing)} tensors of its weight_map are in '
                              f'no shard (first: {missing[0]!r})')
    return tensors


def check_checkpoint_file(path: str, what: str = 'Checkpoint') -> None:
    """Fail early, naming ``path``, when a local checkpoint is missing, empty or truncated.

    PyTorch checkpoints are zip archives: their directory sits at the end of the
    file and each entry has a CRC, so a cut-off or damaged file is caught here
    before a run starts (reading the file once).
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'{what} not found: {path!r}')
    if osp.getsize(path) == 0:
        raise CheckpointError(f'{what} {path!r} is empty (0 bytes)')
    with open(path, 'rb') as f:
        is_zip = f.read(4) == b'PK\x03\x04'
    if not is_zip:  # .safetensors, or the pre-1.6 PyTorch format: checked when loaded
        return
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f'{what} {path!r} is truncated or corrupt ({e}); '
                              f'use an earlier checkpoint') from e
    if damaged is not None:
        raise CheckpointError(f'{what} {path!r} is corrupt (entry {damaged!r} fails its CRC '
                              f'check); use an earlier checkpoint')


def load_checkpoint_file(path_or_url: str, map_location='cpu') -> Dict[str, Any]:
    """Load a checkpoint as plain containers and tensors, refusing anything else."""
    path = resolve_checkpoint_path(path_or_url)
    if path.endswith(SHARD_INDEX_SUFFIX):
        return _load_shards(path, map_location)
    if path.endswith(SAFETENSORS_SUFFIX):
        from safetensors.torch import load_file
        try:
            return load_file(path, device=map_location if isinstance(map_location, str) else 'cpu')
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f'Cannot read safetensors checkpoint {path!r}: {e}') from e
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
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
