"""Write a config that trains a recipe on your own dataset, and check the dataset.

    # detection, COCO format: the classes are the annotation file's categories
    python tools/dataset_config.py configs/cascade_convnext_t_coco.py --data-root data/mine \
        --train-ann annotations/train.json --train-img images/train \
        --val-ann annotations/val.json --val-img images/val --out configs/mine.py [--check]

    # segmentation, mmseg's layout: images and label maps of the same name in two folders
    python tools/dataset_config.py configs/upernet_convnext_t_ade20k.py --data-root data/mine \
        --classes road building sky --train-img img_dir/train --train-ann ann_dir/train \
        --val-img img_dir/val --val-ann ann_dir/val --out configs/mine.py [--check]

The written config inherits RECIPE and holds only what changes (convnext_mm.dataset_config):
the classes and a palette, every ``num_classes`` of the model, the data paths and the
evaluators' files; for segmentation also ``reduce_zero_label`` and the ignore index.
``--check`` then checks the files (convnext_mm.utils.data_contents), as tools/train.py does
before every run; it exits 1 when a problem would stop or corrupt training.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import Config  # noqa: E402

from convnext_mm.config_writer import resolve_config_path, write_inheriting_config  # noqa: E402
from convnext_mm.dataset_config import (detection_dataset_changes, read_class_names,  # noqa: E402
                                        segmentation_dataset_changes)
from convnext_mm.utils.data_contents import DataCheckError, check_data  # noqa: E402

# mmdet: annotation file, image folder; mmseg: label-map folder, image folder
DEFAULT_FILES = {
    'mmdet': dict(train=('annotations/instances_train.json', 'train/'),
                  val=('annotations/instances_val.json', 'val/')),
    'mmseg': dict(train=('ann_dir/train', 'img_dir/train'), val=('ann_dir/val', 'img_dir/val')),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Point a recipe at your own dataset')
    parser.add_argument('recipe', help='the config to inherit (a file, or mmdet::PATH)')
    parser.add_argument('--data-root', required=True, help='the dataset folder')
    parser.add_argument('--out', required=True, help='the config file to write')
    for split in ('train', 'val', 'test'):
        parser.add_argument(f'--{split}-ann', help=f'{split} annotation file (detection) or '
                            f'label-map folder (segmentation), relative to --data-root')
        parser.add_argument(f'--{split}-img', help=f'{split} image folder')
        parser.add_argument(f'--{split}-seg', help=f'{split} panoptic PNG folder')
    parser.add_argument('--classes', nargs='+', help='segmentation: the class names, label 0 '
                        'first')
    parser.add_argument('--classes-file', help='segmentation: a file of class names, one a line')
    parser.add_argument('--reduce-zero-label', action='store_true',
                        help='segmentation: label 0 is "other" (ignored), class i is i + 1')
    parser.add_argument('--ignore-index', type=int, default=255,
                        help='segmentation: the label value not learned from (default 255)')
    parser.add_argument('--img-suffix', default='.jpg', help='segmentation (default .jpg)')
    parser.add_argument('--seg-map-suffix', default='.png', help='segmentation (default .png)')
    parser.add_argument('--check', action='store_true',
                        help='check the written config\'s data (exit 1 on a fatal problem)')
    return parser.parse_args(argv)


def split_files(args, scope: str) -> dict:
    """Per split, the annotation (or label-map folder), image and panoptic folders given or
    defaulted; the test split is the val split's unless given."""
    files = {}
    for split in ('train', 'val', 'test'):
        ann, img = getattr(args, f'{split}_ann'), getattr(args, f'{split}_img')
        if split in DEFAULT_FILES[scope]:
            default_ann, default_img = DEFAULT_FILES[scope][split]
            ann, img = ann or default_ann, img or default_img
        elif not (ann or img):
            files[split] = dict(files['val'])
            continue
        if not (ann and img):
            raise ValueError(f'--{split}-ann and --{split}-img go together')
        files[split] = dict(ann=ann, img=img, seg=getattr(args, f'{split}_seg'))
    return files


def main(argv=None):
    args = parse_args(argv)
    cfg = Config.fromfile(resolve_config_path(args.recipe))
    scope = cfg.get('default_scope')
    if scope not in DEFAULT_FILES:
        raise ValueError(f"{args.recipe}: default_scope must be 'mmdet' or 'mmseg', got {scope!r}")
    if not osp.isdir(args.data_root):
        raise FileNotFoundError(f'--data-root: folder not found: {args.data_root!r}')
    files = split_files(args, scope)
    if scope == 'mmdet':
        if args.classes or args.classes_file:
            raise ValueError('detection takes its classes from the annotation file\'s '
                             'categories: leave out --classes/--classes-file')
        changes = detection_dataset_changes(cfg, args.data_root, files)
    else:
        if bool(args.classes) == bool(args.classes_file):
            raise ValueError('segmentation needs the class names: --classes A B ... or '
                             '--classes-file FILE (one of them)')
        classes = args.classes or read_class_names(args.classes_file)
        changes = segmentation_dataset_changes(
            cfg, args.data_root, files, classes, args.reduce_zero_label, args.ignore_index,
            args.img_suffix, args.seg_map_suffix)
    written = write_inheriting_config(args.recipe, args.out, changes)
    classes = written.train_dataloader.dataset.metainfo.classes
    print(f'{args.out}: {args.recipe} on {args.data_root} ({len(classes)} classes: '
          f'{", ".join(classes)})')
    if args.check:
        splits = ('train', 'val') + (('test', ) if files['test'] != files['val'] else ())
        try:
            for report in check_data(written, splits):
                print(f'{report.source}: {len(report.problems) or "no"} problem(s)')
        except DataCheckError as e:
            sys.exit(str(e))


if __name__ == '__main__':
    main()
