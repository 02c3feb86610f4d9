"""COCO recipes: every config's values, the full detector, and the tools end to end on toy data."""
import glob
import json
import os
import os.path as osp
import re

import pytest
import torch
from conftest import (FIVE_CLASSES, NO_VALIDATION, ROOT, assert_logged_lr,
                      assert_v1_recipe_with_v2_block, assert_v2_backbone_is_timms,
                      count_parameters, installed_config, load_tool, randomize_,
                      without_scope)
from conftest import run_tool as run
from mmengine.config import Config

from convnext_mm.checkpoint import load_checkpoint_file
from convnext_mm.models import ConvNeXt

pytest.importorskip('mmdet')

CONFIGS = osp.join(ROOT, 'configs')
DEMO = osp.join(CONFIGS, 'demo', 'cascade_convnext_demo.py')
URL = 'https://dl.fbaipublicfiles.com/convnext/'

# config: arch, channels, pretrained file, lr, decay rate, num_layers, drop path, AMP, detector
RECIPES = {
    'cascade_convnext_t_coco': ('tiny', 96, 'convnext_tiny_1k_224.pth', 2e-4, 0.7, 6, 0.4, True),
    'cascade_convnext_s_coco': ('small', 96, 'convnext_small_1k_224.pth', 2e-4, 0.7, 12, 0.6, True),
    'cascade_convnext_b_coco': ('base', 128, 'convnext_base_1k_224.pth', 2e-4, 0.8, 12, 0.7, True),
    'cascade_convnext_b_in22k_coco':
    ('base', 128, 'convnext_base_22k_224.pth', 1e-4, 0.8, 12, 0.6, True),
    'cascade_convnext_l_in22k_coco':
    ('large', 192, 'convnext_large_22k_224.pth', 1e-4, 0.7, 12, 0.7, False),
    'cascade_convnext_xl_in22k_coco':
    ('xlarge', 256, 'convnext_xlarge_22k_224.pth', 1e-4, 0.7, 12, 0.8, False),
    'mask_rcnn_convnext_t_coco': ('tiny', 96, 'convnext_tiny_1k_224.pth', 1e-4, 0.95, 6, 0.4, True),
}


def load(name):
    return Config.fromfile(osp.join(CONFIGS, f'{name}.py'))


@pytest.mark.parametrize('name', sorted(RECIPES))
def test_recipe_values(name):
    arch, c0, weights, lr, decay, layers, drop_path, amp = RECIPES[name]
    cfg = load(name)
    backbone = cfg.model.backbone
    assert (backbone.type, backbone.arch, backbone.drop_path_rate) == ('ConvNeXt', arch, drop_path)
    assert backbone.init_cfg == dict(type='Pretrained', checkpoint=URL + weights)
    assert cfg.model.neck.in_channels == [c0, 2 * c0, 4 * c0, 8 * c0]
    assert cfg.custom_imports.imports == ['convnext_mm']
    wrapper = cfg.optim_wrapper
    assert wrapper.type == ('AmpOptimWrapper' if amp else 'OptimWrapper')
    assert wrapper.constructor == 'ConvNeXtLayerDecayOptimizerConstructor'
    assert wrapper.paramwise_cfg == dict(decay_rate=decay, decay_type='layer_wise',
                                         num_layers=layers)
    assert wrapper.optimizer == dict(type='AdamW', lr=lr, betas=(0.9, 0.999), weight_decay=0.05)
    assert cfg.train_cfg.max_epochs == 36
    warmup, steps = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.end, warmup.by_epoch) == \
        ('LinearLR', 0.001, 500, False)
    assert (steps.type, steps.milestones, steps.gamma) == ('MultiStepLR', [27, 33], 0.1)
    assert cfg.train_dataloader.batch_size == 2 and cfg.auto_scale_lr.base_batch_size == 16
    branches = cfg.train_pipeline[3]
    assert branches.type == 'RandomChoice'
    multi_scale, crop = branches.transforms
    assert multi_scale[0].scales == [(s, 1333) for s in range(480, 801, 32)]
    assert [t.type for t in crop] == ['RandomChoiceResize', 'RandomCrop', 'RandomChoiceResize']
    assert crop[0].scales == [(400, 1333), (500, 1333), (600, 1333)]
    assert crop[1].crop_size == (384, 600) and crop[1].crop_type == 'absolute_range'
    if name.startswith('cascade'):
        heads = cfg.model.roi_head.bbox_head
        assert len(heads) == 3
        for head in heads:
            assert (head.type, head.num_shared_convs, head.num_shared_fcs) == \
                ('ConvFCBBoxHead', 4, 1)
            assert head.norm_cfg.type == 'SyncBN' and not head.reg_class_agnostic
            assert head.loss_bbox == dict(type='GIoULoss', loss_weight=10.0)
            assert head.reg_decoded_bbox
        assert [h.bbox_coder.target_stds[0] for h in heads] == [0.1, 0.05, 0.033]
    else:
        assert cfg.model.type == 'MaskRCNN'


def test_box_only_cascade_is_the_t_recipe_without_masks(det_scope):
    """For box-annotated data (ConvNeXt issue #56): no mask branch, no masks loaded or
    evaluated; everything else is cascade_convnext_t_coco.py. Trains one step on boxes only."""
    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs
    boxes, full = load('cascade_rcnn_convnext_t_coco'), load('cascade_convnext_t_coco')
    roi_head = boxes.model.roi_head
    assert roi_head.mask_head is None and roi_head.mask_roi_extractor is None
    for pipeline in (boxes.train_dataloader.dataset.pipeline,
                     boxes.test_dataloader.dataset.pipeline):
        loads = [step for step in pipeline if step.type == 'LoadAnnotations']
        assert [step.with_mask for step in loads] == [False]
    assert boxes.val_evaluator.metric == boxes.test_evaluator.metric == 'bbox'
    for key in ('optim_wrapper', 'param_scheduler', 'train_cfg', 'auto_scale_lr'):
        assert boxes[key] == full[key], key
    assert boxes.model.backbone == full.model.backbone and boxes.model.neck == full.model.neck
    assert boxes.model.roi_head.bbox_head == full.model.roi_head.bbox_head
    assert boxes.train_pipeline[2:] == full.train_pipeline[2:]

    boxes.model.backbone.update(arch='atto', init_cfg=None)
    boxes.model.neck.in_channels = [40, 80, 160, 320]
    boxes.model.train_cfg.rpn_proposal.max_per_img = 64
    model = MODELS.build(boxes.model)
    data = model.data_preprocessor(demo_mm_inputs(2, [(3, 64, 64)] * 2, num_items=[2, 1],
                                                  num_classes=80, with_mask=False), True)
    losses = model(**data, mode='loss')
    assert not any('mask' in key for key in losses)
    loss, _ = model.parse_losses(losses)
    loss.backward()
    assert torch.isfinite(loss)


def test_mask2former_panoptic_recipe_is_mmdets_with_convnext_t(det_scope):
    """mmdet's Mask2Former COCO panoptic recipe with ConvNeXt-T swapped in (use_convnext,
    drop path 0.3 as its Swin-T recipe) and layer-wise decay 0.7 / 6 on top of its own
    paramwise_cfg; the head is as large as in mmdet's Swin-T recipe (same channels)."""
    from mmdet.registry import MODELS

    from convnext_mm import use_convnext

    def mmdet_config(name):
        return installed_config('mmdet', 'mask2former/' + name)

    cfg = load('mask2former_convnext_t_coco_panoptic')
    expected = use_convnext(
        mmdet_config('mask2former_r50_8xb2-lsj-50e_coco-panoptic.py'), 'tiny',
        checkpoint=URL + 'convnext_tiny_1k_224.pth', drop_path_rate=0.3,
        layer_decay=dict(decay_rate=0.7, decay_type='layer_wise', num_layers=6))
    for key in ('model', 'optim_wrapper', 'custom_imports'):
        assert without_scope(cfg[key].to_dict()) == without_scope(expected[key].to_dict()), key
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys['query_embed'] == dict(
        lr_mult=1.0, decay_mult=0.0)
    assert {'type': 'LayerDecayLrLogHook'} in cfg.custom_hooks
    assert cfg.model.type == 'Mask2Former' and cfg.train_cfg.max_iters == 368750
    swin = mmdet_config('mask2former_swin-t-p4-w7-224_8xb2-lsj-50e_coco-panoptic.py')
    with torch.device('meta'):
        ours = MODELS.build(cfg.model)
    swin.model.backbone.init_cfg = None
    theirs = MODELS.build(swin.model)  # Swin computes values while built: not on 'meta'
    assert count_parameters(ours.panoptic_head) == count_parameters(theirs.panoptic_head)
    assert count_parameters(ours.backbone) == count_parameters(ConvNeXt('tiny',
                                                                          out_indices=(0, 1, 2, 3)))


def test_v2_mask_rcnn_recipe_has_mmdetections_values():
    """mmdetection's projects/ConvNeXt-V2 Mask R-CNN V2-B (FCMAE, LSJ 1024, 3x; 52.9 / 46.4 AP)."""
    cfg = load('mask_rcnn_convnext_v2_b_fcmae_lsj_coco')
    backbone = cfg.model.backbone
    assert (backbone.type, backbone.arch, backbone.use_grn, backbone.drop_path_rate) == \
        ('ConvNeXt', 'base', True, 0.4)
    assert backbone.init_cfg == dict(
        type='Pretrained', checkpoint=URL + 'convnextv2/pt_only/convnextv2_base_1k_224_fcmae.pt')
    assert cfg.model.type == 'MaskRCNN' and cfg.model.neck.in_channels == [128, 256, 512, 1024]
    assert cfg.model.test_cfg.rcnn.nms.type == 'soft_nms'
    resize, crop = cfg.train_dataloader.dataset.pipeline[2:4]
    assert (resize.type, resize.scale, resize.ratio_range) == ('RandomResize', (1024, 1024), (0.1, 2.0))
    assert (crop.type, crop.crop_size, crop.recompute_bbox) == ('RandomCrop', (1024, 1024), True)
    assert cfg.train_dataloader.batch_size == 4 and cfg.auto_scale_lr.base_batch_size == 32
    wrapper = cfg.optim_wrapper
    assert (wrapper.type, wrapper.constructor) == ('AmpOptimWrapper',
                                                   'ConvNeXtLayerDecayOptimizerConstructor')
    assert wrapper.paramwise_cfg == dict(decay_rate=0.95, decay_type='layer_wise', num_layers=12)
    assert wrapper.optimizer == dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
    warmup, steps = cfg.param_scheduler
    assert (warmup.start_factor, warmup.end, steps.milestones, cfg.train_cfg.max_epochs) == \
        (0.001, 1000, [27, 33], 36)


@pytest.fixture(scope='module')
def det_scope():
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    import convnext_mm  # noqa: F401


# Cascade-T's 86M: tests/test_benchmark_tools.py::test_get_flops_matches_the_published_counts
@pytest.mark.parametrize('name,params', [('mask_rcnn_convnext_t_coco', 48e6),
                                         ('cascade_convnext_xl_in22k_coco', 407e6)])
def test_models_build_with_published_sizes(det_scope, name, params):
    from mmdet.registry import MODELS
    with torch.device('meta'):
        model = MODELS.build(load(name).model)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - params) / params < 0.02, count


@pytest.mark.parametrize('name,v1_name', [
    ('mask_rcnn_convnext_v2_b_fcmae_lsj_coco', 'mask_rcnn_convnext_t_coco'),
    ('cascade_convnext_v2_b_fcmae_coco', 'cascade_convnext_b_coco')])
def test_v2_recipes_are_timms_convnextv2_base_in_the_v1_detector(det_scope, name, v1_name):
    """A V2-B recipe's backbone is timm's convnextv2_base (by parameter count); the rest of the
    detector is the V1 recipe's (FPN input channels aside)."""
    from mmdet.registry import MODELS
    v1 = load(v1_name).model
    v1.neck.in_channels = [128, 256, 512, 1024]
    with torch.device('meta'):
        model = MODELS.build(load(name).model)
        v1_model = MODELS.build(v1)
    assert_v2_backbone_is_timms(model.backbone, 'base')

    def detector_without_backbone(m):
        return sum(p.numel() for n, p in m.named_parameters() if not n.startswith('backbone.'))
    assert detector_without_backbone(model) == detector_without_backbone(v1_model)


def test_v2_cascade_recipe_is_the_v1_b_recipe_with_the_v2_block():
    assert_v1_recipe_with_v2_block(load('cascade_convnext_v2_b_fcmae_coco'),
                                   load('cascade_convnext_b_coco'), 'base')


def test_cascade_tiny_forward_backward_on_cpu(det_scope):
    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs
    cfg = load('cascade_convnext_t_coco').model
    cfg.backbone.init_cfg = None
    for stage in cfg.train_cfg.rcnn:  # 64 sampled RoIs per image (COCO: 512), for CPU time
        stage.sampler.num = 64
    model = MODELS.build(cfg)
    model.init_weights()
    model.train()
    packed = demo_mm_inputs(1, [[3, 192, 256]], num_items=[3], with_mask=True)
    data = model.data_preprocessor(packed, training=True)
    losses = model.loss(data['inputs'], data['data_samples'])
    total, log_vars = model.parse_losses(losses)
    assert torch.isfinite(total)
    assert {'loss_rpn_cls', 's0.loss_cls', 's2.loss_bbox', 's2.loss_mask'} <= set(log_vars)
    total.backward()
    assert model.backbone.stages[0][0].dwconv.weight.grad.abs().sum() > 0
    assert model.roi_head.bbox_head[2].shared_fcs[0].weight.grad is not None


def test_roi_features_of_the_backbone_match_torchvision_roi_align(det_scope):
    """mmcv's RoIAlign reads NCHW memory directly: fed the backbone's features (through the
    FPN) it must give what torchvision's stride-aware roi_align gives."""
    from mmcv.ops import roi_align
    from mmdet.registry import MODELS
    from torchvision.ops import roi_align as tv_roi_align
    cfg = load('cascade_convnext_t_coco').model
    cfg.backbone = dict(cfg.backbone, arch='atto', init_cfg=None)
    cfg.neck.in_channels = [40, 80, 160, 320]
    model = randomize_(MODELS.build(cfg)).eval()
    with torch.no_grad():
        features = model.extract_feat(torch.randn(1, 3, 128, 160))
    rois = torch.tensor([[0, 8., 12., 60., 90.], [0, 30., 5., 120., 70.]])
    for feature, stride in zip(features[:4], (4, 8, 16, 32)):
        got = roi_align(feature, rois, (7, 7), 1 / stride, 0, 'avg', True)
        want = tv_roi_align(feature, rois, (7, 7), 1 / stride, 0, aligned=True)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_own_dataset_trains_tests_and_infers(toy_coco_5, tmp_path):
    """A COCO-format set of five classes with ids 2, 5, 9, 11, 20 through
    tools/dataset_config.py from the demo (the Cascade T recipe shrunk to atto), trained with
    the ConvNeXt V2 block (the V1 block trains in test_reliability.py), tested and inferred
    with the file's class names."""
    config = str(tmp_path / 'cascade_on_my_data.py')
    load_tool('dataset_config').main([DEMO, '--data-root', toy_coco_5, '--out', config,
                                      '--check'])
    work = str(tmp_path / 'work')
    short = ['--cfg-options', 'train_cfg.max_epochs=1', 'model.backbone.use_grn=True',
             'default_hooks.logger.interval=1', 'default_hooks.checkpoint.interval=1',
             'randomness.seed=0'] + [f'{k}=None' for k in NO_VALIDATION]
    log = run(['tools/train.py', config, '--work-dir', work] + short)
    assert 'Epoch(train) [1][4/4]' in log
    weights = load_checkpoint_file(osp.join(work, 'epoch_1.pth'))['state_dict']
    assert weights['backbone.stages.2.5.grn.gamma'].abs().sum() > 0  # trained GRN
    assert weights['roi_head.bbox_head.2.fc_cls.weight'].shape[0] == 5 + 1  # and background
    assert_logged_lr(work, 0.7**7)  # layer_wise 0.7 over 6 layers: the stem's scale
    assert re.search(r'Epoch\(train\) \[1\]\[4/4\] .* lr: \d\.\d{4}e-0\d .*'
                     r'stem_lr: \d\.\d{4}e-0\d', log)  # mmengine's format for *lr keys
    load_tool('plot_curves').main([work, '--keys', 'loss', 'lr', 'stem_lr', 's2.loss_mask',
                                   '--out', str(tmp_path / 'curves.png')])
    assert (tmp_path / 'curves.png').stat().st_size > 10000

    log = run(['tools/test.py', config, osp.join(work, 'epoch_1.pth'), '--work-dir', work,
               '--out', str(tmp_path / 'preds.pkl'), '--show-dir', 'vis'] + short)
    for metric in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP'):
        assert re.search(metric + r': -?\d', log), metric
    assert osp.getsize(tmp_path / 'preds.pkl') > 0
    assert len(glob.glob(osp.join(work, '*', 'vis', '*.png'))) == 4
    check_infer_tool(osp.join(work, 'cascade_on_my_data.py'), osp.join(work, 'epoch_1.pth'),
                     toy_coco_5, tmp_path)


def check_infer_tool(config, checkpoint, toy_coco, tmp_path):
    """tools/infer.py on a folder, a broken and a missing file: every good image gets its
    picture and mmdet's prediction as JSON, equal to mmdet's inference_detector; the bad
    inputs are named after the good ones are written."""
    import pycocotools.mask as mask_utils
    from mmdet.apis import inference_detector, init_detector
    (tmp_path / 'broken.png').write_bytes(b'not a picture')
    out = tmp_path / 'infer'
    # score_thr 0: keep the low-scoring detections of a detector trained for one epoch
    every_detection = ['--cfg-options', 'model.test_cfg.rcnn.score_thr=0']
    log = run(['tools/infer.py', config, checkpoint, toy_coco + 'val', str(tmp_path / 'broken.png'),
               str(tmp_path / 'missing.png'), '--out-dir', str(out), '--device', 'cpu'] +
              every_detection, returncode=1)
    assert '2 input(s) skipped' in log and 'broken.png: not a readable image\n' in log
    assert 'missing.png: no such file or folder\n' in log
    assert sorted(os.listdir(out / 'vis')) == [f'00000{i}.png' for i in range(4)]
    detector = init_detector(config, checkpoint, device='cpu', cfg_options={
        'model.test_cfg.rcnn.score_thr': 0})
    classes = detector.dataset_meta['classes']
    assert classes == FIVE_CLASSES  # the annotation file's names, in its order
    for i in range(4):
        image = f'{toy_coco}val/00000{i}.png'
        with open(out / 'preds' / f'00000{i}.json') as f:
            got = json.load(f)
        want = inference_detector(detector, image).pred_instances
        assert got['image'] == image and len(got['scores']) == len(want) > 10
        torch.testing.assert_close(torch.tensor(got['bboxes']), want.bboxes, atol=1e-3, rtol=0)
        torch.testing.assert_close(torch.tensor(got['scores']), want.scores, atol=1e-5, rtol=0)
        assert got['labels'] == want.labels.tolist() and max(got['labels']) < 5
        assert got['label_names'] == [classes[i] for i in got['labels']]
        masks = mask_utils.decode([dict(m, counts=m['counts'].encode()) for m in got['masks']])
        assert masks.shape == (128, 128, len(want))
        assert (masks.transpose(2, 0, 1) == want.masks.numpy()).mean() > 0.999

    # the V1 demo config with this V2 (GRN) checkpoint
    from convnext_mm.checkpoint import CheckpointError
    from convnext_mm.utils import load_model_config
    with pytest.raises(CheckpointError, match=r"Checkpoint '.*epoch_1.pth' of '.*cascade_convnext_"
                       r"demo.py' does not fit the model: .*24 not in the model "
                       r'\(first: backbone.stages.0.0.grn'):
        load_tool('infer').build_inferencer(load_model_config(DEMO), checkpoint, 'cpu')


def test_tools_format_the_config_text_once_per_distinct_config():
    """mmengine's runner asks for the formatted config five times and once per checkpoint;
    inside run_tool yapf formats each distinct text once, and the text is unchanged."""
    from unittest.mock import patch

    import mmengine.config.config as mmengine_config

    from convnext_mm.utils.runtime import config_text_formatted_once
    cfg = load('cascade_convnext_t_coco')
    plain = cfg.pretty_text
    real_format = mmengine_config.FormatCode
    with patch.object(mmengine_config, 'FormatCode', wraps=real_format) as format_code:
        with config_text_formatted_once():
            assert [cfg.pretty_text for _ in range(3)] == [plain] * 3
            assert format_code.call_count == 1
            cfg.train_cfg.max_epochs = 1
            assert cfg.pretty_text != plain and format_code.call_count == 2
        assert mmengine_config.FormatCode is format_code  # restored on leaving
