"""Configs that inherit another and hold only what changes, as the tools write them
(``tools/swap_backbone.py``, ``tools/dataset_config.py``)."""
import copy
import os
import os.path as osp

from mmengine.config import Config


def resolve_config_path(src: str) -> str:
    """The file of ``src``: a path, or an installed config as mmengine resolves it in
    ``_base_`` (``mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py``)."""
    path = src
    if '::' in src:
        from mmengine.utils import get_installed_path
        package, relative = src.split('::', 1)
        path = osp.join(get_installed_path(package), '.mim', 'configs', relative)
    if not osp.isfile(path):
        raise FileNotFoundError(f'Config file not found: {path!r}')
    return path


def merged_config(cfg: Config, changes: dict) -> Config:
    """A copy of ``cfg`` with ``changes`` (mmengine's merge format) merged in; neither is
    changed (a merge consumes the ``_delete_`` marks of what it merges)."""
    new = Config(copy.deepcopy(cfg.to_dict()), filename=cfg.filename)
    new.merge_from_dict(copy.deepcopy(changes))
    return new


def changes_between(old, new) -> dict:
    """What turns config dict ``old`` into ``new``, in mmengine's merge format: the keys whose
    values differ, recursing into dicts; a changed list is given whole (a merge replaces
    lists). Keys only in ``old`` are not supported (they would need ``_delete_``)."""
    changes = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            nested = changes_between(before, value)
            if nested:
                changes[key] = nested
        elif key not in old or before != value:
            changes[key] = value
    return changes


def write_inheriting_config(src: str, out: str, changes: dict) -> Config:
    """Write ``out``: ``_base_ = SRC`` (kept as ``pkg::...``, else relative to ``out``'s
    folder) and ``changes``; returns the config read back from the file."""
    if not out.endswith('.py'):
        raise ValueError(f'the config to write must end in .py, got {out!r}')
    base = src if '::' in src else osp.relpath(osp.abspath(src), osp.dirname(osp.abspath(out)))
    text = f'_base_ = {base!r}\n\n' + Config(changes).pretty_text.rstrip() + '\n'
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    tmp = f'{out}.tmp-{os.getpid()}'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, out)
    return Config.fromfile(out)
