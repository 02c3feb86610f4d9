"""ConvNeXt backbone: numerics against timm and torchvision, shapes, options."""
import copy
import importlib
import os
import subprocess
import sys
from unittest.mock import patch

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, randomize_

from convnext_mm import ConvNeXt, ops
from convnext_mm.models.backbones import ConvNeXtBlock

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


def profiled_op_names(fn):
    """(the names of the operators fn runs on the CPU, in order, fn's result)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        result = fn()
    return [e.name for e in prof.events()], result


def count_matrix_products(names):
    """PyTorch's matrix products (``addmm`` or ``mm``) among profiled operator names."""
    return sum(name in ('aten::addmm', 'aten::mm') for name in names)


@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize('input_requires_grad', [True, False])
@pytest.mark.parametrize('batch', [3, 0])
def test_depthwise_conv_gradients_equal_pytorch_conv2d(memory_format, input_requires_grad, batch):
    conv = randomize_(torch.nn.Conv2d(12, 12, 7, padding=3, groups=12)).double()
    x = torch.randn(batch, 12, 9, 13, dtype=torch.float64).contiguous(memory_format=memory_format)
    grad = torch.randn(batch, 12, 9, 13, dtype=torch.float64)
    results = []
    for forward in (lambda inp: ops.depthwise_conv2d(inp, conv.weight, conv.bias), conv):
        inp = x.clone().requires_grad_(input_requires_grad)
        out = forward(inp)
        out.backward(grad)
        results.append((out, inp.grad, conv.weight.grad, conv.bias.grad))
        conv.zero_grad(set_to_none=True)
    for ours, expected in zip(*results):
        torch.testing.assert_close(ours, expected)
    assert results[0][0].is_contiguous(memory_format=memory_format)


def test_flop_counter_sees_every_layer_with_autograd_on():
    """The CPU accelerators step aside under tracing, so FLOP counters see the same layers
    with and without no_grad."""
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
def accelerator_calls(monkeypatch):
    """Counts the calls of each CPU accelerator (by its name in ``ops.ENABLED``)."""
    calls = dict.fromkeys(ops.ENABLED, 0)
    for name, function in [('depthwise_backward', 'depthwise_conv2d'),
                           ('inference_mlp', 'mlp_inference_')]:
        def spy(*args, name=name, real=getattr(ops, function)):
            calls[name] += 1
            return real(*args)
        monkeypatch.setattr(ops, function, spy)
    return calls


def accelerators(enabled: bool):
    """Every CPU accelerator on or off (what CONVNEXT_MM_FAST_CPU sets at import)."""
    return patch.dict(ops.ENABLED, dict.fromkeys(ops.ENABLED, enabled))


def step_on_and_off(model, x):
    """A training step with the CPU accelerators on, then off: outputs, gradients of the
    trainable parameters and (if it needs one) of the input agree."""
    weights, results = None, []
    for enabled in (True, False):
        model.zero_grad(set_to_none=True)
        inp = x.detach().clone().requires_grad_(x.requires_grad)
        torch.manual_seed(11)
        with accelerators(enabled):
            outs = model(inp)
        weights = weights or [torch.randn_like(out) for out in outs]
        sum((out * w).sum() for out, w in zip(outs, weights)).backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        results.append(list(outs) + grads + ([inp.grad] if x.requires_grad else []))
    for ours, expected in zip(*results):
        torch.testing.assert_close(ours, expected, rtol=1e-4,
                                   atol=1e-5 * expected.abs().max().item())


def test_switch_turns_every_accelerator_off_and_tiny_outputs_agree(monkeypatch):
    """CONVNEXT_MM_FAST_CPU=0 (read at import: the module is imported again under each value)
    turns every accelerator off, another value is refused naming it; a ConvNeXt-T gives the
    same outputs with the accelerators on and off."""
    def import_ops_with_switch(value):
        monkeypatch.setenv('CONVNEXT_MM_FAST_CPU', value)
        return importlib.reload(ops)

    try:
        for value, expected in [('0', False), ('1', True)]:
            switched = import_ops_with_switch(value)
            assert switched.FAST_CPU is expected and set(switched.ENABLED.values()) == {expected}
        with pytest.raises(ValueError, match="CONVNEXT_MM_FAST_CPU='yes' is not allowed; use 1"):
            import_ops_with_switch('yes')
    finally:
        monkeypatch.undo()
        importlib.reload(ops)
    model = randomize_(ConvNeXt('tiny')).eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        with accelerators(True):
            fast = model(x)
        with accelerators(False):
            plain = model(x)
    for a, b in zip(fast, plain):
        assert (a - b).abs().max() <= 1e-5


@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last])
def test_inference_runs_the_mlp_in_row_chunks_with_the_same_outputs(
        monkeypatch, accelerator_calls, memory_format):
    """Eager fp32 CPU inference runs each block's LayerNorm, MLP and shortcut INFERENCE_CHUNK_ROWS
    rows at a time (two products a chunk, the last chunk shorter), over the depthwise
    convolution's output and never over the block's input; the outputs are the plain layers'.
    Not where autograd records or stochastic depth draws."""
    from convnext_mm.ops import mlp
    monkeypatch.setattr(mlp, 'INFERENCE_CHUNK_ROWS', 100)
    model = randomize_(ConvNeXt('atto')).eval()
    x = torch.randn(2, 3, 64, 96).to(memory_format=memory_format)
    blocks = sum(model.depths)
    with torch.no_grad():
        names, outs = profiled_op_names(lambda: model(x))
        with accelerators(False):
            expected = model(x)
    chunks = [-(-2 * 16 * 24 // 4**i // 100) for i in range(4)]  # 8 (the last of 68 rows), 2, 1, 1
    assert accelerator_calls['inference_mlp'] == blocks
    assert count_matrix_products(names) == 2 * sum(d * n for d, n in zip(model.depths, chunks))
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    block = model.stages[0][0]
    block_input = torch.randn(2, 40, 16, 24).to(memory_format=memory_format)
    untouched = block_input.clone()
    with torch.no_grad():
        chunked = block(block_input)
        with accelerators(False):
            torch.testing.assert_close(chunked, block(block_input), rtol=1e-5, atol=1e-5)
    assert torch.equal(block_input, untouched)
    accelerator_calls['inference_mlp'] = 0
    with torch.no_grad():  # stochastic depth draws in training mode: only the first block has none
        ConvNeXt('atto', drop_path_rate=0.5).train()(x)
    model(x)  # autograd records
    assert accelerator_calls['inference_mlp'] == 1


def test_frozen_stages_run_the_inference_path_and_training_gradients_are_unchanged(
        accelerator_calls):
    """Training with frozen stages: the frozen blocks (nothing to record) run the chunked
    inference path, the trained ones the depthwise backward; outputs and gradients of the
    trained stages are those of the plain layers."""
    model = randomize_(ConvNeXt('atto', frozen_stages=2)).train()
    step_on_and_off(model, torch.randn(2, 3, 64, 64))
    frozen, trained = model.depths[0] + model.depths[1], model.depths[2] + model.depths[3]
    assert accelerator_calls == dict(depthwise_backward=trained, inference_mlp=frozen)


@pytest.mark.parametrize('use_grn,drop_path_rate,memory_format,frozen_stages,input_grad', [
    (False, 0., torch.contiguous_format, -1, True),
    (False, 0.4, torch.channels_last, 1, False),
    (True, 0.2, torch.channels_last, -1, True),
])
def test_training_accelerators_give_the_plain_gradients(
        accelerator_calls, use_grn, drop_path_rate, memory_format, frozen_stages, input_grad):
    """fp32 eager CPU training runs the depthwise convolution's backward as two convolutions in
    every block that autograd records; outputs and the gradients of every trainable parameter
    and of the input are the plain layers'."""
    model = randomize_(ConvNeXt('atto', use_grn=use_grn, drop_path_rate=drop_path_rate,
                                frozen_stages=frozen_stages)).train()
    x = torch.randn(2, 3, 64, 96).contiguous(memory_format=memory_format)
    step_on_and_off(model, x.requires_grad_(input_grad))
    recorded = sum(model.depths[0 if input_grad else max(frozen_stages, 0):])
    assert accelerator_calls == dict(depthwise_backward=recorded,
                                     inference_mlp=sum(model.depths) - recorded)


@pytest.mark.parametrize('second_pass', ['retain_graph', 'create_graph'])
def test_training_gradients_when_the_graph_is_kept(second_pass):
    """A second backward pass through a kept graph, and a backward through the gradients,
    give the plain layers' gradients."""
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
    with accelerators(False):
        expected = gradients()
    for grad, ref in zip(ours, expected):
        torch.testing.assert_close(grad, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


def test_accelerators_step_aside_under_tracing_export_and_autocast(accelerator_calls):
    """torch.jit tracing, torch.export, torch's FLOP counter (a dispatch mode), autocast and
    half precision run the plain layers: the accelerators are never called, and the exported
    program (eval, no_grad, switch on) holds no op of this package and computes the eager
    outputs."""
    from torch.utils.flop_counter import FlopCounterMode
    model = randomize_(ConvNeXt('atto')).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = model(x)
        assert accelerator_calls['inference_mlp'] == sum(model.depths)
        accelerator_calls['inference_mlp'] = 0
        torch.jit.trace(model, (x, ), check_trace=False)
        exported = torch.export.export(model, (x, ))
        with FlopCounterMode(display=False):
            model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            model(x)
        copy.deepcopy(model).bfloat16()(x.bfloat16())
    model.train()
    with FlopCounterMode(display=False):
        sum(out.sum() for out in model(x)).backward()
    assert accelerator_calls == dict.fromkeys(ops.ENABLED, 0)
    graph_ops = {str(node.target) for node in exported.graph.nodes if node.op == 'call_function'}
    assert not any('convnext_mm' in op or '.out' in op for op in graph_ops), graph_ops
    for out, ref in zip(exported.module()(x), expected):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_model_checkpoint_and_ops_modules_depend_one_way():
    """The checkpoint package imports nothing from the model; the ops import neither."""
    import ast
    package = os.path.join(ROOT, 'convnext_mm')
    for folder, forbidden in [('checkpoint', ('models', )), ('ops', ('models', 'checkpoint'))]:
        for name in os.listdir(os.path.join(package, folder)):
            if not name.endswith('.py'):
                continue
            tree = ast.parse(open(os.path.join(package, folder, name)).read())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom):
                    module = '.' * node.level + (node.module or '')
                    assert not any(f'.{part}' in module or module.startswith(part)
                                   for part in forbidden), f'{folder}/{name} imports {module}'


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


@pytest.mark.parametrize('arch', list(ConvNeXt.arch_settings))
def test_every_arch_has_timms_parameter_count(arch):
    """Each arch, with the V1 and the V2 block, has the parameters of timm's convnext_<arch> /
    convnextv2_<arch> (those timm defines; built on the meta device) without the classifier
    head, plus the four per-stage output norms: an outside check of the arch table."""
    counts = {}
    for use_grn, prefix in ((False, 'convnext'), (True, 'convnextv2')):
        name = f'{prefix}_{arch}'
        if name not in timm.list_models(name):
            continue
        with torch.device('meta'):
            reference = timm.create_model(name)
            ours = ConvNeXt(arch, use_grn=use_grn)
        body = sum(p.numel() for n, p in reference.named_parameters() if not n.startswith('head'))
        counts[name] = sum(p.numel() for p in ours.parameters())
        assert counts[name] == body + 2 * sum(ours.out_channels), name
    assert counts, f'timm has no convnext_{arch} nor convnextv2_{arch}'
    if arch == 'tiny':
        assert abs(counts['convnext_tiny'] - 27.8e6) < 0.1e6  # the paper's 28 M


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
def test_empty_batch_gives_empty_outputs_and_zero_gradients(memory_format):
    """As timm's: an empty batch passes in inference and training (the CPU accelerators too)."""
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
    rates = [getattr(b.drop_path, 'drop_prob', 0.) for stage in model.stages for b in stage]
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


def test_layernorm_is_accurate_in_half_precision():
    """On bf16 input with a large mean the statistics must not be taken in bf16 (PyTorch's
    kernels accumulate in fp32; a LayerNorm written out in bf16 would be far off)."""
    from convnext_mm.models.backbones.layers import LayerNorm2d
    norm = LayerNorm2d(64, eps=1e-6)
    x = (100 + torch.randn(2, 64, 8, 8)).bfloat16()
    expected = layer_norm_nchw(x.float(), norm)
    out = norm(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=0.01, atol=0.01)
    mean = x.mean(1, keepdim=True)  # the same written out in bf16: what the test rules out
    in_bf16 = (x - mean) / ((x - mean).square().mean(1, keepdim=True) + 1e-6).sqrt()
    assert (in_bf16.float() - expected).abs().max() > 0.05
    model = randomize_(ConvNeXt('atto')).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        low = model(x)
    with torch.no_grad():
        high = model(x)
    for a, b in zip(low, high):
        assert (a.float() - b).abs().mean() < 0.05 * b.abs().mean()


@pytest.mark.parametrize('training', [False, True])
def test_compiles_without_graph_breaks(training):
    """fullgraph compile (the accelerators step aside), same outputs as eager mode."""
    model = randomize_(ConvNeXt('atto')).train(training)
    x = torch.randn(1, 3, 64, 64)
    compiled = torch.compile(model, backend='eager', fullgraph=True)
    with torch.set_grad_enabled(training):
        outs, expected = compiled(x), model(x)
    for a, b in zip(outs, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    if training:
        sum(out.sum() for out in outs).backward()


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
