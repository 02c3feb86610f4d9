"""On a CUDA GPU (skipped without one; `make test-gpu` runs only these): the backbone against
the CPU in fp32 and against timm under autocast, one AMP training step of each toy recipe
(Cascade Mask R-CNN, UperNet) as the recipes train (AmpOptimWrapper, fp16 with dynamic loss
scaling), and tools/train.py for a few iterations."""
import os.path as osp

import pytest
import torch
from conftest import ROOT, randomize_
from conftest import run_tool as run
from test_backbone import autocast_step_matches_timm

from convnext_mm import ConvNeXt

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
CUDA = torch.device('cuda')
DEMOS = osp.join(ROOT, 'configs', 'demo')


@pytest.fixture
def no_tf32():
    """fp32 products and convolutions in full fp32 (TF32 would round their inputs)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last])
def test_autocast_training_step_matches_timm_on_cuda(tmp_path, dtype, memory_format):
    # measured on an H100 (against timm's 1x1-convolution MLP): outputs within 0.75 ulps of
    # the largest value, gradients 1.9
    autocast_step_matches_timm(tmp_path, CUDA, dtype, memory_format, ulps=2.)


@pytest.mark.parametrize('use_grn', [False, True])
@pytest.mark.parametrize('training', [False, True])
def test_fp32_matches_cpu(training, use_grn, no_tf32):
    """fp32 on the GPU (the model's plain layers) equals the CPU's result (the CPU
    accelerators where they apply), outputs and gradients."""
    model = randomize_(ConvNeXt('atto', use_grn=use_grn)).train(training)
    x = torch.randn(2, 3, 64, 96)
    expected = model(x)
    expected_grad = torch.autograd.grad(sum(o.square().sum() for o in expected),
                                        model.stages[1][0].dwconv.weight)[0]
    model.cuda()
    outs = model(x.cuda())
    grad = torch.autograd.grad(sum(o.square().sum() for o in outs),
                               model.stages[1][0].dwconv.weight)[0]
    for out, ref in zip(outs, expected, strict=True):
        torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad.cpu(), expected_grad, rtol=1e-3,
                               atol=1e-3 * expected_grad.abs().max().item())


def amp_training_step(config: str, data):
    """Build the toy recipe ``config`` on the GPU with its AmpOptimWrapper (fp16, dynamic loss
    scale), take one step on ``data``: the losses are finite, no output norm overflows in half
    precision, every parameter of every backbone stage gets a gradient."""
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import MODELS, init_default_scope
    cfg = Config.fromfile(osp.join(DEMOS, config))
    init_default_scope(cfg.default_scope)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'  # the recipes' AMP, kept on a GPU
    model = MODELS.build(cfg.model).cuda().train()
    model.init_weights()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    scale = optim_wrapper.loss_scaler.get_scale()
    overflows = []
    for i in range(4):
        model.backbone.get_submodule(f'norm{i}').register_forward_hook(
            lambda module, args, out: overflows.append(not torch.isfinite(out).all().item()))
    with optim_wrapper.optim_context(model):
        batch = model.data_preprocessor(data, True)
        losses = model(**batch, mode='loss')
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss), losses
    assert overflows and not any(overflows)
    optim_wrapper.backward(loss)
    for i, stage in enumerate(model.backbone.stages):
        grads = [p.grad for p in stage.parameters()]
        assert all(g is not None and not torch.all(g == 0) for g in grads), f'stage {i}'
    optim_wrapper.step()
    # the scaled gradients of a fresh model may overflow fp16 (scale 65536): then the step is
    # skipped and the scale halved, as dynamic loss scaling does
    stepped = optim_wrapper.loss_scaler.get_scale() == scale
    assert stepped or optim_wrapper.loss_scaler.get_scale() == scale / 2


def test_cascade_demo_amp_training_step_on_cuda():
    from mmdet.testing import demo_mm_inputs
    data = demo_mm_inputs(2, [(3, 192, 192)] * 2, num_items=[3, 2], num_classes=3,
                          with_mask=True)
    amp_training_step('cascade_convnext_demo.py', data)


def test_upernet_demo_amp_training_step_on_cuda():
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    samples = []
    for _ in range(2):
        sample = SegDataSample(metainfo=dict(img_shape=(128, 128), pad_shape=(128, 128),
                                             ori_shape=(128, 128)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 5, (1, 128, 128)))
        samples.append(sample)
    images = [torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8) for _ in range(2)]
    amp_training_step('upernet_convnext_demo.py', dict(inputs=images, data_samples=samples))


def test_train_tool_on_cuda_keeps_amp(toy_coco, tmp_path):
    """tools/train.py on the GPU: nothing adapted for the CPU, AMP kept, iterations logged."""
    log = run(['tools/train.py', osp.join(DEMOS, 'cascade_convnext_demo.py'), '--work-dir',
               str(tmp_path), '--cfg-options', f'train_dataloader.dataset.data_root={toy_coco}',
               'train_cfg.max_epochs=1', 'default_hooks.logger.interval=1', 'val_cfg=None',
               'val_dataloader=None', 'val_evaluator=None'])
    assert 'No CUDA device' not in log and 'AmpOptimWrapper' in log
    assert 'Epoch(train) [1][4/4]' in log
