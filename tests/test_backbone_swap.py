"""convnext_overrides / use_convnext and tools/swap_backbone.py: ConvNeXt in mmdet's and mmseg's
own configs (their installed .mim/configs), each built and run as the tool checks it at swap time,
trained one step on the CPU and counted; what cannot be adapted is refused naming the key, and a
swap that would not run is refused at swap time."""

import pytest
import torch
from conftest import count_parameters, installed_config, load_tool
from mmengine.config import Config

from convnext_mm.backbone_swap import (HEAD_KEYS, convnext_overrides, run_swapped_model,
                                       use_convnext)
from convnext_mm.models import ConvNeXt

mmdet = pytest.importorskip('mmdet')
mmseg = pytest.importorskip('mmseg')

# Fewer proposals and RoIs, fewer queries and transformer layers, fewer points: the same model
# types at a cost the CPU test suite can afford.
SMALL_TWO_STAGE = {'model.train_cfg.rpn_proposal.nms_pre': 200,
                   'model.train_cfg.rpn_proposal.max_per_img': 64,
                   'model.train_cfg.rcnn.sampler.num': 64}
SMALL_CASCADE = dict(SMALL_TWO_STAGE, **{f'model.train_cfg.rcnn.{stage}.sampler.num': 64
                                         for stage in range(3)})
del SMALL_CASCADE['model.train_cfg.rcnn.sampler.num']
SMALL_MASK2FORMER = {'num_queries': 10, 'pixel_decoder.encoder.num_layers': 1,
                     'transformer_decoder.num_layers': 1, 'train_cfg.num_points': 256}
# the LSJ recipe pads every batch to 1024x1024
NO_FIXED_SIZE_PAD = {'model.data_preprocessor.batch_augments': None}
ALL_STAGES, LAST_THREE = (0, 1, 2, 3), (1, 2, 3)

MASK2FORMER_DET = {f'model.panoptic_head.{k}': v for k, v in SMALL_MASK2FORMER.items()}
# mmdet config: (task, ConvNeXt stages it reads, cheaper settings for the test)
DET_MATRIX = {
    'faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py': ('box', ALL_STAGES, SMALL_TWO_STAGE),
    'mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py': ('instance', ALL_STAGES, SMALL_TWO_STAGE),
    'cascade_rcnn/cascade-rcnn_r50_fpn_1x_coco.py': ('box', ALL_STAGES, SMALL_CASCADE),
    'htc/htc_r50_fpn_1x_coco.py': ('instance', ALL_STAGES, SMALL_CASCADE),
    'retinanet/retinanet_r50_fpn_1x_coco.py': ('box', ALL_STAGES, {}),
    'fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py': ('box', ALL_STAGES, {}),
    'atss/atss_r50_fpn_1x_coco.py': ('box', ALL_STAGES, {}),
    'rtmdet/rtmdet_tiny_8xb32-300e_coco.py': ('box', LAST_THREE, {}),
    'rtmdet/rtmdet-ins_tiny_8xb32-300e_coco.py': ('instance', LAST_THREE, {}),
    'yolact/yolact_r50_1xb8-55e_coco.py': ('instance', ALL_STAGES, {}),
    'deformable_detr/deformable-detr_r50_16xb2-50e_coco.py': ('box', LAST_THREE, {}),
    'dino/dino-4scale_r50_8xb2-12e_coco.py': ('box', LAST_THREE, {'model.num_queries': 100}),
    'mask2former/mask2former_r50_8xb2-lsj-50e_coco.py': (
        'instance', ALL_STAGES, dict(MASK2FORMER_DET, **NO_FIXED_SIZE_PAD)),
    'mask2former/mask2former_r50_8xb2-lsj-50e_coco-panoptic.py': (
        'panoptic', ALL_STAGES, dict(MASK2FORMER_DET, **NO_FIXED_SIZE_PAD)),
}
# the Cityscapes configs pad every image to 512x1024
SMALL_SEG = {'model.data_preprocessor.size': (64, 64)}
SEG_MATRIX = {
    'fcn/fcn_r50-d8_4xb2-40k_cityscapes-512x1024.py': SMALL_SEG,
    'pspnet/pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py': SMALL_SEG,
    'deeplabv3plus/deeplabv3plus_r50-d8_4xb2-40k_cityscapes-512x1024.py': SMALL_SEG,
    'upernet/upernet_r50_4xb2-40k_cityscapes-512x1024.py': SMALL_SEG,
    'segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py': SMALL_SEG,
    'mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py': dict(
        SMALL_SEG, **{f'model.decode_head.{k}': v for k, v in SMALL_MASK2FORMER.items()}),
    # a cascade of two heads, each concatenating all four outputs (resize_concat)
    'ocrnet/ocrnet_hr18_4xb2-40k_cityscapes-512x1024.py': SMALL_SEG,
    # the kernel generator (an UPerHead) reads the backbone, the kernel update heads read it
    'knet/knet-s3_r50-d8_upernet_8xb2-adamw-80k_ade20k-512x512.py': SMALL_SEG,
}


def build_pair(scope, cfg, new):
    """(the original model, the ConvNeXt one with its training losses), the latter built and run
    as the swap tool checks it (one block per stage, two synthetic images)."""
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope(scope)
    try:
        with torch.device('meta'):
            old = MODELS.build(cfg.model)
    except (RuntimeError, NotImplementedError):  # a backbone computing values while built
        old = MODELS.build(cfg.model)
    model, losses = run_swapped_model(new)
    return old, model, losses


def assert_swap_explains_the_parameters(cfg, old, model, out_indices):
    """The backbone is ConvNeXt with atto's channels (one block per stage) and the old
    backbone's number of outputs; only it and the modules that read it (neck, or heads without
    a neck) change their parameter count."""
    assert type(model.backbone) is ConvNeXt and model.backbone.out_indices == out_indices
    shallow_atto = dict(depths=[1] * 4, channels=[40, 80, 160, 320])
    assert count_parameters(model.backbone) == \
        count_parameters(ConvNeXt(shallow_atto, out_indices=out_indices))
    readers = [k for k in ('neck', ) + HEAD_KEYS if k in convnext_overrides(cfg, 'atto')['model']]
    assert readers
    for name, module in model.named_children():
        if name not in ['backbone'] + readers:
            assert count_parameters(module) == count_parameters(getattr(old, name)), name


def train_step(model, losses, optim_wrapper_cfg):
    """One step from ``losses`` with the config's optimizer under layer decay: the backbone
    gets gradients and moves."""
    from mmengine.optim import build_optim_wrapper
    optim_wrapper_cfg = dict(optim_wrapper_cfg, type='OptimWrapper')  # no AMP on the CPU
    optim_wrapper_cfg.pop('loss_scale', None)
    # the DETRs clip to norm 0.1: a fresh model's first gradients (losses of 1e4) would then
    # move no weight by a float32 step
    optim_wrapper_cfg.pop('clip_grad', None)
    optim_wrapper = build_optim_wrapper(model, optim_wrapper_cfg)
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    optim_wrapper.backward(loss)
    grads = [p.grad for p in model.backbone.parameters() if p.grad is not None]
    assert len(grads) > 0.9 * len(list(model.backbone.parameters()))
    optim_wrapper.step()
    moved = [n for n, p in model.backbone.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) > 0.5 * len(before)


@pytest.mark.parametrize('name', list(DET_MATRIX))
def test_convnext_trains_in_mmdets_configs(name):
    task, stages, options = DET_MATRIX[name]
    cfg = installed_config('mmdet', name, options)
    new = use_convnext(cfg, 'atto', layer_decay=True)
    old, model, losses = build_pair('mmdet', cfg, new)
    assert_swap_explains_the_parameters(cfg, old, model, stages)
    if task != 'box':
        assert any('mask' in key for key in losses), sorted(losses)
    train_step(model, losses, new.optim_wrapper)


@pytest.mark.parametrize('name', list(SEG_MATRIX))
def test_convnext_trains_in_mmsegs_configs(name):
    cfg = installed_config('mmseg', name, SEG_MATRIX[name])
    new = use_convnext(cfg, 'atto', layer_decay=True)
    assert 'pretrained' not in new.model or new.model.pretrained is None
    old, model, losses = build_pair('mmseg', cfg, new)
    assert_swap_explains_the_parameters(cfg, old, model, ALL_STAGES)
    if new.model.get('auxiliary_head') is not None:  # the auxiliary head ran too
        assert any(key.startswith('aux') for key in losses), sorted(losses)
    train_step(model, losses, new.optim_wrapper)


def test_what_the_swap_changes():
    cfg = installed_config('mmdet', 'dino/dino-4scale_r50_8xb2-12e_coco.py')
    overrides = convnext_overrides(cfg, 'tiny', checkpoint='convnext_tiny_1k_224.pth',
                                   drop_path_rate=0.4, layer_decay=True)
    assert overrides['model'] == dict(
        backbone=dict(_delete_=True, type='ConvNeXt', arch='tiny', out_indices=(1, 2, 3),
                      drop_path_rate=0.4,
                      init_cfg=dict(type='Pretrained', checkpoint='convnext_tiny_1k_224.pth')),
        neck=dict(in_channels=[192, 384, 768]))
    assert overrides['custom_imports'] == dict(imports=['convnext_mm'],
                                               allow_failed_imports=False)
    # DINO's own paramwise_cfg (backbone lr x0.1) kept beside the layer decay
    assert overrides['optim_wrapper'] == dict(
        constructor='ConvNeXtLayerDecayOptimizerConstructor', paramwise_cfg=dict(
            custom_keys={'backbone': dict(lr_mult=0.1)}, decay_rate=0.7, decay_type='layer_wise'))
    seg = installed_config(
        'mmseg', 'deeplabv3plus/deeplabv3plus_r50-d8_4xb2-40k_cityscapes-512x1024.py')
    new = use_convnext(seg, 'tiny', layer_decay=True)
    assert (new.model.decode_head.in_channels, new.model.decode_head.c1_in_channels,
            new.model.auxiliary_head.in_channels) == (768, 96, 384)
    assert new.model.pretrained is None and new.optim_wrapper.paramwise_cfg == dict(
        decay_rate=0.9, decay_type='stage_wise')
    assert seg.model.backbone.type == 'ResNetV1c'  # the given config is left as it was


def test_swap_refuses_what_it_cannot_adapt():
    c4 = installed_config('mmdet', 'faster_rcnn/faster-rcnn_r50-caffe_c4-1x_coco.py')
    with pytest.raises(ValueError, match=r'model.roi_head.shared_head is a stage of the old '
                       r'backbone \(C4 models\)'):
        convnext_overrides(c4, 'tiny')
    cfg = installed_config('mmdet', 'retinanet/retinanet_r50_fpn_1x_coco.py')
    cfg.model.neck.in_channels = 2048
    with pytest.raises(ValueError, match=r"model.neck.in_channels=2048 \(type 'FPN'\): cannot "
                       r"tell which of the backbone's 4 outputs it reads"):
        convnext_overrides(cfg, 'tiny')
    with pytest.raises(ValueError, match=r'no model.backbone to replace'):
        convnext_overrides(Config(dict(model=dict(type='SoftTeacher', detector=dict()))))


def test_swap_tool_writes_a_config_that_inherits_the_source(tmp_path):
    out = tmp_path / 'faster_rcnn_convnext_t.py'
    source = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
    load_tool('swap_backbone').main([source, 'tiny', str(out), '--layer-decay',
                                     '--backbone-options', 'drop_path_rate=0.2'])
    text = out.read_text()
    assert text.startswith("_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'\n")
    written = Config.fromfile(str(out))
    for key in ('model', 'optim_wrapper'):  # mmengine marks what an mmdet:: base defines
        assert written[key].pop('_scope_') == 'mmdet'
    expected = use_convnext(installed_config('mmdet', 'faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'),
                            'tiny', layer_decay=True, drop_path_rate=0.2)
    assert written.model.to_dict() == expected.model.to_dict()
    assert written.optim_wrapper.to_dict() == expected.optim_wrapper.to_dict()
    assert written.custom_imports == dict(imports=['convnext_mm'], allow_failed_imports=False)


def test_heads_reading_several_outputs_get_their_channels():
    """OCRNet: both heads of the cascade concatenate the four outputs (resize_concat); K-Net:
    the kernel generator (an UPerHead) reads them, the kernel update heads read it."""
    ocrnet = use_convnext(installed_config(
        'mmseg', 'ocrnet/ocrnet_hr18_4xb2-40k_cityscapes-512x1024.py'), 'tiny')
    assert [head.in_channels for head in ocrnet.model.decode_head] == [[96, 192, 384, 768]] * 2
    assert ocrnet.model.decode_head[0].channels == 270  # its own width, not what it reads
    knet = use_convnext(installed_config(
        'mmseg', 'knet/knet-s3_r50-d8_upernet_8xb2-adamw-80k_ade20k-512x512.py'), 'tiny')
    head = knet.model.decode_head
    assert head.kernel_generate_head.in_channels == [96, 192, 384, 768]
    assert [h.in_channels for h in head.kernel_update_head] == [512] * 3  # unchanged
    assert knet.model.auxiliary_head.in_channels == 384


def test_swap_tool_refuses_a_config_that_would_not_run(tmp_path, monkeypatch):
    """A swap leaving OCRNet's second head at HRNet's channels (what the tool wrote before it
    adapted every head of a cascade) is refused at swap time, and nothing is written."""
    tool = load_tool('swap_backbone')
    real = tool.convnext_overrides

    def first_head_only(cfg, arch, **kwargs):
        overrides = real(cfg, arch, **kwargs)
        overrides['model']['decode_head'][1]['in_channels'] = [18, 36, 72, 144]
        return overrides
    monkeypatch.setattr(tool, 'convnext_overrides', first_head_only)
    out = tmp_path / 'ocrnet_convnext.py'
    with pytest.raises(ValueError, match=r"The config swapped to ConvNeXt from 'mmseg::ocrnet/"
                       r"ocrnet_hr18_4xb2-40k_cityscapes-512x1024.py' does not run: "
                       r'RuntimeError: .*expected input\[2, 600, .*to have 270 channels'):
        tool.main(['mmseg::ocrnet/ocrnet_hr18_4xb2-40k_cityscapes-512x1024.py', 'atto',
                   str(out)])
    assert not out.exists()


def test_a_model_needing_a_missing_package_is_written_with_a_warning(monkeypatch):
    """PAA's loss imports scikit-learn: where it is not installed the swap cannot be run, which
    is no fault of the swap."""
    import convnext_mm.backbone_swap as backbone_swap

    def needs_sklearn(cfg):
        raise ImportError('Please run "pip install sklearn" to install sklearn first.')
    monkeypatch.setattr(backbone_swap, 'run_swapped_model', needs_sklearn)
    cfg = use_convnext(installed_config('mmdet', 'paa/paa_r50_fpn_1x_coco.py'), 'atto')
    assert backbone_swap.check_swapped_model(cfg) is False

    def wrong_channels(cfg):
        raise RuntimeError('expected input to have 270 channels')
    monkeypatch.setattr(backbone_swap, 'run_swapped_model', wrong_channels)
    with pytest.raises(ValueError, match=r'does not run: RuntimeError: expected input to have 270 '
                       r'channels \(--no-check writes it all the same\)'):
        backbone_swap.check_swapped_model(cfg)
