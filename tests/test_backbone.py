"""ConvNeXt backbone: numerics against timm and torchvision, shapes, options."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, randomize_

from convnext_mm import ConvNeXt
from convnext_mm.models.backbones import layers
from convnext_mm.models.backbones.convnext import ConvNeXtBlock

timm = pytest.importorskip('timm')
torchvision = pytest.importorskip('torchvision')


def layer_norm_nchw(x, norm):
    """Reference channels-first LayerNorm with the parameters of ``norm``."""
    y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1], ), norm.weight, norm.bias, norm.eps)
    return y.permute(0, 3, 1, 2)


def timm_stage_outputs(model, x):
    x = model.stem(x)
    outs = []
    for stage in model.stages:
        x = stage(x)
        outs.append(x)
    return outs


def torchvision_stage_outputs(model, x):
    outs = []
    for i, layer in enumerate(model.features):
        x = layer(x)
        if i % 2 == 1:
            outs.append(x)
    return outs


def load_into_ours(tmp_path, state_dict, suffix='.pth', **kwargs):
    path = str(tmp_path / f'ckpt{suffix}')
    if suffix == '.safetensors':
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state_dict.items()}, path)
    else:
        torch.save(state_dict, path)
    model = ConvNeXt(init_cfg=dict(type='Pretrained', checkpoint=path), **kwargs)
    model.init_weights()
    return randomize_output_norms(model).eval()


def randomize_output_norms(model):
    with torch.no_grad():
        for i in model.out_indices:
            norm = getattr(model, f'norm{i}')
            norm.weight.copy_(1 + 0.1 * torch.randn_like(norm.weight))
            norm.bias.copy_(0.1 * torch.randn_like(norm.bias))
    return model


def assert_matches_reference(ours, reference_outs, x):
    with torch.no_grad():
        outs = ours(x)
    assert len(outs) == 4
    for i, (out, ref) in enumerate(zip(outs, reference_outs)):
        expected = layer_norm_nchw(ref, getattr(ours, f'norm{i}'))
        assert out.shape == expected.shape
        err = (out - expected).abs().max().item()
        assert err <= 1e-5, f'stage {i}: max abs error {err}'


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
@pytest.mark.parametrize('timm_name,kwargs', [
    ('convnext_tiny', dict(arch='tiny')),
    ('convnextv2_atto', dict(arch='atto', use_grn=True)),
])
def test_matches_timm(tmp_path, suffix, timm_name, kwargs):
    reference = randomize_(timm.create_model(timm_name, pretrained=False)).eval()
    ours = load_into_ours(tmp_path, reference.state_dict(), suffix, **kwargs)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        reference_outs = timm_stage_outputs(reference, x)
    assert_matches_reference(ours, reference_outs, x)


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_matches_torchvision(tmp_path, suffix):
    reference = randomize_(torchvision.models.convnext_tiny()).eval()
    ours = load_into_ours(tmp_path, reference.state_dict(), suffix, arch='tiny')
    x = torch.randn(1, 3, 100, 132)
    with torch.no_grad():
        reference_outs = torchvision_stage_outputs(reference, x)
    assert_matches_reference(ours, reference_outs, x)


def step_against_timm(ours, reference, x, autocast_dtype=None):
    """One training step of ours and of timm's ``reference`` on ``x`` (stochastic depth drawn
    from the same seed; under autocast to ``autocast_dtype`` if given): the pairs (ours,
    timm's) of stage outputs, and of gradients by our parameter name."""
    from convnext_mm.checkpoint.formats import convnext_mm_key
    with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        torch.manual_seed(7)
        ours_outs = ours(x)
        torch.manual_seed(7)
        reference_outs = [layer_norm_nchw(out, getattr(ours, f'norm{i}'))
                          for i, out in enumerate(timm_stage_outputs(reference, x))]
    weights = [torch.randn_like(out) for out in ours_outs]
    for outs in (ours_outs, reference_outs):
        sum((out * w).sum() for out, w in zip(outs, weights)).backward()
    ours_params = dict(ours.named_parameters())
    grads = {}
    for name, param in reference.named_parameters():
        key = convnext_mm_key(name, 'timm')
        if key in ours_params:
            grads[key] = ours_params[key].grad, param.grad.reshape(ours_params[key].shape)
    return list(zip(ours_outs, reference_outs)), grads


@pytest.mark.parametrize('timm_name,kwargs,drop_path_rate,memory_format', [
    ('convnext_tiny', dict(arch='tiny'), 0., torch.contiguous_format),
    ('convnext_tiny', dict(arch='tiny'), 0.3, torch.channels_last),
    ('convnextv2_atto', dict(arch='atto', use_grn=True), 0.2, torch.contiguous_format),
])
def test_training_step_matches_timm(tmp_path, timm_name, kwargs, drop_path_rate, memory_format):
    """Outputs and every gradient of a training step (stochastic depth drawn from the same
    seed) equal timm's: checks the fused block tail and the depthwise-convolution backward."""
    reference = randomize_(timm.create_model(timm_name, drop_path_rate=drop_path_rate)).train()
    ours = load_into_ours(tmp_path, reference.state_dict(), drop_path_rate=drop_path_rate,
                          **kwargs).train()
    x = torch.randn(2, 3, 64, 96).contiguous(memory_format=memory_format)
    outs, grads = step_against_timm(ours, reference, x)
    for out, expected in outs:
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    for key, (grad, expected) in grads.items():
        torch.testing.assert_close(grad, expected, rtol=1e-4,
                                   atol=1e-4 * expected.abs().max().item(), msg=key)
    assert len(grads) == len([n for n, _ in ours.named_parameters() if not n.startswith('norm')])


@pytest.mark.parametrize('use_grn', [False, True])
def test_block_under_autocast_matches_fp32(use_grn):
    """Half precision takes the unfused tail (layer scale not folded into the weights)."""
    block = randomize_(ConvNeXtBlock(16, drop_path_rate=0.5, use_grn=use_grn)).train()
    x = torch.randn(4, 16, 8, 8)
    torch.manual_seed(3)
    expected = block(x)
    torch.manual_seed(3)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = block(x)
    assert out.dtype == torch.float32  # the residual stream keeps its type, as in timm
    torch.testing.assert_close(out, expected, rtol=0.02, atol=0.02)


def autocast_step_matches_timm(tmp_path, device, dtype, memory_format, ulps=0.):
    """A training step of ConvNeXt-atto under autocast on ``device``: our outputs and
    gradients against timm's under the same autocast (same type promotion of the residual
    stream). timm's atto runs its MLP as 1x1 convolutions (``conv_mlp``), whose half-precision
    kernels sum in another order than the Linear layers' and now and then round a hidden
    value to the neighbouring half-precision number; the reference here has Linear layers,
    as ours. On the CPU the kernels are then the same and so are the results, up to an ulp
    in the weight gradients' products; on a GPU, whose products and convolutions may pick
    other kernels for other strides, within ``ulps`` of ``dtype`` times the largest value.
    Shared with tests/test_cuda.py."""
    eps = ulps * torch.finfo(dtype).eps
    reference = randomize_(timm.create_model('convnext_atto', conv_mlp=False)).to(device).train()
    ours = load_into_ours(tmp_path, reference.state_dict(), arch='atto').to(device).train()
    x = torch.randn(2, 3, 64, 96, device=device).contiguous(memory_format=memory_format)
    outs, grads = step_against_timm(ours, reference, x, autocast_dtype=dtype)
    for out, expected in outs:
        assert out.dtype == expected.dtype == torch.float32
        torch.testing.assert_close(out, expected, rtol=1e-4,
                                   atol=max(1e-4, eps * expected.abs().max().item()))
    for key, (grad, expected) in grads.items():
        # half-precision products: a different summation order moves a result by an ulp
        torch.testing.assert_close(grad, expected, rtol=1e-2,
                                   atol=max(1e-2, 2 * eps) * expected.abs().max().item(),
                                   msg=key)


@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last])
def test_autocast_training_step_matches_timm(tmp_path, memory_format):
    autocast_step_matches_timm(tmp_path, torch.device('cpu'), torch.bfloat16, memory_format)


@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize('input_requires_grad', [True, False])
@pytest.mark.parametrize('batch', [3, 0])
def test_depthwise_conv_gradients_equal_pytorch_conv2d(memory_format, input_requires_grad, batch):
    from convnext_mm.models.backbones.layers import DepthwiseConv2d
    conv = randomize_(DepthwiseConv2d(12, 7)).double()
    x = torch.randn(batch, 12, 9, 13, dtype=torch.float64).contiguous(memory_format=memory_format)
    grad = torch.randn(batch, 12, 9, 13, dtype=torch.float64)
    results = []
    for forward in (conv, lambda inp: F.conv2d(inp, conv.weight, conv.bias, padding=3, groups=12)):
        inp = x.clone().requires_grad_(input_requires_grad)
        out = forward(inp)
        out.backward(grad)
        results.append((out, inp.grad, conv.weight.grad, conv.bias.grad))
        conv.zero_grad(set_to_none=True)
    for ours, expected in zip(*results):
        torch.testing.assert_close(ours, expected)
    assert results[0][0].is_contiguous(memory_format=memory_format)


def test_flop_counter_sees_every_layer_with_autograd_on():
    """The CPU training fast paths (custom depthwise backward, folded layer scale) step
    aside under tracing, so FLOP counters see the same layers with and without no_grad."""
    from mmengine.analysis import FlopAnalyzer
    model = ConvNeXt('atto').train()
    x = torch.zeros(1, 3, 64, 64)
    counts = []
    for grad_enabled in (True, False):
        with torch.set_grad_enabled(grad_enabled):
            analyzer = FlopAnalyzer(model, (x, ))
            analyzer.unsupported_ops_warnings(False)
            counts.append((analyzer.total(), analyzer.by_module()['stages.0.0.pwconv2'],
                           analyzer.by_module()['stages.0.0.dwconv']))
    assert counts[0] == counts[1]
    assert counts[0][1] == 16 * 16 * 40 * 160 and counts[0][2] == 16 * 16 * 40 * 49


@pytest.fixture
def onednn_linear(monkeypatch):
    """oneDNN's linear kernels on whatever the CPU (by default only where ATen runs AVX-512
    code), so that their paths are tested on every machine with oneDNN."""
    if not layers.ONEDNN_LINEAR_AVAILABLE:
        pytest.skip('needs oneDNN on x86')
    monkeypatch.setattr(layers, 'USE_ONEDNN_LINEAR', True)


@pytest.fixture
def plain_linear(monkeypatch):
    """oneDNN's linear kernels off (as on CPUs without AVX-512): PyTorch's products run."""
    monkeypatch.setattr(layers, 'USE_ONEDNN_LINEAR', False)


@pytest.fixture(params=[True, False], ids=['onednn', 'plain'])
def onednn(request):
    """The test runs with oneDNN's linear kernels forced on (``onednn_linear``) and off
    (``plain_linear``); the value says which."""
    request.getfixturevalue('onednn_linear' if request.param else 'plain_linear')
    return request.param


def test_onednn_linear_kernels_run_only_where_aten_runs_avx512():
    """On this machine the switch follows ATen's CPU capability; with the capability lowered to
    AVX2 (as on an AVX2 CPU) inference and training run no oneDNN linear kernel."""
    capability = torch.backends.cpu.get_cpu_capability()
    assert layers.USE_ONEDNN_LINEAR == (capability == 'AVX512'
                                        and layers.ONEDNN_LINEAR_AVAILABLE)
    code = (
        'import torch\n'
        'from convnext_mm import ConvNeXt\n'
        'from convnext_mm.models.backbones import layers\n'
        'model, x = ConvNeXt("atto"), torch.randn(1, 3, 64, 64)\n'
        'cpu = [torch.profiler.ProfilerActivity.CPU]\n'
        'with torch.profiler.profile(activities=cpu) as prof:\n'
        '    with torch.no_grad():\n'
        '        model.eval()(x)\n'
        '    sum(out.sum() for out in model.train()(x)).backward()\n'
        'names = [e.name for e in prof.events()]\n'
        'print(torch.backends.cpu.get_cpu_capability(), layers.USE_ONEDNN_LINEAR,\n'
        '      sum(n.startswith("mkldnn::_linear_pointwise") for n in names),\n'
        '      sum(n in ("aten::addmm", "aten::mm") for n in names) > 0)\n')
    env = dict(os.environ, ATEN_CPU_CAPABILITY='avx2')
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ['AVX2', 'False', '0', 'True']


def profiled_op_names(fn):
    """(the names of the operators fn runs on the CPU, in order, fn's result)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        result = fn()
    return [e.name for e in prof.events()], result


def count_matrix_products(names):
    """PyTorch's matrix products (``addmm`` or ``mm``) among profiled operator names."""
    return sum(name in ('aten::addmm', 'aten::mm') for name in names)


def onednn_linear_calls(names):
    """(``linear_gelu`` calls, ``linear`` calls) among profiled operator names: a block on the
    inference path calls one of each, a training block with GRN ``linear`` twice. The two
    oneDNN kernels of each training MLP on oneDNN's kernels (``_MLPFunction`` in eager mode,
    the ``onednn_mlp`` op compiled) are not counted."""
    # Only ops with an autograd formula show under their own name; each call runs one kernel.
    kernels = sum(name.startswith('mkldnn::_linear_pointwise') for name in names)
    if layers.USE_ONEDNN_LINEAR and torch.backends.mkldnn.enabled:
        kernels -= 2 * (names.count('_MLPFunction') + names.count('convnext_mm::onednn_mlp'))
    linear_calls = names.count('convnext_mm::linear')
    return kernels - linear_calls, linear_calls


def count_onednn_linear_calls(fn):
    """(``linear_gelu`` calls, ``linear`` calls, fn's result)."""
    names, result = profiled_op_names(fn)
    return (*onednn_linear_calls(names), result)


@pytest.mark.usefixtures('onednn_linear')
@pytest.mark.parametrize('use_grn', [False, True])
def test_inference_uses_onednn_fused_linears_with_the_same_outputs(use_grn):
    """In fp32 CPU inference each block runs Linear+GELU and Linear+add as two fused oneDNN
    kernels; with oneDNN switched off the plain layers run and give the same outputs."""
    model = randomize_(ConvNeXt('atto', use_grn=use_grn)).eval()
    x = torch.randn(2, 3, 64, 96)
    blocks = sum(model.depths)
    with torch.no_grad():
        *fused_calls, outs = count_onednn_linear_calls(lambda: model(x))
        with torch.backends.mkldnn.flags(enabled=False):
            *plain_calls, expected = count_onednn_linear_calls(lambda: model(x))
    assert fused_calls == [blocks, blocks] and plain_calls == [0, 0]
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    names, _ = profiled_op_names(lambda: model(x))
    with_grad_calls = [*onednn_linear_calls(names), names.count('_MLPFunction')]
    assert with_grad_calls == ([0, 2 * blocks, 0] if use_grn else [0, 0, blocks])


@pytest.mark.skipif(not layers.ONEDNN_LINEAR_AVAILABLE, reason='needs oneDNN')
@pytest.mark.parametrize('rows,in_features,out_features', [
    (50, 8, 32), (50, 32, 8), (0, 8, 32)])
def test_linear_weight_grad_is_the_product_in_the_weight_layout(rows, in_features, out_features):
    """oneDNN's weight gradient of the training Linear op, whichever width goes first, is
    ``grad.t() @ x``, contiguous like the weight; zero for no rows."""
    grad, x = torch.randn(rows, out_features), torch.randn(rows, in_features)
    result = layers.linear_weight_grad(grad, x)
    assert result.shape == (out_features, in_features) and result.is_contiguous()
    torch.testing.assert_close(result, grad.t() @ x, rtol=1e-5, atol=1e-5)


def count_mlp_products(fn, onednn):
    """(calls of the first MLP product, of the second, fn's result): ``linear_gelu`` and
    ``linear`` calls with oneDNN's kernels; without them PyTorch's matrix products (``addmm``
    or ``mm``), two per MLP, halved."""
    if onednn:
        return count_onednn_linear_calls(fn)
    names, result = profiled_op_names(fn)
    products = count_matrix_products(names)
    return products / 2, products / 2, result


@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last])
def test_inference_runs_the_mlp_in_row_chunks_with_the_same_outputs(
        monkeypatch, memory_format, onednn):
    """Eager inference runs a block's LayerNorm and MLP MLP_CHUNK_ROWS rows at a time (the last
    chunk shorter), writing over the depthwise convolution's output, never over the block's
    input: on PyTorch's products in every block, on oneDNN's kernels where the block's hidden
    tensor exceeds MLP_CHUNK_ABOVE_NUMEL values. Outputs equal the unchunked layers' up to
    float rounding. Not with autograd, and not where stochastic depth applies."""
    import convnext_mm.models.backbones.convnext as convnext_module
    model = randomize_(ConvNeXt('atto')).eval()
    x = torch.randn(2, 3, 64, 96).to(memory_format=memory_format)
    stage_rows = [2 * 16 * 24 // 4**i for i in range(4)]  # 768, 192, 48, 12
    hidden = 4 * model.out_channels[0]
    chunk_rows, blocks = 100, sum(model.depths)
    chunking = {'on': False}
    monkeypatch.setattr(ConvNeXtBlock, '_in_chunks',
                        lambda self, *args, real=ConvNeXtBlock._in_chunks:
                        chunking['on'] and real(self, *args))
    # stage 0 (768 x 160 hidden values, one over the threshold) is chunked on oneDNN's kernels,
    # stage 1 (192 x 320, half of it) is not
    monkeypatch.setattr(convnext_module, 'MLP_CHUNK_ABOVE_NUMEL', stage_rows[0] * hidden - 1)
    monkeypatch.setattr(convnext_module, 'MLP_CHUNK_ROWS', chunk_rows)
    with torch.no_grad():
        *unchunked_calls, expected = count_mlp_products(lambda: model(x), onednn)
        chunking['on'] = True
        *chunked_calls, outs = count_mlp_products(lambda: model(x), onednn)
    assert unchunked_calls == [blocks, blocks]
    chunks = [-(-rows // chunk_rows) for rows in stage_rows]  # 8 (the last of 68 rows), 2, 1, 1
    chunked_stages = 1 if onednn else 4
    extra_calls = sum(depth * (n - 1) for depth, n in zip(model.depths[:chunked_stages], chunks))
    assert chunked_calls == [blocks + extra_calls] * 2
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    names, _ = profiled_op_names(lambda: model(x))
    assert names.count('_MLPFunction') == blocks
    # drop-path rates rise linearly from 0: only the first block has none and is chunked
    drop_path_model = ConvNeXt('atto', drop_path_rate=0.5).train()
    with torch.no_grad():
        *drop_path_calls, _ = count_mlp_products(lambda: drop_path_model(x), onednn)
    assert drop_path_calls == ([blocks + chunks[0] - 1, chunks[0]] if onednn else
                               [blocks + chunks[0] - 1] * 2)
    # a block called on its own: the chunked result, and its input left as it was
    block = model.stages[0][0]
    block_input = torch.randn(2, 40, 16, 24).to(memory_format=torch.channels_last)
    untouched = block_input.clone()
    with torch.no_grad():
        chunked = block(block_input)
        chunking['on'] = False
        torch.testing.assert_close(chunked, block(block_input), rtol=1e-5, atol=1e-5)
    assert torch.equal(block_input, untouched)


def step_with_and_without(monkeypatch, model, x, *fast_paths):
    """A training step, then the same step with ``fast_paths`` (rules in the backbone module)
    switched off; the outputs, the gradients of the trainable parameters and, if it needs one,
    of the input agree. For each step: (``linear_gelu`` calls, ``linear`` calls, training MLP
    function calls)."""
    import convnext_mm.models.backbones.convnext as convnext_module
    weights, calls, results = None, [], []
    for switched_off in (False, True):
        if switched_off:
            for fast_path in fast_paths:
                monkeypatch.setattr(convnext_module, fast_path, lambda *args: False)
        model.zero_grad(set_to_none=True)
        inp = x.detach().clone().requires_grad_(x.requires_grad)
        torch.manual_seed(11)
        names, outs = profiled_op_names(lambda: model(inp))
        weights = weights or [torch.randn_like(out) for out in outs]
        sum((out * w).sum() for out, w in zip(outs, weights)).backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        calls.append((*onednn_linear_calls(names), names.count('_MLPFunction')))
        results.append(list(outs) + grads + ([inp.grad] if x.requires_grad else []))
    for ours, expected in zip(*results):
        torch.testing.assert_close(ours, expected, rtol=1e-4,
                                   atol=1e-5 * expected.abs().max().item())
    return calls


@pytest.mark.usefixtures('onednn_linear')
def test_frozen_stages_use_fused_linears_and_training_gradients_are_unchanged(monkeypatch):
    """Training with frozen stages: only the frozen blocks (no parameter needs a gradient)
    take the fused kernels; outputs and the gradients of the trained stages are those of the
    plain layers. Without the fused kernels the frozen blocks run PyTorch's products (as
    eager inference does, in row chunks); the trained ones run the training MLP function."""
    model = randomize_(ConvNeXt('atto', frozen_stages=2)).train()
    calls = step_with_and_without(monkeypatch, model, torch.randn(2, 3, 64, 64),
                                  'onednn_inference')
    frozen, trained = model.depths[0] + model.depths[1], model.depths[2] + model.depths[3]
    assert calls == [(frozen, frozen, trained), (0, 0, trained)]


@pytest.mark.usefixtures('onednn_linear')
@pytest.mark.parametrize('use_grn,drop_path_rate,memory_format', [
    (False, 0., torch.contiguous_format),
    (False, 0., torch.channels_last),
    (False, 0.4, torch.channels_last),
    (True, 0., torch.channels_last),
])
def test_training_linears_run_onednn_with_the_same_outputs_and_gradients(
        monkeypatch, use_grn, drop_path_rate, memory_format):
    """fp32 eager CPU training runs both Linear layers of every block on oneDNN's kernel (bias
    and, without stochastic depth on a channels_last input, the shortcut added inside it; the
    gradients too): in the training MLP function, or with GRN as the ``linear`` op. Outputs and
    the gradients of every parameter and of the input are the plain layers'."""
    model = randomize_(ConvNeXt('atto', use_grn=use_grn,
                                drop_path_rate=drop_path_rate)).train()
    x = torch.randn(2, 3, 64, 96).contiguous(memory_format=memory_format).requires_grad_()
    calls = step_with_and_without(monkeypatch, model, x, 'mlp_function_training',
                                  'onednn_training')
    blocks = sum(model.depths)
    assert calls == [(0, 2 * blocks, 0) if use_grn else (0, 0, blocks), (0, 0, 0)]


def chunk_the_mlp(monkeypatch):
    """Every training MLP recomputes its GELU output, in chunks of 100 rows of stage 0's hidden
    tensor (atto: 160 wide), so that an input of 2x3x64x96 makes several chunks and a partial
    last one in each stage but the last."""
    monkeypatch.setattr(layers, 'MLP_CHUNK_ABOVE_NUMEL', 0)
    monkeypatch.setattr(layers, 'MLP_TRAINING_CHUNK_NUMEL', 100 * 160)


@pytest.mark.parametrize('chunked', [False, True], ids=['kept', 'chunked'])
@pytest.mark.parametrize('drop_path_rate,memory_format,frozen_stages,input_grad', [
    (0., torch.contiguous_format, -1, True),
    (0.4, torch.channels_last, 1, False),
    (0., torch.channels_last, -1, False),
])
def test_training_mlp_function_with_the_same_gradients(
        monkeypatch, drop_path_rate, memory_format, frozen_stages, input_grad, chunked, onednn):
    """fp32 eager CPU training runs the MLP of each block that autograd records (frozen
    blocks only for an input gradient) as one autograd function. Its backward writes the
    hidden gradients over its saved GELU output on PyTorch's products (the graph is not kept;
    on oneDNN's kernel over the new product) or, above ``MLP_CHUNK_ABOVE_NUMEL`` hidden values,
    recomputes GELU chunk by chunk; outputs and gradients are the plain layers'."""
    import convnext_mm.models.backbones.convnext as convnext_module
    if chunked:
        chunk_the_mlp(monkeypatch)
    model = randomize_(ConvNeXt('atto', drop_path_rate=drop_path_rate,
                                frozen_stages=frozen_stages)).train()
    x = torch.randn(2, 3, 64, 96).contiguous(memory_format=memory_format)
    x.requires_grad_(input_grad)
    mlp_calls, graph_kept, chunked_backwards = [], [], []
    monkeypatch.setattr(convnext_module, 'mlp_training',
                        lambda *args: mlp_calls.append(1) or layers.mlp_training(*args))
    monkeypatch.setattr(layers, '_graph_kept',
                        lambda real=layers._graph_kept: graph_kept.append(real()) or real())
    monkeypatch.setattr(layers, '_chunked_backward',
                        lambda *args, real=layers._chunked_backward:
                        chunked_backwards.append(1) or real(*args))
    step_with_and_without(monkeypatch, model, x, 'mlp_function_training', 'onednn_training')
    recorded_blocks = sum(model.depths[0 if input_grad else max(frozen_stages, 0):])
    assert len(mlp_calls) == recorded_blocks
    if chunked:
        assert graph_kept == [] and len(chunked_backwards) == recorded_blocks
    else:
        assert graph_kept == [False] * (0 if onednn else recorded_blocks)
        assert chunked_backwards == []


@pytest.mark.usefixtures('onednn')
def test_training_folds_the_layer_scale_only_where_the_weight_is_smaller(monkeypatch):
    """An eager training block folds its layer scale into pwconv2's weight (4C x C) unless
    that is over twice the block's output (rows x C): atto at 2x3x64x96 has 768, 192, 48 and
    12 rows against 4C = 160, 320, 640 and 1280."""
    folded_widths = []
    real = ConvNeXtBlock._pwconv2_folded
    monkeypatch.setattr(ConvNeXtBlock, '_pwconv2_folded',
                        lambda block, y: folded_widths.append(y.shape[-1]) or real(block, y))
    model = ConvNeXt('atto').train()
    model(torch.randn(2, 3, 64, 96))
    assert folded_widths == [40] * model.depths[0] + [80] * model.depths[1]


@pytest.mark.usefixtures('onednn')
def test_chunked_training_mlp_does_not_keep_the_gelu_output(monkeypatch):
    """Recomputing GELU saves, for backward, one hidden-sized (4C) tensor less per block."""
    model = randomize_(ConvNeXt('atto')).train()
    x = torch.randn(2, 3, 64, 96)

    def saved_values():
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(
                lambda t: saved.append(t.numel()) or t, lambda t: t):
            outs = model(x)
        return sum(saved), outs

    kept, outs = saved_values()
    chunk_the_mlp(monkeypatch)
    chunked, _ = saved_values()
    gelu_outputs = sum(4 * depth * out.numel() for depth, out in zip(model.depths, outs))
    assert kept - chunked == gelu_outputs


@pytest.mark.usefixtures('onednn')
@pytest.mark.parametrize('chunked', [False, True], ids=['kept', 'chunked'])
@pytest.mark.parametrize('second_pass', ['retain_graph', 'create_graph'])
def test_training_mlp_gradients_when_the_graph_is_kept(monkeypatch, second_pass, chunked):
    """A second backward pass through a kept graph, and a backward through the gradients,
    give the plain layers' gradients: the MLP function overwrites nothing it saved then."""
    import convnext_mm.models.backbones.convnext as convnext_module
    if chunked:
        chunk_the_mlp(monkeypatch)
    model = randomize_(ConvNeXt('atto')).train()
    params = list(model.parameters())
    x = torch.randn(1, 3, 64, 96)

    def gradients():
        model.zero_grad(set_to_none=True)
        loss = sum((out * out).mean() for out in model(x))
        if second_pass == 'retain_graph':
            loss.backward(retain_graph=True)
            loss.backward()
        else:
            grads = torch.autograd.grad(loss, params, create_graph=True)
            sum(grad.square().sum() for grad in grads).backward()
        return [p.grad for p in params]

    ours = gradients()
    monkeypatch.setattr(convnext_module, 'mlp_function_training', lambda *args: False)
    monkeypatch.setattr(convnext_module, 'onednn_training', lambda *args: False)
    for grad, expected in zip(ours, gradients()):
        torch.testing.assert_close(grad, expected, rtol=1e-4,
                                   atol=1e-5 * expected.abs().max().item())


def test_parameter_names_are_the_official_layout():
    """timm's converter of official checkpoints accepts our state dict as one."""
    from timm.models.convnext import checkpoint_filter_fn
    ours = randomize_(ConvNeXt('tiny')).eval()
    official = {k: v for k, v in ours.state_dict().items() if not k.startswith('norm')}
    official.update({'norm.weight': torch.ones(768), 'norm.bias': torch.zeros(768),
                     'head.weight': torch.zeros(1000, 768), 'head.bias': torch.zeros(1000)})
    reference = timm.create_model('convnext_tiny', pretrained=False)
    reference.load_state_dict(checkpoint_filter_fn({'model': official}, reference), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference_outs = timm_stage_outputs(reference.eval(), x)
    assert_matches_reference(ours, reference_outs, x)


def test_tiny_parameter_count_matches_timm_body():
    ours = sum(p.numel() for p in ConvNeXt('tiny').parameters())
    reference = timm.create_model('convnext_tiny', pretrained=False)
    body = sum(p.numel() for n, p in reference.named_parameters() if not n.startswith('head'))
    stage_norms = 2 * sum([96, 192, 384, 768])
    assert ours == body + stage_norms
    assert abs(ours - 27.8e6) < 0.1e6


@pytest.mark.parametrize('arch', list(ConvNeXt.arch_settings))
def test_every_arch_shapes_and_channels(arch):
    setting = ConvNeXt.arch_settings[arch]
    with torch.device('meta'):
        model = ConvNeXt(arch)
        for h, w in [(224, 224), (200, 333)]:
            outs = model(torch.empty(2, 3, h, w))
            for i, out in enumerate(outs):
                stride = 4 * 2**i
                size = (h // 4 // 2**i, w // 4 // 2**i)
                assert tuple(out.shape) == (2, setting['channels'][i]) + size, (arch, i, stride)
    assert model.out_channels == setting['channels']
    assert model.out_strides == [4, 8, 16, 32]
    assert [len(s) for s in model.stages] == setting['depths']


@pytest.mark.parametrize('size', [(64, 64), (97, 130), (33, 47)])
def test_real_forward_odd_sizes(size):
    model = ConvNeXt('atto').eval()
    outs = model(torch.randn(1, 3, *size))
    h, w = size
    for i, out in enumerate(outs):
        assert out.shape[-2:] == (h // 4 // 2**i, w // 4 // 2**i)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last])
@pytest.mark.usefixtures('onednn_linear')
def test_empty_batch_gives_empty_outputs_and_zero_gradients(memory_format):
    """As timm's: an empty batch passes in inference and training (the CPU fast paths too)."""
    model = randomize_(ConvNeXt('atto', drop_path_rate=0.1))
    x = torch.randn(0, 3, 64, 96).contiguous(memory_format=memory_format)
    with torch.no_grad():
        shapes = [out.shape for out in model.eval()(x)]
    assert shapes == [(0, 40, 16, 24), (0, 80, 8, 12), (0, 160, 4, 6), (0, 320, 2, 3)]
    outs = model.train()(x)
    assert [out.shape for out in outs] == shapes
    sum(out.sum() for out in outs).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and not param.grad.any(), name


def test_out_indices_subset_and_negative():
    model = ConvNeXt('atto', out_indices=(-1, 1)).eval()
    outs = model(torch.randn(1, 3, 64, 64))
    assert model.out_indices == (1, 3)
    assert [o.shape[1] for o in outs] == [80, 320]
    assert hasattr(model, 'norm1') and hasattr(model, 'norm3') and not hasattr(model, 'norm0')


def test_kernel_size_option():
    model = ConvNeXt('atto', kernel_size=3)
    assert model.stages[0][0].dwconv.kernel_size == (3, 3)
    assert model(torch.randn(1, 3, 64, 64))[0].shape == (1, 40, 16, 16)


def test_layer_scale_and_grn_options():
    assert ConvNeXt('atto').stages[0][0].gamma is not None
    assert ConvNeXt('atto', layer_scale_init_value=0).stages[0][0].gamma is None
    v2 = ConvNeXt('atto', use_grn=True)
    assert v2.stages[0][0].gamma is None
    assert v2.stages[0][0].grn.gamma.shape == (1, 1, 1, 160)


def test_drop_path_rates_rise_linearly():
    model = ConvNeXt('tiny', drop_path_rate=0.4)
    rates = [b.drop_path_rate for stage in model.stages for b in stage]
    expected = torch.linspace(0, 0.4, 18).tolist()
    assert rates == pytest.approx(expected)


def test_frozen_stages_get_no_gradient_and_stay_in_eval():
    model = ConvNeXt('atto', frozen_stages=2)
    model.train()
    frozen = [model.downsample_layers[0], model.downsample_layers[1], model.stages[0],
              model.stages[1]]
    assert all(not m.training for f in frozen for m in f.modules())
    assert model.stages[2].training
    sum(o.sum() for o in model(torch.randn(2, 3, 64, 64))).backward()
    for f in frozen:
        for p in f.parameters():
            assert not p.requires_grad and p.grad is None
    assert all(p.grad is not None for p in model.stages[2].parameters())


@pytest.mark.usefixtures('onednn')
def test_with_cp_gives_same_outputs_and_gradients():
    plain = randomize_(ConvNeXt('atto', drop_path_rate=0.3)).train()
    checkpointed = ConvNeXt('atto', drop_path_rate=0.3, with_cp=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    results = []
    for model in (plain, checkpointed):
        torch.manual_seed(123)
        inp = x.clone().requires_grad_()
        outs = model(inp)
        sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
        results.append((outs, inp.grad, {n: p.grad for n, p in model.named_parameters()}))
    (outs_a, xgrad_a, grads_a), (outs_b, xgrad_b, grads_b) = results
    for a, b in zip(outs_a, outs_b):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(xgrad_a, xgrad_b, rtol=1e-5, atol=1e-6)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-6)


def test_channels_last_input_gives_same_outputs():
    model = randomize_(ConvNeXt('atto')).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)
        outs = model(x.contiguous(memory_format=torch.channels_last))
    for a, b in zip(ref, outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize('with_cp', [False, True])
def test_outputs_are_contiguous_nchw(memory_format, with_cp):
    """C++/CUDA ops such as mmcv's RoIAlign read raw NCHW memory and ignore strides."""
    model = ConvNeXt('atto', with_cp=with_cp).train()
    outs = model(torch.randn(2, 3, 64, 96).contiguous(memory_format=memory_format))
    assert all(out.is_contiguous() for out in outs)


def test_layernorm_in_fp32_under_half_precision():
    from convnext_mm.models.backbones.layers import LayerNorm2d
    norm = LayerNorm2d(64, eps=1e-6)
    # A large mean: the variance computed in bf16 would be far off.
    x = (100 + torch.randn(2, 64, 8, 8)).bfloat16()
    expected = layer_norm_nchw(x.float(), norm)
    out = norm(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=0.01, atol=0.01)
    model = randomize_(ConvNeXt('atto')).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        low = model(x)
    with torch.no_grad():
        high = model(x)
    for a, b in zip(low, high):
        assert (a.float() - b).abs().mean() < 0.05 * b.abs().mean()


@pytest.mark.parametrize('training', [False, True])
def test_compiles_without_graph_breaks(training, onednn):
    """fullgraph compile with and without the oneDNN linear kernels (without them compiled
    inference leaves the layer scale unfolded), same outputs as eager mode."""
    model = randomize_(ConvNeXt('atto')).train(training)
    x = torch.randn(1, 3, 64, 64)
    compiled = torch.compile(model, backend='eager', fullgraph=True)
    with torch.set_grad_enabled(training):
        outs, expected = compiled(x), model(x)
    for a, b in zip(outs, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    if training:
        sum(out.sum() for out in outs).backward()


@pytest.mark.usefixtures('onednn_linear')
@pytest.mark.parametrize('training', ['', 'kept', 'chunked'])
def test_inductor_keeps_the_onednn_kernels(monkeypatch, training):
    """The oneDNN kernels are custom ops with fake-tensor kernels (and, for training, an
    autograd formula), which inductor keeps as they are: in inference Linear+GELU and
    Linear+add, in training the MLP op (GELU output kept, or computed again in chunks; here
    with stage 0 frozen and an input gradient, so that its blocks need no weight gradient).
    Outputs and gradients are those of the plain layers in eager mode."""
    if training == 'chunked':
        chunk_the_mlp(monkeypatch)
    model = randomize_(ConvNeXt(dict(depths=[1, 1, 1, 1], channels=[8, 16, 24, 32]),
                                frozen_stages=0 if training else -1))
    model.train(bool(training))
    x = torch.randn(2, 3, 64, 96).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(bool(training))
    # Static shapes: other tests compile the same code with other shapes, and inductor in
    # torch 2.14 fails on training graphs with dynamic sizes (timm's ConvNeXt too).
    torch._dynamo.reset()  # other tests' compiles of the blocks count towards the recompile limit
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    with torch.set_grad_enabled(bool(training)):
        compiled(x)
        names, outs = profiled_op_names(lambda: compiled(x))
        with torch.backends.mkldnn.flags(enabled=False):
            expected = model(x)
    kernels = sum(name.startswith('mkldnn::_linear_pointwise') for name in names)
    calls = [names.count('convnext_mm::linear'), names.count('convnext_mm::onednn_mlp')]
    # chunked: stage 0's 768 rows make two chunks of pwconv2 (500 rows of 32 hidden values)
    assert calls == ([0, 4] if training else [4, 0])
    assert kernels == 8 + (training == 'chunked') and count_matrix_products(names) == 0
    for out, ref in zip(outs, expected):
        assert out.is_contiguous()
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    if training:
        grads = []
        for result in (outs, expected):
            model.zero_grad(set_to_none=True)
            x.grad = None
            sum((out * out).sum() for out in result).backward()
            grads.append([p.grad for p in model.parameters() if p.requires_grad] + [x.grad])
        for grad, ref in zip(*grads):
            torch.testing.assert_close(grad, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last])
def test_inductor_keeps_the_chunked_inference_tail(monkeypatch, memory_format, onednn):
    """Compiled inference runs a block's tail as the chunked custom op where eager mode does:
    on PyTorch's products in every block, on oneDNN's kernels where the hidden tensor is large
    (here stage 0's); one call per block, two products per chunk, in place over the depthwise
    convolution's output, with the eager outputs. With autograd recording it does not."""
    import convnext_mm.models.backbones.convnext as convnext_module
    monkeypatch.setattr(convnext_module, 'MLP_CHUNK_ROWS', 100)
    stage_rows = [2 * 16 * 24 // 4**i for i in range(4)]  # 768, 192, 48, 12
    # stage 0's hidden tensor (768 x 32) one value over the threshold, stage 1's (192 x 64) half
    monkeypatch.setattr(convnext_module, 'MLP_CHUNK_ABOVE_NUMEL', stage_rows[0] * 32 - 1)
    model = randomize_(ConvNeXt(dict(depths=[1, 1, 1, 1], channels=[8, 16, 24, 32]))).eval()
    x = torch.randn(2, 3, 64, 96).to(memory_format=memory_format)
    torch._dynamo.reset()  # other tests' compiles of the blocks count towards the recompile limit
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    with torch.no_grad():
        compiled(x)
        names, outs = profiled_op_names(lambda: compiled(x))
        expected = model(x)
    chunks = [-(-rows // 100) for rows in stage_rows]  # 8, 2, 1, 1
    if onednn:
        assert names.count('convnext_mm::inference_tail_') == 1
        kernels = sum(name.startswith('mkldnn::_linear_pointwise') for name in names)
        assert kernels == 2 * (chunks[0] + 3) and count_matrix_products(names) == 0
    else:
        assert names.count('convnext_mm::inference_tail_') == 4
        assert count_matrix_products(names) == 2 * sum(chunks)
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    compiled_training = torch.compile(model.train(), fullgraph=True, dynamic=False)
    compiled_training(x)
    names, _ = profiled_op_names(lambda: compiled_training(x))
    assert names.count('convnext_mm::inference_tail_') == 0


def test_block_residual_is_identity_when_branch_is_zero():
    block = ConvNeXtBlock(8, layer_scale_init_value=0)
    torch.nn.init.zeros_(block.pwconv2.weight)
    torch.nn.init.zeros_(block.pwconv2.bias)
    x = torch.randn(1, 8, 5, 5)
    torch.testing.assert_close(block(x), x)


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_builds_from_config_under_downstream_scopes(scope):
    registry = pytest.importorskip(f'{scope}.registry')
    model = registry.MODELS.build(dict(type='ConvNeXt', arch='atto', out_indices=(1, 2)))
    assert isinstance(model, ConvNeXt) and model.out_indices == (1, 2)


def test_custom_imports_in_a_config_and_no_mmdet_needed(tmp_path):
    cfg = tmp_path / 'cfg.py'
    cfg.write_text("custom_imports = dict(imports=['convnext_mm'], allow_failed_imports=False)\n"
                   "backbone = dict(type='ConvNeXt', arch='femto')\n")
    script = (
        'import sys\n'
        'from mmengine.config import Config\n'
        f'cfg = Config.fromfile({str(cfg)!r})\n'
        "assert 'mmdet' not in sys.modules and 'mmseg' not in sys.modules, 'import pulled mmdet'\n"
        'from mmdet.registry import MODELS\n'
        'm = MODELS.build(cfg.backbone)\n'
        "print(type(m).__module__, m.channels)\n")
    out = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert 'convnext_mm.models.backbones.convnext [48, 96, 192, 384]' in out.stdout


@pytest.mark.parametrize('kwargs,match', [
    (dict(arch='tinyy'), r"Unknown ConvNeXt arch 'tinyy'; choose one of \['atto'"),
    (dict(arch=dict(depths=[3, 3, 9])), r"exactly the keys 'depths' and 'channels', got keys"),
    (dict(arch=dict(depths=[3, 3, 9], channels=[1, 2, 3, 4])), r"arch\['depths'\] must be 4 positive"),
    (dict(out_indices=(0, 4)), r'out_indices entry 4 is out of range; allowed: integers in \[-4, 3\]'),
    (dict(out_indices=(3, -1)), r'name the same stage twice'),
    (dict(out_indices=()), r'out_indices must be a non-empty sequence'),
    (dict(frozen_stages=5), r'frozen_stages must be an int in \[-1, 4\].*got 5'),
    (dict(drop_path_rate=-0.1), r'drop_path_rate must be in \[0, 1\), got -0.1'),
    (dict(kernel_size=4), r'kernel_size must be a positive odd int.*got 4'),
    (dict(layer_scale_init_value=-1), r'layer_scale_init_value must be >= 0'),
])
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConvNeXt(**kwargs)


@pytest.mark.parametrize('shape', [(1, 1, 64, 64), (3, 64, 64)])
def test_bad_input_raises_clear_error(shape):
    with pytest.raises(ValueError, match=r'expects an \(N, 3, H, W\) tensor, got shape'):
        ConvNeXt('atto')(torch.randn(*shape))
