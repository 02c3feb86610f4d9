"""Checkpoints named by a Hugging Face hub id: ``hf-hub:owner/name`` (``@revision`` optional).

The id is resolved with ``huggingface_hub`` (an optional dependency: ``pip install
huggingface_hub``) into its cache (``HF_HOME``); with ``HF_HUB_OFFLINE=1`` only the cache is
read. A repository of timm (``hf-hub:timm/convnextv2_base.fcmae``) or of transformers
(``hf-hub:facebook/convnextv2-base-22k-224``) works alike: the first of transformers' weight
files it holds is used, every shard of a sharded one fetched.
"""
import os.path as osp

from .io import PRETRAINED_FOLDER_FILES, SHARD_INDEX_SUFFIX, CheckpointError, read_shard_index

HF_HUB_PREFIX = 'hf-hub:'


def parse_hub_id(ref: str):
    """``'hf-hub:owner/name@rev'`` -> ``('owner/name', 'rev')`` (revision None: the default)."""
    repo_id, _, revision = ref[len(HF_HUB_PREFIX):].partition('@')
    parts = repo_id.split('/')
    if len(parts) != 2 or not all(parts):
        raise ValueError(f'A hub checkpoint is hf-hub:OWNER/NAME[@REVISION], got {ref!r}')
    return repo_id, revision or None


def download_from_hub(ref: str) -> str:
    """The local path of the weights of hub id ``ref`` (a shard index when the weights are
    sharded, with every shard beside it), fetched into huggingface_hub's cache when missing."""
    repo_id, revision = parse_hub_id(ref)
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError as e:
        raise CheckpointError(f'{ref!r}: loading from the Hugging Face hub needs huggingface_hub '
                              f'(pip install huggingface_hub)') from e

    def fetch(filename):
        try:
            return hf_hub_download(repo_id, filename, revision=revision)
        except EntryNotFoundError:  # not in the repository, or offline and not in the cache
            return None
        except Exception as e:  # unknown repository, no network, gated, ...
            raise CheckpointError(f'{ref!r}: cannot fetch {filename!r} from the hub: '
                                  f'{type(e).__name__}: {e}') from e

    for filename in PRETRAINED_FOLDER_FILES:
        path = fetch(filename)
        if path is None:
            continue
        if filename.endswith(SHARD_INDEX_SUFFIX):
            for shard in sorted(set(read_shard_index(path).values())):
                if fetch(shard) is None:
                    raise CheckpointError(f'{ref!r}: shard {shard!r} named by {filename} is '
                                          f'neither in the repository nor in the cache')
        return path
    raise CheckpointError(
        f'{ref!r} has none of the weight files {PRETRAINED_FOLDER_FILES} (revision '
        f'{revision or "default"}); offline (HF_HUB_OFFLINE=1) only files already in the cache '
        f'{osp.join("$HF_HOME", "hub")} are found')
