"""Point a detection or segmentation recipe at your own dataset.

``detection_dataset_changes`` reads the classes of a COCO-format annotation file;
``segmentation_dataset_changes`` takes them as a list for an mmseg-layout dataset (image and
label-map folders). Both return what to change in the recipe in mmengine's merge format (what
``tools/dataset_config.py`` writes below ``_base_``): the classes and a palette in every
dataset's ``metainfo``, the paths, every ``num_classes`` of the model, the evaluators' files.
"""
import colorsys
import copy
import json
import os.path as osp
from typing import Dict, List, Sequence, Tuple

from mmengine.config import Config

from .config_writer import changes_between
from .utils.data_checks import leaf_datasets

# Heads whose num_classes is not the dataset's: the RPN proposes class-agnostic boxes.
CLASS_AGNOSTIC_KEYS = ('rpn_head', )
PANOPTIC_DATASETS = ('CocoPanopticDataset', )
CLASS_COUNT_KEYS = ('num_classes', 'num_things_classes', 'num_stuff_classes')


def make_palette(num_classes: int) -> List[Tuple[int, int, int]]:
    """Distinct, saturated colours: hues spread by the golden ratio."""
    colours = []
    for i in range(num_classes):
        rgb = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95 - 0.25 * (i % 2))
        colours.append(tuple(int(round(255 * c)) for c in rgb))
    return colours


def read_coco_categories(path: str) -> List[dict]:
    """The ``categories`` of a COCO-format annotation file, in the file's order."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'Annotation file not found: {path!r}')
    with open(path) as f:
        try:
            categories = json.load(f).get('categories')
        except ValueError as e:
            raise ValueError(f'{path}: not a JSON file ({e})') from e
    if not categories:
        raise ValueError(f'{path}: no "categories" list; a COCO-format annotation file names its '
                         f'classes as categories=[{{"id": ..., "name": ...}}, ...]')
    ids = [c.get('id') for c in categories]
    names = [c.get('name') for c in categories]
    for what, values in (('id', ids), ('name', names)):
        repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
        if None in values or repeated:
            raise ValueError(f'{path}: every category needs its own {what}; '
                             f'{"missing" if None in values else f"repeated: {repeated}"}')
    return categories


def class_count_fields(model: dict):
    """(config dict, key, where) of every ``num_classes`` / ``num_things_classes`` /
    ``num_stuff_classes`` in a model config, class-agnostic heads (the RPN) left out."""
    def visit(node, where):
        if isinstance(node, dict):
            if where.rsplit('.', 1)[-1] in CLASS_AGNOSTIC_KEYS:
                return
            for key in CLASS_COUNT_KEYS:
                if isinstance(node.get(key), int) and not isinstance(node.get(key), bool):
                    yield node, key, f'{where}.{key}'
            for key, value in node.items():
                yield from visit(value, f'{where}.{key}')
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                yield from visit(value, f'{where}[{i}]')

    yield from visit(model, 'model')


def set_num_classes(model: dict, counts: Dict[str, int]) -> List[str]:
    """Set every class count of the model config (``class_count_fields``) to ``counts``
    (by key), resizing a classification loss's per-class ``class_weight`` (Mask2Former's: one
    per class plus the no-object weight) with them; returns where they were set."""
    fields = list(class_count_fields(model))
    for node in {id(node): node for node, _, _ in fields}.values():
        before = node.get('num_classes', sum(node.get(k, 0) for k in CLASS_COUNT_KEYS[1:]))
        loss = node.get('loss_cls')
        if isinstance(loss, dict) and isinstance(loss.get('class_weight'), list) and \
                len(loss['class_weight']) == before + 1:
            weights = loss['class_weight']
            loss['class_weight'] = [weights[0]] * counts['num_classes'] + [weights[-1]]
    for node, key, _ in fields:
        node[key] = counts[key]
    return [where for _, _, where in fields]


def _set_paths(cfg: dict, split: str, data_root: str, paths: dict, common: dict) -> None:
    """Give every dataset of ``{split}_dataloader`` the data root, ``paths`` (``ann_file`` and
    ``data_prefix`` entries) and ``common`` settings."""
    loader = cfg.get(f'{split}_dataloader')
    if not loader:
        return
    for dataset, _ in leaf_datasets(loader, f'{split}_dataloader'):
        dataset.update(common, data_root=data_root)
        for key, value in paths.items():
            if key == 'ann_file':
                dataset['ann_file'] = value
            else:
                dataset['data_prefix'] = dict(dataset.get('data_prefix') or {}, **{key: value})


def _evaluators(cfg: dict, split: str):
    evaluator = cfg.get(f'{split}_evaluator')
    if isinstance(evaluator, dict):
        return [evaluator]
    return [e for e in evaluator or [] if isinstance(e, dict)]


def _dataset_type(cfg: dict) -> str:
    return next(leaf_datasets(cfg['train_dataloader'], 'train_dataloader'))[0].get('type', '')


def detection_dataset_changes(cfg: Config, data_root: str, files: Dict[str, dict]) -> dict:
    """What to change in mmdet config ``cfg`` to train on a COCO-format dataset.

    Args:
        cfg (Config): The recipe; not changed.
        data_root (str): The dataset's folder (the paths below are relative to it).
        files (dict): Per split ('train', 'val', 'test'), ``dict(ann=..., img=...)`` (and
            ``seg=...``, the PNG folder, for a panoptic dataset); a split left out keeps its
            settings ('test' usually takes 'val''s).

    The classes are the train file's categories in the file's order, with their names (any
    ids: the dataset maps them to labels); the val/test files must have the same. For a
    panoptic dataset (``CocoPanopticDataset``) the categories' ``isthing`` splits them into
    ``thing_classes`` (first) and ``stuff_classes``, and only the panoptic metric is kept
    (box and mask AP need an instances file beside the panoptic one).
    """
    new = copy.deepcopy(cfg.to_dict())
    # each file once: COCO's own train file takes about 20 s to parse
    per_file = {paths['ann']: read_coco_categories(osp.join(data_root, paths['ann']))
                for paths in files.values()}
    categories = per_file[files['train']['ann']]
    for split, paths in files.items():
        other = per_file[paths['ann']]
        if [(c['id'], c['name']) for c in other] != [(c['id'], c['name']) for c in categories]:
            raise ValueError(f'{split} annotations {paths["ann"]!r} have other categories than '
                             f'the train annotations {files["train"]["ann"]!r}: '
                             f'{[c["name"] for c in other]} vs {[c["name"] for c in categories]}')
    panoptic = _dataset_type(new) in PANOPTIC_DATASETS
    if panoptic:
        things = [c['name'] for c in categories if c.get('isthing', 1)]
        stuff = [c['name'] for c in categories if not c.get('isthing', 1)]
        classes = things + stuff
        metainfo = dict(classes=tuple(classes), thing_classes=tuple(things),
                        stuff_classes=tuple(stuff), palette=make_palette(len(classes)))
        counts = dict(num_classes=len(classes), num_things_classes=len(things),
                      num_stuff_classes=len(stuff))
    else:
        classes = [c['name'] for c in categories]
        metainfo = dict(classes=tuple(classes), palette=make_palette(len(classes)))
        counts = dict(num_classes=len(classes), num_things_classes=len(classes),
                      num_stuff_classes=0)
    for split, paths in files.items():
        prefixes = dict(ann_file=paths['ann'], img=paths['img'])
        if panoptic:
            if not paths.get('seg'):
                raise ValueError(f'a panoptic dataset needs the {split} split\'s PNG folder '
                                 f'(--{split}-seg)')
            prefixes['seg'] = paths['seg']
        _set_paths(new, split, data_root, prefixes, dict(metainfo=metainfo))
        if panoptic and isinstance(new.get(f'{split}_evaluator'), list):
            # mmdet's panoptic recipes add box and mask AP from COCO's instances file, which a
            # panoptic set of one's own need not have
            new[f'{split}_evaluator'] = [e for e in new[f'{split}_evaluator']
                                         if e.get('type') == 'CocoPanopticMetric']
        for evaluator in _evaluators(new, split):
            if 'ann_file' in evaluator:
                evaluator['ann_file'] = osp.join(data_root, paths['ann'])
            if panoptic and 'seg_prefix' in evaluator:
                evaluator['seg_prefix'] = osp.join(data_root, paths['seg'])
    if not set_num_classes(new['model'], counts):
        raise ValueError(f'{cfg.filename}: no num_classes in the model to set')
    return changes_between(cfg.to_dict(), new)


def _without_reduce_zero_label(node) -> None:
    """Leave ``reduce_zero_label`` to the datasets: mmseg's ``LoadAnnotations`` asserts that its
    own value, where given, equals the dataset's."""
    if isinstance(node, dict):
        if node.get('type') == 'LoadAnnotations':
            node.pop('reduce_zero_label', None)
        for value in node.values():
            _without_reduce_zero_label(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _without_reduce_zero_label(value)


def segmentation_dataset_changes(cfg: Config, data_root: str, files: Dict[str, dict],
                                 classes: Sequence[str], reduce_zero_label: bool = False,
                                 ignore_index: int = 255, img_suffix: str = '.jpg',
                                 seg_map_suffix: str = '.png') -> dict:
    """What to change in mmseg config ``cfg`` to train on a dataset in mmseg's layout: images
    and label maps of the same name (suffixes aside) in two folders per split.

    Args:
        cfg (Config): The recipe; not changed.
        data_root (str): The dataset's folder (the paths below are relative to it).
        files (dict): Per split, ``dict(img=IMAGE_FOLDER, ann=LABEL_MAP_FOLDER)``.
        classes (Sequence[str]): Class names; label value i is ``classes[i]``.
        reduce_zero_label (bool): The label maps hold 0 for "other" (ignored) and class i as
            i + 1, as ADE20K's do. Defaults to False.
        ignore_index (int): The label value that is not learned from. Defaults to 255.
        img_suffix, seg_map_suffix (str): The files' suffixes. Default '.jpg' and '.png'.

    Every dataset becomes a ``BaseSegDataset`` with these settings; the heads get
    ``num_classes`` (and ``ignore_index``, as do the evaluators and the label padding, when it
    is not 255).
    """
    classes = list(classes)
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f'classes must be two or more distinct names, got {classes}')
    if not isinstance(ignore_index, int) or not 0 <= ignore_index <= 255 or \
            ignore_index < len(classes):
        raise ValueError(f'ignore_index must be an int in [{len(classes)}, 255] (not a class '
                         f'label), got {ignore_index!r}')
    new = copy.deepcopy(cfg.to_dict())
    common = dict(type='BaseSegDataset', ann_file='', img_suffix=img_suffix,
                  seg_map_suffix=seg_map_suffix, reduce_zero_label=reduce_zero_label,
                  ignore_index=ignore_index,
                  metainfo=dict(classes=tuple(classes), palette=make_palette(len(classes))))
    for split, paths in files.items():
        _set_paths(new, split, data_root, dict(img_path=paths['img'], seg_map_path=paths['ann']),
                   common)
    _without_reduce_zero_label(new)
    if not set_num_classes(new['model'], dict(num_classes=len(classes),
                                              num_things_classes=len(classes),
                                              num_stuff_classes=0)):
        raise ValueError(f'{cfg.filename}: no num_classes in the model to set')
    if ignore_index != 255:
        model = new['model']
        for key in ('decode_head', 'auxiliary_head'):
            heads = model.get(key)
            for head in heads if isinstance(heads, list) else [heads] if heads else []:
                head['ignore_index'] = ignore_index
        if model.get('data_preprocessor') is not None:
            model['data_preprocessor']['seg_pad_val'] = ignore_index
        for split in ('val', 'test'):
            for evaluator in _evaluators(new, split):
                evaluator['ignore_index'] = ignore_index
    return changes_between(cfg.to_dict(), new)


def read_class_names(path: str) -> List[str]:
    """Class names from a text file, one per line (blank lines skipped)."""
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


__all__ = ['class_count_fields', 'detection_dataset_changes', 'make_palette', 'read_class_names',
           'read_coco_categories', 'segmentation_dataset_changes', 'set_num_classes']
