"""tools/dataset_config.py and the data checks of tools/train.py: a recipe pointed at a dataset
of one's own (every head's class count, paths, evaluators, the panoptic things/stuff split,
segmentation's label settings), and each kind of bad data named with its file, value and count
before a run starts. The toy runs through the tool are in test_detection.py and
test_segmentation.py."""
import json
import os
import os.path as osp
import shutil

import numpy as np
import pytest
from conftest import FIVE_CATEGORY_IDS, FIVE_CLASSES, ROOT, installed_config, load_tool
from mmengine.config import Config
from PIL import Image

from convnext_mm.config_writer import merged_config
from convnext_mm.dataset_config import (detection_dataset_changes, make_palette,
                                        segmentation_dataset_changes)
from convnext_mm.utils.data_contents import (DataCheckError, check_class_counts,
                                             check_coco_annotations, check_dataset_contents,
                                             check_label_maps)

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')

CONFIGS = osp.join(ROOT, 'configs')
DET_DEMO = osp.join(CONFIGS, 'demo', 'cascade_convnext_demo.py')
SEG_DEMO = osp.join(CONFIGS, 'demo', 'upernet_convnext_demo.py')
COCO_FILES = dict(train=dict(ann='annotations/instances_train.json', img='train/'),
                  val=dict(ann='annotations/instances_val.json', img='val/'))
COCO_FILES['test'] = COCO_FILES['val']


def test_detection_config_sets_every_head_path_and_evaluator(toy_coco_5, tmp_path):
    """The written config inherits the recipe and holds only the changes; its model and data
    have the file's five classes, the RPN stays class-agnostic."""
    out = tmp_path / 'mine.py'
    load_tool('dataset_config').main([osp.join(CONFIGS, 'cascade_convnext_t_coco.py'),
                                      '--data-root', toy_coco_5, '--out', str(out)])
    text = out.read_text()
    base = osp.relpath(osp.join(CONFIGS, 'cascade_convnext_t_coco.py'), tmp_path)
    assert text.startswith(f"_base_ = '{base}'")
    assert 'optim_wrapper' not in text and 'backbone' not in text  # only what changes
    cfg = Config.fromfile(str(out))
    heads = cfg.model.roi_head.bbox_head
    assert [h.num_classes for h in heads] + [cfg.model.roi_head.mask_head.num_classes] == [5] * 4
    recipe = Config.fromfile(osp.join(CONFIGS, 'cascade_convnext_t_coco.py'))
    assert cfg.model.rpn_head == recipe.model.rpn_head  # class-agnostic
    for split in ('train', 'val', 'test'):
        dataset = cfg[f'{split}_dataloader'].dataset
        assert dataset.metainfo.classes == FIVE_CLASSES
        assert dataset.metainfo.palette == make_palette(5)
        assert dataset.data_root == toy_coco_5
        assert dataset.ann_file == COCO_FILES[split]['ann']
        assert dataset.data_prefix.img == COCO_FILES[split]['img']
    assert cfg.val_evaluator.ann_file == cfg.test_evaluator.ann_file == \
        toy_coco_5 + 'annotations/instances_val.json'
    check_class_counts(cfg)  # consistent
    assert len(set(make_palette(20))) == 20


def test_detection_changes_resize_mask2formers_class_weights(toy_coco_5):
    """Mask2Former weighs each class in its classification loss (plus the no-object weight):
    the list follows the class count."""
    cfg = installed_config('mmdet', 'mask2former/mask2former_r50_8xb2-lsj-50e_coco.py')
    new = merged_config(cfg, detection_dataset_changes(cfg, toy_coco_5, COCO_FILES))
    head = new.model.panoptic_head
    assert (head.num_things_classes, head.num_stuff_classes) == (5, 0)
    assert head.loss_cls.class_weight == [1.0] * 5 + [0.1]
    assert new.model.panoptic_fusion_head.num_things_classes == 5
    check_class_counts(new)


def test_panoptic_categories_split_into_things_and_stuff(toy_coco_5, tmp_path):
    root = str(tmp_path) + '/'
    shutil.copytree(toy_coco_5 + 'annotations', root + 'annotations')
    for split in ('train', 'val'):
        path = f'{root}annotations/instances_{split}.json'
        with open(path) as f:
            coco = json.load(f)
        for category in coco['categories']:  # hexagon and square as stuff
            category['isthing'] = int(category['name'] not in ('square', 'hexagon'))
        with open(path, 'w') as f:
            json.dump(coco, f)
    cfg = Config.fromfile(osp.join(CONFIGS, 'mask2former_convnext_t_coco_panoptic.py'))
    files = {split: dict(paths, seg=f'panoptic_{split}/') for split, paths in COCO_FILES.items()}
    new = merged_config(cfg, detection_dataset_changes(cfg, root, files))
    metainfo = new.train_dataloader.dataset.metainfo
    assert metainfo.thing_classes == ('circle', 'triangle', 'pentagon')
    assert metainfo.stuff_classes == ('square', 'hexagon')
    assert metainfo.classes == metainfo.thing_classes + metainfo.stuff_classes  # things first
    head = new.model.panoptic_head
    assert (head.num_things_classes, head.num_stuff_classes) == (3, 2)
    assert head.loss_cls.class_weight == [1.0] * 5 + [0.1]
    assert new.val_dataloader.dataset.data_prefix.seg == 'panoptic_val/'
    assert new.val_evaluator == [dict(  # no instances file for box and mask AP
        type='CocoPanopticMetric', ann_file=root + 'annotations/instances_val.json',
        seg_prefix=root + 'panoptic_val/', backend_args=None, _scope_='mmdet')]
    check_class_counts(new)
    with pytest.raises(ValueError, match="needs the train split's PNG folder"):
        detection_dataset_changes(cfg, root, COCO_FILES)


def test_segmentation_config_sets_labels_heads_and_ignore_index(tmp_path):
    cfg = Config.fromfile(SEG_DEMO)
    files = dict(train=dict(img='img_dir/train', ann='ann_dir/train'),
                 val=dict(img='img_dir/val', ann='ann_dir/val'))
    files['test'] = files['val']
    changes = segmentation_dataset_changes(cfg, 'data/mine', files, ['a', 'b', 'c'],
                                           ignore_index=200, img_suffix='.png')
    new = merged_config(cfg, changes)
    for split in ('train', 'val', 'test'):
        dataset = new[f'{split}_dataloader'].dataset
        assert (dataset.type, dataset.data_root, dataset.img_suffix, dataset.reduce_zero_label,
                dataset.ignore_index) == ('BaseSegDataset', 'data/mine', '.png', False, 200)
        folder = 'val' if split == 'test' else split
        assert dataset.data_prefix == dict(img_path=f'img_dir/{folder}',
                                           seg_map_path=f'ann_dir/{folder}')
        assert dataset.metainfo.classes == ('a', 'b', 'c')
        loads = [t for t in dataset.pipeline if t.type == 'LoadAnnotations']
        assert loads and all('reduce_zero_label' not in t for t in loads)  # the dataset's value
    heads = (new.model.decode_head, new.model.auxiliary_head)
    assert [(h.num_classes, h.ignore_index) for h in heads] == [(3, 200)] * 2
    assert new.model.data_preprocessor.seg_pad_val == 200
    assert new.val_evaluator.ignore_index == new.test_evaluator.ignore_index == 200
    check_class_counts(new)
    with pytest.raises(ValueError, match=r'ignore_index must be an int in \[3, 255\].*got 1'):
        segmentation_dataset_changes(cfg, 'data/mine', files, ['a', 'b', 'c'], ignore_index=1)
    with pytest.raises(ValueError, match='two or more distinct names'):
        segmentation_dataset_changes(cfg, 'data/mine', files, ['a', 'a'])


def test_a_head_left_at_80_classes_stops_training(toy_coco_5, tmp_path):
    out = tmp_path / 'mine.py'
    load_tool('dataset_config').main([DET_DEMO, '--data-root', toy_coco_5, '--out', str(out)])
    with open(out, 'a') as f:  # one cascade stage set back by hand
        f.write("model['roi_head']['bbox_head'][1]['num_classes'] = 80\n")
    train = load_tool('train')
    with pytest.raises(DataCheckError, match=r"The model does not have the training set's 5 "
                       r"classes .*model.roi_head.bbox_head\[1\].num_classes=80;"):
        train.build_config(train.parse_args([str(out)]))


def coco_copy(toy_coco_5, tmp_path):
    root = str(tmp_path / 'coco') + '/'
    shutil.copytree(toy_coco_5, root)
    path = root + 'annotations/instances_train.json'
    with open(path) as f:
        return root, path, json.load(f)


def rewrite(path, coco):
    with open(path, 'w') as f:
        json.dump(coco, f)


def test_coco_problems_are_named_with_file_value_and_count(toy_coco_5, tmp_path):
    root, path, coco = coco_copy(toy_coco_5, tmp_path)
    assert check_coco_annotations(path, root + 'train').problems == []  # the toy set is clean
    anns = coco['annotations']
    anns[0]['category_id'] = 7
    anns[1]['category_id'] = 7
    anns[2]['bbox'][2] = 0
    anns[3]['bbox'][0] = 120  # 128-pixel images
    os.remove(root + 'train/000004.png')
    hexagon = FIVE_CATEGORY_IDS[4]
    coco['annotations'] = [a for a in anns if a['category_id'] != hexagon]
    rewrite(path, coco)
    report = check_coco_annotations(path, root + 'train', FIVE_CLASSES + ('star', ))
    lines = report.lines()
    assert len(report.fatal) == 3 and len(lines) == 6, lines
    first, second = (f"{anns[i]['image_id'] - 1:06d}.png: annotation {anns[i]['id']}"
                     for i in (0, 1))
    assert (f"error: {path}: 2 annotations whose category_id is not among the categories "
            f"[2, 5, 9, 11, 20]: {first}: category_id 7; {second}: category_id 7") in lines
    assert f"error: {path}: 1 images listed but missing from '{root}train': 000004.png" in lines
    assert f"error: {path}: 1 classes of the config that are no category of the file" in \
        lines[0] and lines[0].endswith(": 'star'")
    assert any(line.startswith(f'warning: {path}: 1 boxes of zero or negative width or height')
               and 'bbox [' in line for line in lines)
    assert any(line.startswith(f'warning: {path}: 1 boxes reaching outside their image') and
               'in a 128x128 image' in line for line in lines)
    assert f"warning: {path}: 1 categories without any annotation: 20 'hexagon'" in lines


def test_train_stops_before_the_first_iteration_on_fatal_data(toy_coco_5, tmp_path):
    """tools/train.py checks the data where the config points: a category id the file does
    not define stops it before the runner is built; warnings alone let it go on."""
    root, path, coco = coco_copy(toy_coco_5, tmp_path)
    out = tmp_path / 'mine.py'
    load_tool('dataset_config').main([DET_DEMO, '--data-root', root, '--out', str(out)])
    coco['annotations'][0]['bbox'][3] = -1  # a warning
    rewrite(path, coco)
    train = load_tool('train')
    train.build_config(train.parse_args([str(out)]))
    coco['annotations'][5]['category_id'] = 99
    rewrite(path, coco)
    with pytest.raises(DataCheckError, match=r'The train data has 1 problem\(s\) that would stop '
                       r'or corrupt training:\nerror: .*instances_train.json: 1 annotations whose'
                       r' category_id is not among .*: category_id 99'):
        train.build_config(train.parse_args([str(out)]))
    train.build_config(train.parse_args([str(out), '--no-data-check']))


def label_maps(folder, count=3, size=(20, 30)):
    """``count`` images in ``folder`` with label maps of classes 0-2 and 255 (ignored)."""
    os.makedirs(folder, exist_ok=True)
    pairs = []
    for i in range(count):
        image, labels = folder / f'{i}.jpg', folder / f'{i}.png'
        Image.fromarray(np.zeros(size + (3, ), np.uint8)).save(image)
        values = np.arange(size[0] * size[1]).reshape(size) % 4
        Image.fromarray(np.where(values == 3, 255, values).astype(np.uint8)).save(labels)
        pairs.append((str(image), str(labels)))
    return pairs


def test_label_map_problems_are_named_with_file_value_and_count(tmp_path):
    pairs = label_maps(tmp_path, 6)
    assert check_label_maps(pairs, 3).problems == []
    Image.fromarray(np.full((20, 30), 7, np.uint8)).save(pairs[0][1])  # no class
    Image.fromarray(np.zeros((20, 31), np.uint8)).save(pairs[1][1])  # another size
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(pairs[2][1])  # colour-coded
    os.remove(pairs[3][1])
    lines = check_label_maps(pairs, 3, source='ann_dir/train').lines()
    assert lines == [
        f'error: ann_dir/train: 1 images without their label map: {pairs[3][1]} (for '
        f'{pairs[3][0]})',
        'error: ann_dir/train: 1 label maps with several channels (a label map holds one class '
        f'index per pixel; colour-coded maps must be converted): {pairs[2][1]}',
        f'error: ann_dir/train: 1 label maps whose size differs from their image: {pairs[1][1]}: '
        '31x20, image 30x20',
        'error: ann_dir/train: 1 label maps holding values that are no class (>= num_classes=3) '
        f'and not the ignore index 255: {pairs[0][1]}: values [7]']
    # with reduce_zero_label, 0 is ignored and 1-3 are the classes: the clean maps' 0-2 are
    # fine, 255 is ignored too; 4 would be class 3 of 3
    pairs = label_maps(tmp_path / 'zero', 1)
    assert check_label_maps(pairs, 3, reduce_zero_label=True).problems == []
    Image.fromarray(np.full((20, 30), 3, np.uint8)).save(pairs[0][1])  # class 2 of 3
    assert check_label_maps(pairs, 3, reduce_zero_label=True).problems == []
    assert 'values [3]' in check_label_maps(pairs, 3).lines()[0]
    Image.fromarray(np.full((20, 30), 4, np.uint8)).save(pairs[0][1])
    assert 'values [4]' in check_label_maps(pairs, 3, reduce_zero_label=True).lines()[0]
    # a class subset of a dataset's own classes (the demo's 5 of ADE20K's 150): mmseg maps
    # the kept classes to 0.. and the others to 255, after reduce_zero_label
    subset = {0: 255, 1: 255, 2: 255, 3: 0, 4: 1}
    assert check_label_maps(pairs, 2, reduce_zero_label=True, label_map=subset).problems == []
    Image.fromarray(np.full((20, 30), 6, np.uint8)).save(pairs[0][1])  # 5: not in the map
    assert 'values [6]' in check_label_maps(pairs, 2, reduce_zero_label=True,
                                            label_map=subset).lines()[0]


def test_label_map_scan_in_several_processes_finds_the_same(tmp_path):
    pairs = label_maps(tmp_path, 70, size=(8, 8))
    Image.fromarray(np.full((8, 8), 9, np.uint8)).save(pairs[65][1])
    serial = check_label_maps(pairs, 3, workers=1).lines()
    assert check_label_maps(pairs, 3, workers=2).lines() == serial and \
        serial[0].endswith(f'{pairs[65][1]}: values [9]')


def test_dataset_tool_check_exits_1_naming_the_bad_label_map(tmp_path):
    root = tmp_path / 'seg'
    for split in ('train', 'val'):
        os.makedirs(root / 'img_dir' / split)
        os.makedirs(root / 'ann_dir' / split)
        for image, labels in label_maps(tmp_path / split, 2):
            shutil.copy(image, root / 'img_dir' / split)
            shutil.copy(labels, root / 'ann_dir' / split)
    Image.fromarray(np.full((20, 30), 5, np.uint8)).save(root / 'ann_dir' / 'val' / '1.png')
    out = tmp_path / 'mine.py'
    (tmp_path / 'classes.txt').write_text('a\nb\n\nc\n')
    tool = load_tool('dataset_config')
    with pytest.raises(SystemExit, match=r'The val data has 1 problem\(s\) .*\nerror: '
                       r'val_dataloader.dataset \(.*ann_dir/val\): 1 label maps holding values '
                       r'that '
                       r'are no class \(>= num_classes=3\) and not the ignore index 255: '
                       r'.*ann_dir/val/1.png: values \[5\]'):
        tool.main([SEG_DEMO, '--data-root', str(root), '--out', str(out), '--classes-file',
                   str(tmp_path / 'classes.txt'), '--check'])
    cfg = Config.fromfile(str(out))  # written before the check
    assert cfg.train_dataloader.dataset.metainfo.classes == ('a', 'b', 'c')
    with pytest.raises(DataCheckError):
        check_dataset_contents(cfg, 'val')
