"""The backbone on a CUDA GPU (skipped without one): numerics against timm in fp32 and under
autocast, and the paths a GPU takes (no folded layer scale)."""
import pytest
import torch
from conftest import randomize_
from test_backbone import autocast_step_matches_timm

from convnext_mm import ConvNeXt

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
CUDA = torch.device('cuda')


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


@pytest.mark.parametrize('training', [False, True])
def test_fp32_matches_cpu_and_scales_in_the_add(training, no_tf32):
    """fp32 on the GPU equals the CPU's result; the layer scale is applied by addcmul, not
    folded into pwconv2's weight (no extra products per block)."""
    model = randomize_(ConvNeXt('atto', drop_path_rate=0.)).train(training)
    x = torch.randn(2, 3, 64, 96)
    expected = model(x)
    model.cuda()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        outs = model(x.cuda())
    calls = {e.key: e.count for e in prof.key_averages()}
    blocks = sum(model.depths)
    assert calls.get('aten::addcmul', 0) == blocks
    assert calls.get('aten::mul', 0) == 0
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-4)
