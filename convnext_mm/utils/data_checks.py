"""Early checks of a config's dataset paths, and of what a built training set holds."""
import os.path as osp
from typing import Iterator, Tuple


def leaf_datasets(cfg: dict, where: str) -> Iterator[Tuple[dict, str]]:
    """Each leaf dataset config under ``cfg`` (through RepeatDataset/ConcatDataset wrappers)."""
    if 'dataset' in cfg:
        yield from leaf_datasets(cfg['dataset'], f'{where}.dataset')
    elif 'datasets' in cfg:
        for i, dataset in enumerate(cfg['datasets']):
            yield from leaf_datasets(dataset, f'{where}.datasets[{i}]')
    else:
        yield cfg, where


def _join(data_root, path):
    return path if not data_root or osp.isabs(path) else osp.join(data_root, path)


def check_dataset_paths(cfg, split: str) -> None:
    """Raise ``FileNotFoundError`` naming the config key when ``{split}_dataloader``'s
    data root, annotation file or image/label folders do not exist, and
    ``ValueError`` when the annotation file is empty (0 bytes). Datasets read
    through a non-local file back end (``backend_args``, URLs) are not checked.
    """
    loader = cfg.get(f'{split}_dataloader')
    if not loader or 'dataset' not in loader:
        return
    hint = 'make the toy data with tools/make_toy_data.py, or see the README for the data layout'
    for dataset, where in leaf_datasets(loader, f'{split}_dataloader'):
        data_root = dataset.get('data_root') or ''
        if dataset.get('backend_args') or '://' in data_root:
            continue  # remote storage (petrel, s3, http): the file back end checks it
        if data_root and not osp.isdir(data_root):
            raise FileNotFoundError(f'{where}.data_root: folder not found: {data_root!r} ({hint})')
        ann_file = dataset.get('ann_file') or ''
        if ann_file:
            path = _join(data_root, ann_file)
            if not osp.isfile(path):
                raise FileNotFoundError(f'{where}.ann_file: annotation file not found: {path!r} '
                                        f'({hint})')
            if osp.getsize(path) == 0:
                raise ValueError(f'{where}.ann_file: annotation file {path!r} is empty (0 bytes)')
        for key, prefix in (dataset.get('data_prefix') or {}).items():
            path = _join(data_root, prefix)
            if prefix and not osp.isdir(path):
                raise FileNotFoundError(f'{where}.data_prefix.{key}: folder not found: {path!r} '
                                        f'({hint})')


def build_train_loop(runner):
    """Build the runner's train loop (and with it the training set), failing with the reason
    when the training set holds no usable sample: training would otherwise stop on an
    obscure numpy error (mmengine serialises the empty list) or train nothing.
    """
    try:
        loop = runner.train_loop
    except ValueError as e:
        if 'need at least one array to concatenate' not in str(e):
            raise
        raise ValueError(_empty_train_set_message(runner.cfg)) from e
    if not _has_usable_sample(loop.dataloader.dataset):
        raise ValueError(_empty_train_set_message(runner.cfg))
    return loop


def _has_usable_sample(dataset) -> bool:
    """False for an empty set, or an instance set whose objects are all ignored (crowd)."""
    if len(dataset) == 0:
        return False
    if not hasattr(dataset, 'get_data_info'):
        return True
    for index in range(len(dataset)):  # stops at the first usable sample, usually the first
        instances = dataset.get_data_info(index).get('instances')
        if instances is None:  # not an instance dataset (e.g. segmentation)
            return True
        if any(not instance.get('ignore_flag', 0) for instance in instances):
            return True
    return False


def _empty_train_set_message(cfg) -> str:
    anns = [_join(d.get('data_root') or '', d.get('ann_file') or '')
            for d, _ in leaf_datasets(cfg.train_dataloader, 'train_dataloader')]
    return (f'The training set has no usable sample (annotation file(s): {anns}). The file lists '
            f'no image, or every image lacks a usable annotation: detection datasets drop images '
            f'whose objects are all crowd (iscrowd=1) or missing when '
            f'filter_cfg.filter_empty_gt=True.')
