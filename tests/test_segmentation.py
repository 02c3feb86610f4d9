"""ADE20K recipes: every config's values, the full segmentor, and the tools end to end on toy data."""
import glob
import json
import os
import os.path as osp
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import (NO_VALIDATION, ROOT, assert_logged_lr, assert_v1_recipe_with_v2_block,
                      assert_v2_backbone_is_timms, cfg_options, count_parameters,
                      installed_config, load_tool, without_scope)
from conftest import run_tool as run
from mmengine.config import Config
from PIL import Image

from convnext_mm.checkpoint import load_checkpoint_file

pytest.importorskip('mmseg')

CONFIGS = osp.join(ROOT, 'configs')
DEMO = osp.join(CONFIGS, 'demo', 'upernet_convnext_demo.py')
M2F_DEMO = osp.join(CONFIGS, 'demo', 'mask2former_convnext_demo.py')
URL = 'https://dl.fbaipublicfiles.com/convnext/'

# config: arch, stage-0 channels, pretrained file, crop, lr, num_layers, drop path, AMP
RECIPES = {
    'upernet_convnext_t_ade20k': ('tiny', 96, 'convnext_tiny_1k_224.pth', 512, 1e-4, 6, 0.4, True),
    'upernet_convnext_s_ade20k': ('small', 96, 'convnext_small_1k_224.pth', 512, 1e-4, 12, 0.3, True),
    'upernet_convnext_b_ade20k': ('base', 128, 'convnext_base_1k_224.pth', 512, 1e-4, 12, 0.4, True),
    'upernet_convnext_b_in22k_ade20k_640':
    ('base', 128, 'convnext_base_22k_224.pth', 640, 1e-4, 12, 0.4, True),
    'upernet_convnext_l_in22k_ade20k_640':
    ('large', 192, 'convnext_large_22k_224.pth', 640, 1e-4, 12, 0.4, False),
    'upernet_convnext_xl_in22k_ade20k_640':
    ('xlarge', 256, 'convnext_xlarge_22k_224.pth', 640, 8e-5, 12, 0.4, False),
}


def load(name):
    return Config.fromfile(osp.join(CONFIGS, f'{name}.py'))


@pytest.mark.parametrize('name', sorted(RECIPES))
def test_recipe_values(name):
    arch, c0, weights, crop, lr, layers, drop_path, amp = RECIPES[name]
    cfg = load(name)
    assert cfg.default_scope == 'mmseg' and cfg.custom_imports.imports == ['convnext_mm']
    model = cfg.model
    assert model.type == 'EncoderDecoder'
    backbone = model.backbone
    assert (backbone.type, backbone.arch, backbone.drop_path_rate) == ('ConvNeXt', arch, drop_path)
    assert backbone.init_cfg == dict(type='Pretrained', checkpoint=URL + weights)
    assert backbone.out_indices == (0, 1, 2, 3)
    head = model.decode_head
    assert head.type == 'UPerHead' and head.in_channels == [c0, 2 * c0, 4 * c0, 8 * c0]
    assert (head.channels, head.pool_scales, head.num_classes) == (512, (1, 2, 3, 6), 150)
    assert head.norm_cfg.type == 'SyncBN'
    aux = model.auxiliary_head
    assert (aux.type, aux.in_index, aux.in_channels, aux.num_classes) == ('FCNHead', 2, 4 * c0, 150)
    assert aux.loss_decode.loss_weight == 0.4
    stride = 341 if crop == 512 else 426
    assert model.test_cfg == dict(mode='slide', crop_size=(crop, crop), stride=(stride, stride))
    assert model.data_preprocessor.size == (crop, crop)
    pipeline = cfg.train_dataloader.dataset.pipeline
    assert pipeline[1] == dict(type='LoadAnnotations', reduce_zero_label=True)
    assert pipeline[3].type == 'RandomCrop' and pipeline[3].crop_size == (crop, crop)
    assert cfg.train_dataloader.dataset.type == 'ADE20KDataset'
    assert cfg.train_dataloader.batch_size == 2 and cfg.auto_scale_lr.base_batch_size == 16

    wrapper = cfg.optim_wrapper
    assert wrapper.type == ('AmpOptimWrapper' if amp else 'OptimWrapper')
    assert 'loss_scale' not in wrapper  # AmpOptimWrapper's default is dynamic
    assert wrapper.constructor == 'ConvNeXtLayerDecayOptimizerConstructor'
    assert wrapper.paramwise_cfg == dict(decay_rate=0.9, decay_type='stage_wise',
                                         num_layers=layers)
    assert wrapper.optimizer == dict(type='AdamW', lr=lr, betas=(0.9, 0.999), weight_decay=0.05)
    assert (cfg.train_cfg.type, cfg.train_cfg.max_iters) == ('IterBasedTrainLoop', 160000)
    warmup, poly = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.end, warmup.by_epoch) == \
        ('LinearLR', 1e-6, 1500, False)
    assert (poly.type, poly.power, poly.eta_min, poly.begin, poly.end) == \
        ('PolyLR', 1.0, 0.0, 1500, 160000)
    assert cfg.tta_model.type == 'SegTTAModel'


def test_mask2former_recipe_is_mmsegs_with_convnext_t(seg_scope):
    """mmseg's Mask2Former ADE20K recipe with ConvNeXt-T swapped in (use_convnext: channels,
    drop path 0.3 as its Swin-T recipe) and stage-wise decay 0.9 / 6 on top of its own
    paramwise_cfg; the head is as large as in mmseg's Swin-T recipe (same channels)."""
    from mmseg.registry import MODELS

    from convnext_mm import use_convnext
    cfg = load('mask2former_convnext_t_ade20k')
    r50 = installed_config('mmseg', 'mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py')
    expected = use_convnext(r50, 'tiny', checkpoint=URL + 'convnext_tiny_1k_224.pth',
                            drop_path_rate=0.3, layer_decay=dict(
                                decay_rate=0.9, decay_type='stage_wise', num_layers=6))
    assert without_scope(cfg.model.to_dict()) == without_scope(expected.model.to_dict())
    assert without_scope(cfg.optim_wrapper.to_dict()) == \
        without_scope(expected.optim_wrapper.to_dict())
    assert cfg.custom_imports.imports == expected.custom_imports.imports == \
        ['mmdet.models', 'convnext_mm']
    wrapper = cfg.optim_wrapper
    assert wrapper.paramwise_cfg.custom_keys['backbone'] == dict(lr_mult=0.1, decay_mult=1.0)
    assert wrapper.paramwise_cfg.norm_decay_mult == 0.0 and wrapper.clip_grad.max_norm == 0.01
    assert (cfg.train_cfg.max_iters, cfg.train_dataloader.batch_size) == (160000, 2)
    assert {'type': 'LayerDecayLrLogHook'} in cfg.custom_hooks
    swin = installed_config('mmseg', 'mask2former/mask2former_swin-t_8xb2-160k_ade20k-512x512.py')
    with torch.device('meta'):
        ours, theirs = MODELS.build(cfg.model.decode_head), MODELS.build(swin.model.decode_head)
        backbone = MODELS.build(cfg.model.backbone)
    assert count_parameters(ours) == count_parameters(theirs)
    assert round(count_parameters(backbone) / 1e6, 1) == 27.8


def test_mask2former_trains_and_tests_on_toy_data(toy_ade20k, tmp_path):
    work = str(tmp_path / 'work')
    short = cfg_options(toy_ade20k, **{'train_cfg.max_iters': 4, **NO_VALIDATION,
                                        'default_hooks.checkpoint.interval': 4})
    log = run(['tools/train.py', M2F_DEMO, '--work-dir', work] + short)
    assert 'Iter(train) [4/4]' in log and re.search(r'decode.d2.loss_dice: \d', log)
    assert_logged_lr(work, 0.9**7 * 0.1)  # stage_wise 0.9 / 6, and the backbone's lr_mult
    log = run(['tools/test.py', M2F_DEMO, osp.join(work, 'iter_4.pth'), '--work-dir', work] +
              short)
    assert re.search(r'mIoU: \d', log) and re.search(r'\|\s+signboard\s+\|', log)


@pytest.fixture(scope='module')
def seg_scope():
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    import convnext_mm  # noqa: F401


@pytest.mark.parametrize('name,params', [('upernet_convnext_t_ade20k', 60e6),
                                         ('upernet_convnext_xl_in22k_ade20k_640', 391e6)])
def test_models_build_with_published_sizes(seg_scope, name, params):
    from mmseg.registry import MODELS
    with torch.device('meta'):
        model = MODELS.build(load(name).model)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - params) / params < 0.02, count


@pytest.mark.parametrize('size,arch', [('t', 'tiny'), ('b', 'base')])
def test_v2_recipes_are_the_v1_recipes_with_the_v2_block(seg_scope, size, arch):
    """UperNet V2-T/B: the V1 recipe of the same size with the V2 block and FCMAE weights; the
    backbone is timm's convnextv2 of that size (by parameter count)."""
    from mmseg.registry import MODELS
    v2 = load(f'upernet_convnext_v2_{size}_fcmae_ade20k')
    with torch.device('meta'):
        assert_v2_backbone_is_timms(MODELS.build(v2.model.backbone), arch)
    assert_v1_recipe_with_v2_block(v2, load(f'upernet_convnext_{size}_ade20k'), arch)


def build(cfg_model):
    from mmseg.registry import MODELS
    cfg_model.backbone.init_cfg = None
    model = MODELS.build(cfg_model)
    model.init_weights()
    return model


def test_upernet_tiny_forward_backward(seg_scope):
    """The T recipe's UperNet (both heads) trains on a batch of two 128x128 crops (the data
    preprocessor pads to the crop size it is given)."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    cfg = load('upernet_convnext_t_ade20k').model
    assert cfg.data_preprocessor.size == (512, 512)  # the recipe's crop
    cfg.data_preprocessor.size = (128, 128)
    model = build(cfg)
    model.train()
    samples = []
    for _ in range(2):  # the pyramid pooling's 1x1 BN needs more than one image
        sample = SegDataSample(gt_sem_seg=PixelData(data=torch.randint(0, 150, (1, 128, 128))))
        sample.set_metainfo(dict(img_shape=(128, 128), pad_shape=(128, 128),
                                 ori_shape=(128, 128)))
        samples.append(sample)
    images = [torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8) for _ in range(2)]
    data = model.data_preprocessor(dict(inputs=images, data_samples=samples), training=True)
    losses = model.loss(data['inputs'], data['data_samples'])
    total, log_vars = model.parse_losses(losses)
    assert torch.isfinite(total)
    assert {'decode.loss_ce', 'aux.loss_ce'} <= set(log_vars)
    total.backward()
    assert model.backbone.stages[0][0].dwconv.weight.grad.abs().sum() > 0
    assert model.auxiliary_head.conv_seg.weight.grad.abs().sum() > 0


def test_slide_inference_returns_a_full_size_map_for_a_non_square_image(seg_scope):
    cfg = load('upernet_convnext_t_ade20k').model
    cfg.test_cfg = dict(mode='slide', crop_size=(128, 128), stride=(85, 85))
    cfg.data_preprocessor.size = (128, 128)
    model = build(cfg).eval()
    windows = []
    model.backbone.register_forward_hook(lambda m, args, out: windows.append(args[0].shape))
    height, width = 150, 230
    sample_meta = [dict(img_shape=(height, width), ori_shape=(height, width),
                        pad_shape=(height, width), padding_size=[0, 0, 0, 0])]
    with torch.no_grad():
        logits = model.inference(torch.randn(1, 3, height, width), sample_meta)
    assert logits.shape == (1, 150, height, width)
    # ceil((150 - 128) / 85) + 1 = 2 rows, ceil((230 - 128) / 85) + 1 = 3 columns of windows
    assert len(windows) == 6 and all(shape[-2:] == (128, 128) for shape in windows)


@pytest.fixture(scope='session')
def toy_ade20k(tmp_path_factory):
    out = tmp_path_factory.mktemp('toy_ade20k')
    subprocess.run([sys.executable, 'tools/make_toy_data.py', '--dataset', 'ade20k', '--out',
                    str(out), '--num-train', '8', '--num-val', '3', '--size', '96', '128'],
                   cwd=ROOT, check=True)
    return str(out) + '/'


def test_toy_ade20k_layout_and_labels(toy_ade20k):
    from mmseg.datasets import ADE20KDataset
    images = sorted(glob.glob(toy_ade20k + 'images/validation/*.jpg'))
    labels = sorted(glob.glob(toy_ade20k + 'annotations/validation/*.png'))
    assert [osp.basename(p) for p in images] == [f'ADE_val_{i:08d}.jpg' for i in (1, 2, 3)]
    assert [osp.splitext(osp.basename(p))[0] for p in labels] == \
        [osp.splitext(osp.basename(p))[0] for p in images]
    values = set()
    for path in labels:
        label = np.asarray(Image.open(path))
        assert label.shape == (96, 128) and label.dtype == np.uint8
        values |= set(np.unique(label).tolist())
    # ADE20K ids (index + 1) of the toy classes, and 0 ("other") on object outlines.
    ade_ids = {ADE20KDataset.METAINFO['classes'].index(c) + 1
               for c in ('sky', 'grass', 'box', 'signboard', 'ball')}
    assert 0 in values and values - {0} <= ade_ids and {3, 10} <= values


# The toy ADE20K data in mmseg's layout for a dataset of one's own (img_dir/, ann_dir/) with
# four classes: label map value -> class index, everything else ignored (255).
FOUR_CLASSES = ('sky', 'grass', 'ball', 'box')
ADE20K_TO_FOUR = {3: 0, 10: 1, 120: 2, 42: 3}


# Run before tools/test.py --tta: records (scale, flip) of every image the segmentor is given.
COUNT_SEGMENTOR_VIEWS = """
import atexit, json
from mmseg.models.segmentors import EncoderDecoder
views, test_step = [], EncoderDecoder.test_step
def counted(self, data):
    views.extend([round(float(s.scale_factor[0]), 2), bool(s.flip)] for s in data['data_samples'])
    return test_step(self, data)
EncoderDecoder.test_step = counted
atexit.register(lambda: print('segmentor views:', json.dumps(views)))
"""


@pytest.fixture(scope='session')
def toy_seg_4(toy_ade20k, tmp_path_factory):
    out = tmp_path_factory.mktemp('toy_seg_4')
    for split, folder in (('train', 'training'), ('val', 'validation')):
        os.makedirs(out / 'img_dir' / split)
        os.makedirs(out / 'ann_dir' / split)
        for path in glob.glob(f'{toy_ade20k}images/{folder}/*.jpg'):
            name = osp.splitext(osp.basename(path))[0]
            os.symlink(path, out / 'img_dir' / split / f'{name}.jpg')
            ade = np.asarray(Image.open(f'{toy_ade20k}annotations/{folder}/{name}.png'))
            labels = np.full_like(ade, 255)
            for value, index in ADE20K_TO_FOUR.items():
                labels[ade == value] = index
            Image.fromarray(labels).save(out / 'ann_dir' / split / f'{name}.png')
    return str(out) + '/'


def test_own_dataset_trains_tests_tta_infers_and_resumes(toy_seg_4, tmp_path):
    """A four-class dataset in mmseg's layout (labels 0-3, 255 ignored) through
    tools/dataset_config.py from the demo UperNet, trained with the ConvNeXt V2 block (the V1
    block trains in the two-process test)."""
    config = str(tmp_path / 'upernet_on_my_data.py')
    load_tool('dataset_config').main([DEMO, '--data-root', toy_seg_4, '--out', config,
                                      '--classes'] + list(FOUR_CLASSES) + ['--check'])
    work = str(tmp_path / 'work')
    v2 = {'model.backbone.use_grn': True}
    short = cfg_options(toy_seg_4, **{'train_cfg.max_iters': 4, **NO_VALIDATION,
                                       'default_hooks.checkpoint.interval': 2, **v2})
    log = run(['tools/train.py', config, '--work-dir', work] + short)
    assert 'Iter(train) [4/4]' in log
    weights = load_checkpoint_file(osp.join(work, 'iter_4.pth'))['state_dict']
    assert weights['backbone.stages.2.5.grn.gamma'].abs().sum() > 0  # trained GRN
    assert weights['decode_head.conv_seg.weight'].shape[0] == 4
    assert weights['auxiliary_head.conv_seg.weight'].shape[0] == 4
    assert_logged_lr(work, 0.9**7)  # stage_wise 0.9 over 6 layers: the stem's scale

    log = run(['tools/test.py', config, osp.join(work, 'iter_4.pth'), '--work-dir', work,
               '--out', str(tmp_path / 'preds.pkl'), '--show-dir', 'vis'] + short)
    assert re.search(r'mIoU: \d', log)
    assert [row for row in re.findall(r'^\|\s+(\w+)\s+\|\s+[\d.na]+\s+\|', log, re.M)
            if row in FOUR_CLASSES + ('signboard', )] == list(FOUR_CLASSES)
    assert osp.getsize(tmp_path / 'preds.pkl') > 0
    assert len(glob.glob(osp.join(work, 'vis', 'vis_data', 'vis_image', '*.png'))) == 3

    # the config as trained (the --tta run below rewrites the work dir's copy)
    check_infer_tool(osp.join(work, 'upernet_on_my_data.py'), osp.join(work, 'iter_4.pth'),
                     toy_seg_4 + 'img_dir/val/', tmp_path)

    log = run(['tools/test.py', config, osp.join(work, 'iter_4.pth'), '--work-dir', work,
               '--tta'] + short, setup=COUNT_SEGMENTOR_VIEWS)
    assert re.search(r'mIoU: \d', log)
    views = json.loads(re.search(r'segmentor views: (\[.*\])', log)[1])
    # each of the 3 val images at the 6 scales of the recipe's tta_pipeline, flipped and not
    assert len(views) == 3 * 6 * 2
    assert sorted(set(map(tuple, views))) == [(scale, flip) for scale in (
        0.5, 0.75, 1.0, 1.25, 1.5, 1.75) for flip in (False, True)]

    longer = cfg_options(toy_seg_4, **{'train_cfg.max_iters': 6, **NO_VALIDATION,
                                        'default_hooks.checkpoint.interval': 2, **v2})
    log = run(['tools/train.py', config, '--work-dir', work, '--resume'] + longer)
    assert re.search(r'resumed epoch: 0, iter: 4', log)
    assert 'Iter(train) [6/6]' in log and 'Iter(train) [4/6]' not in log
    assert osp.isfile(osp.join(work, 'iter_6.pth'))


def check_infer_tool(config, checkpoint, val_images, tmp_path):
    """tools/infer.py on a glob and a folder holding a broken file: per good image the
    picture (the image beside the colour-coded prediction), the label map equal to mmseg's
    inference_model, and its pixel counts per class as JSON; the broken file named after."""
    from mmseg.apis import inference_model, init_model
    folder = tmp_path / 'pictures'
    folder.mkdir()
    (folder / 'broken.jpg').write_bytes(b'not a picture')
    out = tmp_path / 'infer'
    log = run(['tools/infer.py', config, checkpoint, val_images + '*0[12].jpg',
               str(folder), '--out-dir', str(out)], returncode=1)
    assert re.search(r'1 input\(s\) skipped:\n  \S+broken.jpg: not a readable image\n', log)
    segmentor = init_model(config, checkpoint, device='cpu')
    classes = segmentor.dataset_meta['classes']
    assert classes == FOUR_CLASSES
    assert sorted(os.listdir(out / 'vis')) == ['ADE_val_00000001.jpg', 'ADE_val_00000002.jpg']
    for name in ('ADE_val_00000001', 'ADE_val_00000002'):
        image = f'{val_images}{name}.jpg'
        want = inference_model(segmentor, image).pred_sem_seg.data[0].numpy()
        label_map = np.asarray(Image.open(out / 'preds' / f'{name}.png'))
        np.testing.assert_array_equal(label_map, want)
        assert np.asarray(Image.open(out / 'vis' / f'{name}.jpg')).shape == (96, 2 * 128, 3)
        with open(out / 'preds' / f'{name}.json') as f:
            got = json.load(f)
        labels, counts = np.unique(want, return_counts=True)
        assert got == dict(image=image, height=96, width=128, pixels_per_class={
            classes[i]: int(n) for i, n in zip(labels, counts)})
