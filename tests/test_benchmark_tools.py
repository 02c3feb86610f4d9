"""Smoke tests of the benchmark tools (tiny sizes, one repeat) and the FLOP counts they report."""
import json
import re

import pytest
import torch
from conftest import run_tool as run
from mmengine.config import Config

pytest.importorskip('mmdet')
pytest.importorskip('mmseg')


def test_benchmark_backbone_compares_same_weights_and_reports_ratios(tmp_path):
    pytest.importorskip('timm')
    pytest.importorskip('torchvision')
    out = run(['tools/benchmark_backbone.py', '--arch', 'tiny', '--shapes', '1x3x32x32',
               '--precision', 'fp32', 'bf16', '--repeats', '1', '--warmup', '0', '--memory',
               '--ablate',
               # a small peak product: bf16 runs at a few GFLOP/s on CPUs without bf16 units
               '--peak-size', '256',
               '--json', str(tmp_path / 'r.json')])
    difference = float(re.search(r'stage outputs from ours .*: ([0-9.e+-]+)', out).group(1))
    assert difference < 1e-4  # every implementation computes the same function
    result = json.loads((tmp_path / 'r.json').read_text())
    # infer/train x fp32/bf16 (CPU autocast) x channels_last off/on
    assert len(result['results']) == 8
    assert {row['precision'] for row in result['results']} == {'fp32', 'bf16'}
    assert set(result['peak_gflops']) == {'fp32', 'bf16'}
    for precision, by_kernel in result['peak_gflops_by_kernel'].items():
        assert 'mm' in by_kernel and result['peak_gflops'][precision] == max(by_kernel.values())
    ablated = {f'ours without {name}' for name in
               ('depthwise_backward', 'inference_mlp')} | {'ours plain'}
    for row in result['results']:
        assert set(row['images_per_s']) == {'ours', 'timm', 'torchvision', 'official'} | ablated
        assert all(v > 0 for v in row['images_per_s'].values())
        assert set(row['ratios']) == {'timm', 'torchvision', 'official'} | ablated
        # each row against the peak of its own precision
        peak = result['peak_gflops'][row['precision']]
        assert row['ours_percent_of_peak'] == pytest.approx(100 * row['ours_gflops'] / peak)
    memory, = result['memory']
    assert memory['with_cp_mib'] < 0.6 * memory['plain_mib']  # with_cp saves >= 40%


def test_benchmark_backbone_rotates_the_order_and_pairs_rounds():
    import torch
    from conftest import load_tool
    tool = load_tool('benchmark_backbone')
    calls = []
    steps = {name: (lambda name=name: calls.append(name)) for name in ('ours', 'timm', 'tv')}
    times = tool.time_interleaved(steps, repeats=3, warmup=0, device=torch.device('cpu'))
    assert calls == ['ours', 'timm', 'tv', 'timm', 'tv', 'ours', 'tv', 'ours', 'timm']
    assert all(len(v) == 3 for v in times.values())
    # rounds at different machine load: two of three rounds have the reference 2x slower; the
    # paired ratio says so, the ratio of the medians (2 / 4) would say the opposite
    assert tool.paired_speed_ratio([1., 4., 4.], [2., 2., 8.]) == 2.


def test_official_baseline_runs_pytorch_convolution_and_separate_layer_scale():
    """The migration baseline must not borrow our CPU accelerators."""
    import torch
    from conftest import load_tool
    pytest.importorskip('timm')
    block = load_tool('benchmark_backbone').build_implementations('atto')['official'].stages[0][0]
    out = block(torch.randn(1, 40, 8, 8, requires_grad=True))
    names, pending = set(), [out.grad_fn]
    while pending:
        node = pending.pop()
        names.add(type(node).__name__)
        pending += [next_node for next_node, _ in node.next_functions if next_node is not None]
    assert 'ConvolutionBackward0' in names and 'MulBackward0' in names
    assert not any('Depthwise' in name or 'Addcmul' in name for name in names)


def test_benchmark_backbone_profile_lists_the_costliest_operators():
    import torch
    from conftest import load_tool
    tool = load_tool('benchmark_backbone')
    conv = torch.nn.Conv2d(3, 8, 3)
    x = torch.randn(1, 3, 32, 32)
    table = tool.profile_table(lambda: torch.relu(conv(x)).sum(), torch.device('cpu'), rows=2)
    lines = [line for line in table.splitlines() if 'aten::' in line]
    assert len(lines) == 2 and '# of Calls' in table
    assert 'Self CPU' in table


@pytest.mark.parametrize('args,message', [
    (['--shapes', '1x4x64x64'], "shape must be NxCxHxW with C=3, got '1x4x64x64'"),
    (['--profile', '-1'], '--profile must be >= 0 operators, got -1'),
])
def test_benchmark_backbone_rejects_bad_arguments(capsys, args, message):
    from conftest import load_tool
    with pytest.raises(SystemExit) as exit_info:
        load_tool('benchmark_backbone').parse_args(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_get_flops_counts_the_backbone_as_the_paper():
    """ConvNeXt-T at 224: 28 M parameters, 4.47 GFLOPs (the paper: 28 M, 4.5 G)."""
    from convnext_mm import ConvNeXt
    from conftest import load_tool
    (params, flops), = load_tool('get_flops').count(ConvNeXt('tiny').eval(),
                                                     (torch.zeros(1, 3, 224, 224), )).values()
    assert abs(params - 27.8e6) / 27.8e6 < 0.01 and abs(flops - 4.47e9) / 4.47e9 < 0.01


@pytest.mark.parametrize('config,backbone,model', [
    ('cascade_convnext_t_coco', 27.8e6, (86e6, 741e9)),  # at 1280 x 800
    ('upernet_convnext_t_ade20k', 27.8e6, (60e6, 939e9)),  # at 2048 x 512
])
def test_get_flops_matches_the_published_counts(config, backbone, model):
    out = run(['tools/get_flops.py', f'configs/{config}.py'])
    rows = dict(re.findall(r'\| (backbone|model) \| ([0-9.]+ M \| [0-9.]+) \|', out))
    for part, (params, flops) in (('backbone', (backbone, None)), ('model', model)):
        got_params, got_flops = (float(v) for v in rows[part].split(' M | '))
        assert abs(got_params * 1e6 - params) / params < 0.02, (part, got_params)
        if flops is not None:
            assert abs(got_flops * 1e9 - flops) / flops < 0.02, (part, got_flops)


@pytest.mark.parametrize('config', ['cascade_convnext_demo', 'upernet_convnext_demo'])
def test_benchmark_times_a_whole_model_on_toy_data(config):
    out = run(['tools/benchmark.py', f'configs/demo/{config}.py', '--num-images', '2',
               '--warmup', '1', '--cfg-options',
               'test_dataloader.dataset.data_root=/nonexistent/'])
    assert 'not found: timing on toy images' in out
    assert re.search(rf'{config}.py: [0-9.]+ images/s \(2 images, CPU, \d+ threads\)', out)


def test_benchmark_leaves_out_the_warmup_and_divides_images_by_their_time(monkeypatch):
    """A stand-in model whose test_step takes 20 ms after two slow warm-up steps: 50 images/s,
    and every step sees a different image of the (toy) test set."""
    import time
    from conftest import load_tool
    tool = load_tool('benchmark')
    seen = []

    class Model:
        def test_step(self, data):
            seen.append(data['data_samples'][0].img_path)
            time.sleep(0.3 if len(seen) <= 2 else 0.02)
    monkeypatch.setattr(tool, 'build', lambda cfg, checkpoint, device: Model())
    cfg = Config.fromfile('configs/demo/upernet_convnext_demo.py')
    cfg.test_dataloader.dataset.data_root = '/nonexistent/'
    fps = tool.benchmark(cfg, num_images=5, warmup=2)
    assert len(seen) == len(set(seen)) == 7
    assert 40 < fps <= 50


def test_compare_backbones_puts_each_backbone_in_the_recipe_at_its_published_size():
    """Cascade Mask R-CNN: ConvNeXt-T 86M (paper), Swin-T 86M, ResNet-50 82M (mmdet's)."""
    from conftest import load_tool
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    tool = load_tool('compare_backbones')
    register_all_modules(init_default_scope=True)
    import convnext_mm  # noqa: F401
    published = {'Swin-T': 86e6, 'ResNet-50': 82e6}  # ConvNeXt-T's 86M: test_get_flops_...
    assert list(tool.BACKBONES) == ['ConvNeXt-T'] + list(published)
    recipe = Config.fromfile(tool.RECIPE).model
    for name, (backbone, in_channels) in tool.BACKBONES.items():
        cfg = tool.detector_config(backbone, in_channels, (1333, 800))
        assert cfg.model.roi_head == recipe.roi_head and cfg.model.neck.in_channels == in_channels
        if name == 'ConvNeXt-T':
            recipe.backbone.pop('init_cfg')  # the tool times random weights
            assert cfg.model == recipe
            continue
        count = sum(p.numel() for p in MODELS.build(cfg.model).parameters())
        assert abs(count - published[name]) / published[name] < 0.02, (name, count)


def test_compare_backbones_table():
    """The whole tool, in the demo's narrow detector (the recipe's heads on 1000 proposals
    cost a minute of CPU per backbone)."""
    out = run(['tools/compare_backbones.py', '--config', 'configs/demo/cascade_convnext_demo.py',
               '--shape', '128', '128', '--scale', '128', '96', '--num-images', '1',
               '--warmup', '0'])
    rows = re.findall(r'\| (ConvNeXt-T|Swin-T|ResNet-50) \| ([0-9.]+) M \| (\d+) \| ([0-9.]+) \| '
                      r'([0-9.]+)x \|', out)
    assert [r[0] for r in rows] == ['ConvNeXt-T', 'Swin-T', 'ResNet-50']

    def interval(printed):
        half = 0.5 * 10**-len(printed.partition('.')[2])
        return float(printed) - half, float(printed) + half
    # each backbone's speed relative to ConvNeXt-T's: within what the printed speeds' and
    # ratio's rounding allow
    base_low, base_high = interval(rows[0][3])
    for row in rows:
        low, high = interval(row[3])
        assert low / base_high - 0.005 <= float(row[4]) <= high / base_low + 0.005, row
    # the demo's neck and heads (64 channels) with each backbone
    params = {name: float(p) for name, p, *_ in rows}
    assert 28 < params['ConvNeXt-T'] < 33 and 28 < params['Swin-T'] < 33
    assert 23 < params['ResNet-50'] < 28
