"""Layer-wise lr decay: equal to mmdet's and mmseg's own constructors, stable under schedulers."""

import pytest
import torch
import torch.nn as nn
from conftest import installed_config
from mmengine.config import Config
from mmengine.model import BaseModel
from mmengine.optim import build_optim_wrapper

from convnext_mm import ConvNeXt
from convnext_mm.engine.optimizers.layer_decay import ConvNeXtLayerDecayOptimizerConstructor

OPTIMIZER = dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05)


def cascade_model(arch):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    cfg = installed_config('mmdet', '_base_/models/cascade-mask-rcnn_r50_fpn.py',
                           import_custom_modules=False).model
    cfg.backbone = dict(type='ConvNeXt', arch=arch, drop_path_rate=0.4)
    cfg.neck.in_channels = [96, 192, 384, 768]
    return MODELS.build(cfg)


def upernet_model(arch):
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    cfg = installed_config('mmseg', '_base_/models/upernet_convnext.py',
                           import_custom_modules=False).model
    cfg.backbone = dict(type='ConvNeXt', arch=arch, drop_path_rate=0.4)
    return MODELS.build(cfg)


def per_param(optim_wrapper, model):
    names = {id(p): n for n, p in model.named_parameters()}
    table = {}
    for group in optim_wrapper.optimizer.param_groups:
        for p in group['params']:
            table[names[id(p)]] = (group['lr'], group['weight_decay'])
    return table


class TinyDetector(BaseModel):

    def __init__(self, backbone=None, frozen_stages=0):
        super().__init__()
        self.backbone = backbone or ConvNeXt('atto', frozen_stages=frozen_stages)
        self.neck = nn.Conv2d(320, 8, 1)

    def forward(self, *args, **kwargs):
        pass


def build(model, wrapper='OptimWrapper', **paramwise_cfg):
    """The optimizer wrapper, built from a ConfigDict as the runner builds it."""
    return build_optim_wrapper(model, Config(dict(optim_wrapper=dict(
        type=wrapper, optimizer=OPTIMIZER, paramwise_cfg=paramwise_cfg,
        constructor='ConvNeXtLayerDecayOptimizerConstructor'))).optim_wrapper)


@pytest.mark.parametrize('decay_type', ['layer_wise', 'stage_wise'])
@pytest.mark.parametrize('arch,decay_rate,num_layers', [('tiny', 0.7, 6), ('small', 0.7, 12)])
@pytest.mark.parametrize('package,model_fn', [('mmdet', cascade_model), ('mmseg', upernet_model)])
def test_matches_upstream_constructor(package, model_fn, arch, decay_rate, num_layers, decay_type):
    model = model_fn(arch)
    upstream_cls = pytest.importorskip(f'{package}.engine.optimizers').\
        LearningRateDecayOptimizerConstructor
    paramwise_cfg = dict(decay_rate=decay_rate, decay_type=decay_type, num_layers=num_layers)
    optim_wrapper_cfg = dict(type='OptimWrapper', optimizer=OPTIMIZER)
    theirs = per_param(upstream_cls(optim_wrapper_cfg, paramwise_cfg)(model), model)
    ours = per_param(ConvNeXtLayerDecayOptimizerConstructor(optim_wrapper_cfg, paramwise_cfg)(model),
                     model)
    assert ours.keys() == theirs.keys()
    assert len(ours) == len(list(model.parameters()))
    for name in ours:
        assert ours[name] == pytest.approx(theirs[name], rel=1e-12), name


def test_cascade_tiny_scale_table():
    model = cascade_model('tiny')
    wrapper = build(model, decay_rate=0.7, decay_type='layer_wise', num_layers=6)
    scales = {}
    for group in wrapper.optimizer.param_groups:
        scales[int(group['group_name'].split('_')[1])] = group['lr_scale']
    assert sorted(scales) == list(range(8))
    expected = [0.082, 0.118, 0.168, 0.240, 0.343, 0.490, 0.700, 1.0]
    assert [round(scales[i], 3) for i in range(8)] == expected


def test_num_layers_is_derived():
    wrapper = build(TinyDetector(), decay_rate=0.5)
    scales = {g['group_name']: g['lr_scale'] for g in wrapper.optimizer.param_groups}
    assert scales['layer_0_decay'] == pytest.approx(0.5**7)  # atto: 6 layers, stem id 0
    assert scales['layer_7_no_decay'] == 1.0


def test_no_weight_decay_for_norms_biases_gamma_and_grn():
    model = TinyDetector(ConvNeXt('atto', use_grn=True))
    table = per_param(build(model, decay_rate=0.9), model)
    for name, (_, wd) in table.items():
        one_d_or_bias = model.get_parameter(name).ndim == 1 or name.endswith('.bias')
        assert wd == (0. if one_d_or_bias or '.grn.' in name else 0.05), name
    for name in ('backbone.stages.0.0.grn.gamma', 'backbone.stages.0.0.norm.weight',
                 'backbone.norm0.weight', 'backbone.downsample_layers.1.0.weight'):
        assert table[name][1] == 0., name
    for name in ('backbone.stages.0.0.pwconv1.weight', 'backbone.stages.0.0.dwconv.weight',
                 'neck.weight'):
        assert table[name][1] == 0.05, name
    model = TinyDetector()
    assert per_param(build(model, decay_rate=0.9), model)['backbone.stages.0.0.gamma'][1] == 0.


class TinyMask2Former(TinyDetector):
    """A backbone and the parameters Mask2Former's recipes single out: query and level
    embeddings, a head norm and a head layer."""

    def __init__(self):
        super().__init__()
        self.query_embed = nn.Embedding(10, 8)
        self.level_embed = nn.Embedding(3, 8)
        self.head = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8))


def test_custom_keys_and_decay_mults_compose_with_the_layer_decay():
    """mmdet's Mask2Former paramwise_cfg (backbone lr x0.1, no weight decay on embeddings and
    norms) with layer decay on: lr = base lr x layer-decay scale (mmdet's own constructor) x
    lr_mult (x bias_lr_mult for biases outside norms, as mmengine's constructor); weight decay =
    base x the norm / bias / official rule x decay_mult."""
    upstream_cls = pytest.importorskip('mmdet.engine.optimizers').\
        LearningRateDecayOptimizerConstructor
    model = TinyMask2Former()
    embedding = dict(lr_mult=1.0, decay_mult=0.0)
    custom_keys = {'backbone': dict(lr_mult=0.1, decay_mult=1.0), 'query_embed': embedding,
                   'level_embed': embedding}
    table = per_param(build(model, decay_rate=0.7, custom_keys=custom_keys, norm_decay_mult=0.0,
                            bias_decay_mult=0.5, bias_lr_mult=2.0), model)
    layer_decay = dict(decay_rate=0.7, decay_type='layer_wise', num_layers=6)
    upstream = per_param(upstream_cls(dict(type='OptimWrapper', optimizer=OPTIMIZER),
                                      layer_decay)(model), model)
    assert table.keys() == upstream.keys() == dict(model.named_parameters()).keys()
    modules = dict(model.named_modules())
    for name, (lr, _) in table.items():
        lr_mult = 0.1 if name.startswith('backbone.') else 1.0
        owner = modules[name.rsplit('.', 1)[0]]
        if name.endswith('.bias') and not isinstance(owner, (torch.nn.LayerNorm,
                                                             torch.nn.GroupNorm)):
            lr_mult *= 2.0  # bias_lr_mult
        assert lr == pytest.approx(upstream[name][0] * lr_mult, rel=1e-12), name
    lr, wd = 2e-4, 0.05
    by_hand = {  # name: (lr, weight decay)
        'backbone.downsample_layers.0.0.weight': (lr * 0.7**7 * 0.1, wd),  # stem conv
        'backbone.downsample_layers.0.0.bias': (lr * 0.7**7 * 0.1 * 2, wd * 0.5),
        'backbone.downsample_layers.0.1.weight': (lr * 0.7**7 * 0.1, 0.),  # stem LayerNorm
        'backbone.stages.2.3.pwconv1.weight': (lr * 0.7**3 * 0.1, wd),  # layer 3 + 3 // 3
        'backbone.stages.2.3.pwconv1.bias': (lr * 0.7**3 * 0.1 * 2, wd * 0.5),
        'backbone.stages.2.3.gamma': (lr * 0.7**3 * 0.1, 0.),  # 1-D: no decay
        'backbone.norm3.weight': (lr * 0.1, 0.),
        'query_embed.weight': (lr, 0.), 'level_embed.weight': (lr, 0.),
        'head.0.weight': (lr, 0.), 'head.0.bias': (lr, 0.),  # norm_decay_mult 0
        'head.1.weight': (lr, wd), 'head.1.bias': (lr * 2, wd * 0.5), 'neck.weight': (lr, wd),
    }
    for name, (want_lr, want_wd) in by_hand.items():
        assert table[name] == (pytest.approx(want_lr, rel=1e-12), pytest.approx(want_wd)), name


def test_the_logged_lr_is_the_plain_heads_and_the_stems():
    from unittest.mock import MagicMock

    from convnext_mm import LayerDecayLrLogHook
    model = TinyMask2Former()
    wrapper = build(model, decay_rate=0.7, custom_keys={'backbone': dict(lr_mult=0.1),
                                                        'head': dict(lr_mult=10.)})
    runner = MagicMock(optim_wrapper=wrapper)
    LayerDecayLrLogHook().before_train_iter(runner, 0)
    calls = runner.message_hub.update_scalar.call_args_list
    logged = {call.args[0]: call.args[1] for call in calls}
    # the heads' lr x10 is left out of `lr`; the stem's lr is its own (x0.1)
    assert logged == {'train/lr': pytest.approx(2e-4),
                      'train/stem_lr': pytest.approx(2e-4 * 0.7**7 * 0.1)}


def test_frozen_parameters_are_left_out():
    model = TinyDetector(frozen_stages=1)
    table = per_param(build(model, decay_rate=0.9), model)
    assert not any(n.startswith(('backbone.stages.0.', 'backbone.downsample_layers.0.'))
                   for n in table)
    assert 'backbone.stages.1.0.dwconv.weight' in table


@pytest.mark.parametrize('schedulers', [
    [dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=5),
     dict(type='MultiStepLR', milestones=[7], gamma=0.1, by_epoch=False)],
    [dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=4),
     dict(type='PolyLR', power=1.0, eta_min=0.0, begin=4, end=20, by_epoch=False)],
])
@pytest.mark.parametrize('wrapper', ['OptimWrapper', 'AmpOptimWrapper'])
def test_ratios_hold_under_schedulers(schedulers, wrapper, monkeypatch):
    from mmengine.optim.optimizer import amp_optimizer_wrapper
    from mmengine.registry import PARAM_SCHEDULERS
    # AmpOptimWrapper refuses to build without a GPU; the lr groups do not depend on it.
    monkeypatch.setattr(amp_optimizer_wrapper, 'is_cuda_available', lambda: True)
    optim_wrapper = build(TinyDetector(), wrapper, decay_rate=0.7)
    optimizer = optim_wrapper.optimizer
    initial = [g['lr'] for g in optimizer.param_groups]
    top = initial.index(max(initial))
    built = [PARAM_SCHEDULERS.build(dict(s, optimizer=optim_wrapper)) for s in schedulers]
    for _ in range(10):
        optimizer.step()
        for scheduler in built:
            scheduler.step()
        lrs = [g['lr'] for g in optimizer.param_groups]
        assert lrs[top] != initial[top]
        for i, lr in enumerate(lrs):
            assert lr == pytest.approx(lrs[top] * initial[i] / initial[top], rel=1e-9, abs=1e-18)


def test_works_with_ddp_wrapped_model(tmp_path):
    import torch.distributed as dist
    from mmengine.model import MMDistributedDataParallel
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/rendezvous', rank=0,
                            world_size=1)
    try:
        model = TinyDetector()
        wrapped = MMDistributedDataParallel(module=model)
        table = per_param(build(wrapped, decay_rate=0.7), model)
        assert table == per_param(build(model, decay_rate=0.7), model)
    finally:
        dist.destroy_process_group()


def test_compiled_optimizer_step_from_a_runner_config():
    """The runner builds the constructor from a ConfigDict; the param groups must stay plain
    dicts, which torch.compile can trace (mmengine's `compile` compiles the optimizer step as
    part of train_step). Compiled and eager steps give the same parameters."""
    torch.manual_seed(0)
    arch = dict(depths=[1, 1, 1, 1], channels=[8, 16, 32, 64])
    models = [TinyDetector(backbone=ConvNeXt(arch)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    wrappers = [build(model, decay_rate=0.7) for model in models]

    def step(model, optim_wrapper, x, target):
        optim_wrapper.update_params((model.backbone(x)[-1] - target).square().mean())

    compiled_step = torch.compile(step, backend='eager')  # the failure was dynamo's, not inductor's
    for _ in range(2):
        x, target = torch.randn(2, 3, 32, 32), torch.randn(2, 64, 1, 1)
        step(models[0], wrappers[0], x, target)
        compiled_step(models[1], wrappers[1], x, target)
    for (name, p0), p1 in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(p1, p0, rtol=0, atol=1e-6, msg=name)  # lr 2e-4 per step
    assert {type(g) for g in wrappers[1].optimizer.param_groups} == {dict}


@pytest.mark.parametrize('paramwise_cfg,error,match', [
    (dict(decay_rate=0.7, num_layers=12), ValueError, 'num_layers=12 .*use num_layers=6'),
    (dict(decay_rate=0.7, decay_type='block_wise'), ValueError, "'block_wise' is unknown"),
    (dict(decay_rate=1.5), ValueError, r'decay_rate must be a number in \(0, 1\], got 1.5'),
    (dict(decay_rate=0), ValueError, r'decay_rate .* got 0'),
    (dict(), ValueError, 'decay_rate .* got None'),
    (dict(decay_rate=0.7, num_layer=6), ValueError, r"Unknown paramwise_cfg keys \['num_layer'\]"),
    (dict(decay_rate=0.7, custom_keys={'head': dict(lr_multi=2.)}), ValueError,
     r"custom_keys\['head'\] may set \('lr_mult', 'decay_mult'\), got \['lr_multi'\]"),
    (dict(decay_rate=0.7, norm_decay_mult=-1), ValueError, 'norm_decay_mult must be a number >= 0'),
])
def test_misconfiguration_errors(paramwise_cfg, error, match):
    with pytest.raises(error, match=match):
        build(TinyDetector(), **paramwise_cfg)


def test_non_convnext_backbone_is_an_error():
    model = TinyDetector(backbone=nn.Conv2d(3, 8, 3))
    with pytest.raises(TypeError, match="'backbone' is a convnext_mm ConvNeXt, got Conv2d"):
        build(model, decay_rate=0.7)


def test_logs_a_compact_table():
    import logging

    from mmengine.logging import MMLogger
    messages = []

    class Collect(logging.Handler):

        def emit(self, record):
            messages.append(record.getMessage())

    logger = MMLogger.get_current_instance()
    handler = Collect()
    logger.addHandler(handler)
    try:
        wrapper = build(TinyDetector(), decay_rate=0.7)
    finally:
        logger.removeHandler(handler)
    table = [m for m in messages if m.startswith('ConvNeXt layer decay')]
    assert len(table) == 1
    lines = table[0].splitlines()
    assert 'layer_wise, decay_rate=0.7, num_layers=6' in lines[0]
    assert len(lines) == 2 + len(wrapper.optimizer.param_groups)
    assert any(line.startswith('layer_0_decay') and line.endswith(
        'backbone.downsample_layers.0.0.weight .. backbone.downsample_layers.0.0.weight')
        for line in lines)
