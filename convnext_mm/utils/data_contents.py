"""What a dataset's files hold, checked before the first iteration.

mmdet and mmseg read annotations lazily or skip what they cannot use: a category id missing
from the categories stops a run at its first epoch with a ``KeyError``, a box of zero size is
dropped without a word, and a label value at or above ``num_classes`` surfaces on a GPU as
``CUDA error: device-side assert triggered``, far from the file that holds it. Here each problem
is named with its file, value and count; fatal ones raise ``DataCheckError`` before the run
starts, the others are warnings.
"""
import json
import logging
import os
import os.path as osp
from concurrent.futures import ProcessPoolExecutor
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from .data_checks import leaf_datasets

EXAMPLES_SHOWN = 5
# A box may overhang its image by this much (pixels) before it counts as outside: annotation
# tools round coordinates.
BOX_TOLERANCE = 1.0


class DataCheckError(ValueError):
    """A dataset whose files would stop or silently corrupt training."""


class DataProblem(NamedTuple):
    fatal: bool
    what: str
    examples: List[str]


class DataReport:
    """The problems found in one dataset (``source`` names it in every line)."""

    def __init__(self, source: str):
        self.source = source
        self.problems: List[DataProblem] = []

    def add(self, fatal: bool, what: str, examples: Sequence[str]) -> None:
        if examples:
            self.problems.append(DataProblem(fatal, what, list(examples)))

    @property
    def fatal(self) -> List[DataProblem]:
        return [p for p in self.problems if p.fatal]

    def line(self, problem: DataProblem) -> str:
        shown = '; '.join(problem.examples[:EXAMPLES_SHOWN])
        more = f'; ... ({len(problem.examples) - EXAMPLES_SHOWN} more)' \
            if len(problem.examples) > EXAMPLES_SHOWN else ''
        return (f'{"error" if problem.fatal else "warning"}: {self.source}: '
                f'{len(problem.examples)} {problem.what}: {shown}{more}')

    def lines(self) -> List[str]:
        return [self.line(problem) for problem in self.problems]


def check_coco_annotations(ann_file: str, img_dir: str,
                           classes: Optional[Sequence[str]] = None) -> DataReport:
    """Check a COCO-format annotation file (instances or panoptic) against its images and the
    config's ``classes``."""
    report = DataReport(ann_file)
    with open(ann_file) as f:
        coco = json.load(f)
    categories = {c['id']: c['name'] for c in coco.get('categories', [])}
    if classes is not None:
        report.add(True, f'classes of the config that are no category of the file (its '
                   f'categories: {list(categories.values())})',
                   [repr(name) for name in classes if name not in categories.values()])
    images = {image['id']: image for image in coco.get('images', [])}
    report.add(True, f'images listed but missing from {img_dir!r}',
               [image['file_name'] for image in images.values()
                if not osp.isfile(osp.join(img_dir, image['file_name']))])

    unknown, orphans, degenerate, outside, used = [], [], [], [], set()
    for ann in coco.get('annotations', []):
        image = images.get(ann.get('image_id'))
        if image is None:
            orphans.append(f'annotation {ann.get("id")}: image_id {ann.get("image_id")}')
            continue
        name = image['file_name']
        # a panoptic annotation is one per image, its objects in segments_info
        for obj in ann.get('segments_info', [ann]):
            category = obj.get('category_id')
            where = f'{name}: annotation {obj.get("id")}'
            if category not in categories:
                unknown.append(f'{where}: category_id {category}')
                continue
            used.add(category)
            x, y, w, h = obj.get('bbox', (0, 0, 1, 1))
            if w <= 0 or h <= 0:
                degenerate.append(f'{where}: bbox {obj["bbox"]}')
            elif (x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or
                  x + w > image['width'] + BOX_TOLERANCE or
                  y + h > image['height'] + BOX_TOLERANCE):
                outside.append(f'{where}: bbox {obj["bbox"]} in a {image["width"]}x'
                               f'{image["height"]} image')
    report.add(True, f'annotations whose category_id is not among the categories '
               f'{sorted(categories)}', unknown)
    report.add(False, 'annotations of an image_id that is not among the images (not used)',
               orphans)
    report.add(False, 'boxes of zero or negative width or height (mmdet drops them)',
               degenerate)
    report.add(False, 'boxes reaching outside their image', outside)
    report.add(False, 'categories without any annotation',
               [f'{i} {n!r}' for i, n in categories.items() if i not in used])
    return report


def _label_values(seg_path: str):
    """The distinct values of a label map and its size (W, H); None for a multi-channel one."""
    from PIL import Image
    with Image.open(seg_path) as label_map:
        size, labels = label_map.size, np.asarray(label_map)
    if labels.ndim != 2:
        return None, size
    if labels.dtype == np.uint8:
        return np.flatnonzero(np.bincount(labels.ravel(), minlength=256)), size
    return np.unique(labels), size


def _check_pair(pair: Tuple[str, str]):
    """(problem kind, detail) of one image and its label map, or None."""
    from PIL import Image
    img_path, seg_path = pair
    if not osp.isfile(seg_path):
        return 'missing', None
    values, size = _label_values(seg_path)
    if values is None:
        return 'channels', None
    with Image.open(img_path) as image:  # reads the header only
        image_size = image.size
    if image_size != size:
        return 'size', (image_size, size)
    return 'values', values.tolist()


def _trained_label(value: int, reduce_zero_label: bool, label_map: Optional[dict]) -> int:
    """The label mmseg's LoadAnnotations makes of a label map's value: ``reduce_zero_label``
    first, then the dataset's ``label_map`` (a class subset of a dataset's own classes)."""
    if reduce_zero_label:
        value = 255 if value in (0, 255) else value - 1
    return (label_map or {}).get(value, value)


def check_label_maps(pairs: Sequence[Tuple[str, str]], num_classes: int, ignore_index: int = 255,
                     reduce_zero_label: bool = False, source: str = 'label maps',
                     workers: Optional[int] = None,
                     label_map: Optional[dict] = None) -> DataReport:
    """Check each (image, label map) pair: the label map exists, is single-channel, has the
    image's size, and holds only labels below ``num_classes`` or ``ignore_index`` (after
    ``reduce_zero_label`` and ``label_map``, as mmseg loads them). The maps are read in
    ``workers`` processes (default: one per core).
    """
    report = DataReport(source)
    workers = workers or os.cpu_count() or 1
    if workers > 1 and len(pairs) >= 64:
        with ProcessPoolExecutor(workers) as pool:
            chunk = max(1, len(pairs) // (8 * workers))
            results = list(pool.map(_check_pair, pairs, chunksize=chunk))
    else:
        results = [_check_pair(pair) for pair in pairs]
    missing, channels, sizes, values = [], [], [], []
    for (img_path, seg_path), (kind, detail) in zip(pairs, results):
        if kind == 'missing':
            missing.append(f'{seg_path} (for {img_path})')
        elif kind == 'channels':
            channels.append(seg_path)
        elif kind == 'size':
            sizes.append(f'{seg_path}: {detail[1][0]}x{detail[1][1]}, image '
                         f'{detail[0][0]}x{detail[0][1]}')
        else:
            labels = {v: _trained_label(v, reduce_zero_label, label_map) for v in detail}
            bad = [v for v, label in labels.items()
                   if label >= num_classes and label != ignore_index]
            if bad:
                values.append(f'{seg_path}: values {bad}')
    report.add(True, 'images without their label map', missing)
    report.add(True, 'label maps with several channels (a label map holds one class index per '
               'pixel; colour-coded maps must be converted)', channels)
    report.add(True, 'label maps whose size differs from their image', sizes)
    zero = ', 0 -> ignored, v -> v - 1 (reduce_zero_label)' if reduce_zero_label else ''
    report.add(True, f'label maps holding values that are no class (>= num_classes={num_classes}'
               f') and not the ignore index {ignore_index}{zero}', values)
    return report


def _config_classes(dataset) -> List[str]:
    return list(dataset.metainfo.get('classes') or [])


def _build_lazily(dataset_cfg: dict, scope: str):
    from mmengine.registry import DATASETS, init_default_scope
    init_default_scope(scope)
    return DATASETS.build(dict(dataset_cfg, lazy_init=True, pipeline=[]))


def check_dataset_contents(cfg, split: str, workers: Optional[int] = None) -> List[DataReport]:
    """Check what ``{split}_dataloader``'s datasets hold (COCO-format annotation files for
    mmdet, label maps for mmseg), logging every problem; raise ``DataCheckError`` listing the
    fatal ones. Datasets on remote storage are not checked."""
    from mmengine.logging import print_log
    loader = cfg.get(f'{split}_dataloader')
    if not loader or 'dataset' not in loader:
        return []
    scope = cfg.get('default_scope')
    reports = []
    for dataset_cfg, where in leaf_datasets(loader, f'{split}_dataloader'):
        if dataset_cfg.get('backend_args') or '://' in (dataset_cfg.get('data_root') or ''):
            continue
        dataset = _build_lazily(dataset_cfg, scope)
        if scope == 'mmdet' and str(getattr(dataset, 'ann_file', '')).endswith('.json'):
            reports.append(check_coco_annotations(dataset.ann_file,
                                                  dataset.data_prefix.get('img', ''),
                                                  _config_classes(dataset) or None))
        elif scope == 'mmseg':
            pairs = [(info['img_path'], info['seg_map_path'])
                     for info in dataset.load_data_list()]
            reports.append(check_label_maps(
                pairs, len(_config_classes(dataset)), dataset.ignore_index,
                dataset.reduce_zero_label, f'{where} ({dataset.data_prefix.get("seg_map_path")})',
                workers, dataset.metainfo.get('label_map')))
    errors = [report.line(problem) for report in reports for problem in report.fatal]
    for report in reports:
        for problem in report.problems:
            if not problem.fatal:
                print_log(report.line(problem), logger='current', level=logging.WARNING)
    if errors:
        raise DataCheckError(f'The {split} data has {len(errors)} problem(s) that would stop or '
                             f'corrupt training:\n' + '\n'.join(errors))
    return reports


def check_data(cfg, splits: Sequence[str] = ('train', 'val')) -> List[DataReport]:
    """What tools/train.py runs before training and ``tools/dataset_config.py --check`` after
    writing: the heads' class counts (``check_class_counts``), then each split's files
    (``check_dataset_contents``)."""
    check_class_counts(cfg)
    return [report for split in splits for report in check_dataset_contents(cfg, split)]


def check_class_counts(cfg) -> None:
    """Raise ``DataCheckError`` when a head's class count differs from the training set's
    classes (a head left at COCO's 80 trains without an error and misleads at evaluation)."""
    from ..dataset_config import class_count_fields
    loader = cfg.get('train_dataloader')
    if not loader or 'dataset' not in loader:
        return
    dataset_cfg, where = next(leaf_datasets(loader, 'train_dataloader'))
    metainfo = _build_lazily(dataset_cfg, cfg.get('default_scope')).metainfo
    classes = list(metainfo.get('classes') or [])
    if not classes:
        return
    things = metainfo.get('thing_classes')
    expected = dict(num_classes=len(classes),
                    num_things_classes=len(things) if things is not None else len(classes),
                    num_stuff_classes=len(metainfo.get('stuff_classes') or []))
    wrong = [f'{field}={node[key]}' for node, key, field in class_count_fields(cfg.model)
             if node[key] != expected[key]]
    if wrong:
        raise DataCheckError(
            f'The model does not have the training set\'s {len(classes)} classes '
            f'({where}.metainfo: {classes[:10]}{" ..." if len(classes) > 10 else ""}): '
            f'{", ".join(wrong)}; tools/dataset_config.py writes a config with them all set')
