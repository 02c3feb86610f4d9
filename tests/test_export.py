"""tools/export_onnx.py: backbone, UperNet segmentor and detector first stage with dynamic sizes,
checked with onnxruntime against mmseg's and mmdet's own inference; graphs that half-precision
engines can run (one LayerNormalization per LayerNorm, one ReduceL2 per GRN)."""
import collections
import os.path as osp
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, load_tool
from conftest import run_tool as run
from mmengine.config import Config

from convnext_mm.deploy import ExportableAdaptiveAvgPool2d, with_exportable_pooling
from convnext_mm.models import ConvNeXt

onnx = pytest.importorskip('onnx')
onnxruntime = pytest.importorskip('onnxruntime')

UPERNET_T = osp.join(ROOT, 'configs', 'upernet_convnext_t_ade20k.py')
DEMO_DET = osp.join(ROOT, 'configs', 'demo', 'cascade_convnext_demo.py')
DEMO_SEG = osp.join(ROOT, 'configs', 'demo', 'upernet_convnext_demo.py')
# Layer scale 1 instead of 1e-6: freshly built blocks then change their input noticeably.
NONTRIVIAL_BLOCKS = ['--cfg-options', 'model.backbone.layer_scale_init_value=1.0']


def op_counts(path):
    """How often each op occurs in the graph, which must hold standard ONNX ops only (no
    custom op of this project or of torch, no local functions)."""
    model = onnx.load(path)
    assert {node.domain for node in model.graph.node} == {''} and not model.functions
    return collections.Counter(node.op_type for node in model.graph.node)


def onnxruntime_outputs(path, image):
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    return session.run(None, {'image': image.numpy()})


def reported_differences(log):
    """The tool's 'HxW: diff' pairs."""
    return {size: float(d) for size, d in re.findall(r'(\d+x\d+): (\d\.\d+e[-+]\d+)', log)}


def test_exportable_pooling_equals_adaptive_avg_pool2d_at_every_size():
    """UperNet's pyramid pooling (1, 2, 3, 6), also for sizes that do not divide the input."""
    for height in range(1, 30):
        for width in (1, 4, 7, 13, 32):
            x = torch.randn(2, 3, height, width)
            for size in (1, 2, 3, 6, (2, 5), (None, 3)):
                torch.testing.assert_close(ExportableAdaptiveAvgPool2d(size)(x),
                                           F.adaptive_avg_pool2d(x, size), rtol=0, atol=1e-6)
    head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(3), torch.nn.Conv2d(3, 3, 1))
    swapped = with_exportable_pooling(head)
    assert isinstance(swapped[0], ExportableAdaptiveAvgPool2d) and swapped[0].output_size == 3
    assert isinstance(head[0], torch.nn.AdaptiveAvgPool2d)  # the model itself is unchanged


@pytest.fixture(scope='module')
def upernet_tiny(tmp_path_factory):
    """UperNet-T built from its recipe (layer scale 1, so that fresh blocks do something) with
    every LayerNorm's weight and bias drawn at random (identical norms could be merged by the
    exporter's optimiser), saved as a checkpoint: (model, checkpoint path)."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    cfg = Config.fromfile(UPERNET_T)
    cfg.model.backbone.init_cfg = None
    cfg.model.backbone.layer_scale_init_value = 1.0
    segmentor = MODELS.build(cfg.model).eval()
    with torch.no_grad():
        for module in segmentor.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.normal_(1, 0.1)
                module.bias.normal_(0, 0.1)
    checkpoint = str(tmp_path_factory.mktemp('upernet') / 'upernet_t.pth')
    torch.save({'state_dict': segmentor.state_dict()}, checkpoint)
    return segmentor, checkpoint


def test_backbone_part_exports_the_backbone_with_a_named_output_per_stage(tmp_path, monkeypatch):
    """--part backbone hands the exporter and the onnxruntime check the model's backbone with
    one output per stage (the graph of a ConvNeXt itself is checked inside UperNet-T's and the
    V2 detector's exports: a third export would cost 25 s for the same graph)."""
    import convnext_mm.deploy
    export_tool = load_tool('export_onnx')
    exported = {}

    def export(module, out, shape, dynamic, names):
        exported.update(module=module, names=names, dynamic=dynamic)
        open(out, 'wb').write(b'graph')

    monkeypatch.setattr(convnext_mm.deploy, 'export_onnx', export)
    monkeypatch.setattr(convnext_mm.deploy, 'max_abs_differences',
                        lambda module, path, shapes: {shape: 0.0 for shape in shapes})
    export_tool.main([DEMO_SEG, '--part', 'backbone', '--out', str(tmp_path / 'b.onnx'),
                      '--shape', '64', '64', '--dynamic'])
    assert isinstance(exported['module'], ConvNeXt) and exported['dynamic']
    assert exported['names'] == [f'stage{i}' for i in range(4)]


def test_upernet_tiny_exports_logits_equal_to_mmsegs_at_unseen_sizes(upernet_tiny, tmp_path):
    segmentor, checkpoint = upernet_tiny
    out = str(tmp_path / 'upernet.onnx')
    log = run(['tools/export_onnx.py', UPERNET_T, checkpoint, '--out', out, '--shape', '64',
               '64', '--dynamic', '--check-shape', '96', '160'] + NONTRIVIAL_BLOCKS)
    assert list(reported_differences(log)) == ['64x64', '96x160']
    assert max(reported_differences(log).values()) <= 1e-4
    assert 'outputs logits' in log and 'mean [123.675, 116.28, 103.53]' in log
    counts = op_counts(out)
    # one LayerNormalization per LayerNorm (no pow/sqrt chain): ConvNeXt-T's 18 blocks, the
    # stem, 3 downsampling layers and 4 output norms; UperNet's head has none
    layer_norms = sum(isinstance(m, torch.nn.LayerNorm) for m in segmentor.modules())
    assert counts['LayerNormalization'] == layer_norms == 26
    assert not {'Pow', 'Sqrt', 'ReduceSumSquare', 'ReduceL2'} & set(counts)
    image = torch.randn(2, 3, 128, 96)  # batch 2 at a third size
    with torch.no_grad():
        want = segmentor.encode_decode(image, [dict(img_shape=(128, 96))] * 2)
    got, = onnxruntime_outputs(out, image)
    assert got.shape == (2, 150, 128, 96)
    np.testing.assert_allclose(got, want.numpy(), rtol=0, atol=1e-4)


def test_detector_first_stage_with_the_v2_block_exports_with_dynamic_size(tmp_path):
    """Backbone (ConvNeXt V2 blocks), FPN and RPN head of the demo Cascade Mask R-CNN as one
    graph (the RoI heads stay out: docs/export.md); GRN's L2 norm over H and W is one ReduceL2
    (fp16 engines accumulate it safely), not a pow / sum / sqrt chain. GRN's weights are drawn
    at random (fresh ones are zero, which makes GRN the identity whatever its axes)."""
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    cfg = Config.fromfile(DEMO_DET)
    cfg.model.backbone.use_grn = True
    detector = MODELS.build(cfg.model)
    detector.init_weights()
    with torch.no_grad():
        for module in detector.backbone.modules():
            if type(module).__name__ == 'GRN':
                module.gamma.normal_(0, 0.5)
                module.beta.normal_(0, 0.1)
    checkpoint = str(tmp_path / 'v2_detector.pth')
    torch.save({'state_dict': detector.state_dict()}, checkpoint)
    out = str(tmp_path / 'first_stage.onnx')
    log = run(['tools/export_onnx.py', DEMO_DET, checkpoint, '--out', out, '--shape', '128',
               '128', '--dynamic', '--cfg-options', 'model.backbone.use_grn=True'])
    assert max(reported_differences(log).values()) <= 1e-4
    counts = op_counts(out)
    backbone = ConvNeXt('atto', use_grn=True)
    assert counts['ReduceL2'] == sum(type(m).__name__ == 'GRN' for m in backbone.modules()) == 12
    assert counts['LayerNormalization'] > 0  # the exact count: the UperNet-T test above
    assert not {'Pow', 'Sqrt', 'ReduceSumSquare'} & set(counts)
    names = [o.name for o in onnx.load(out).graph.output]
    assert names == [f'{kind}{i}' for kind in ('feature', 'rpn_score', 'rpn_delta')
                     for i in range(5)]
    shapes = [o.shape for o in onnxruntime_outputs(out, torch.randn(1, 3, 96, 160))]
    assert shapes[:5] == [(1, 64, 24 // 2**i, 40 // 2**i) for i in range(3)] + [
        (1, 64, 3, 5), (1, 64, 2, 3)]
    assert shapes[5][1] == 3 and shapes[10][1] == 12  # 3 anchors: a score and 4 deltas each


def test_export_tool_refuses_bad_arguments(tmp_path, capsys):
    export_tool = load_tool('export_onnx')
    for args, message in (
            (['--out', 'model.pt'], "--out must end in .onnx, got 'model.pt'"),
            (['--out', 'm.onnx', '--shape', '16', '64'], '--shape must be at least 32 32'),
            (['--out', 'm.onnx', '--check-shape', '64', '64'], '--check-shape needs --dynamic')):
        with pytest.raises(SystemExit):
            export_tool.main([UPERNET_T] + args)
        assert message in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match=r"Checkpoint not found: '.*missing.pth'"):
        export_tool.main([UPERNET_T, str(tmp_path / 'missing.pth'), '--out', 'm.onnx'])


def test_an_export_that_fails_its_check_is_kept_apart(tmp_path, monkeypatch):
    """Over --atol at the second size, or onnxruntime failing there (what the exporter's baked-in
    pooling windows did: docs/export.md), the tool exits 1 and keeps the file as
    NAME.unverified.onnx; nothing is written under --out."""
    import convnext_mm.deploy
    export_tool = load_tool('export_onnx')
    monkeypatch.setattr(export_tool, 'build_model', lambda cfg, checkpoint: None)
    monkeypatch.setattr(export_tool, 'exported_part', lambda model, scope, part: (None, ['x']))
    monkeypatch.setattr(convnext_mm.deploy, 'with_exportable_pooling', lambda model: model)
    monkeypatch.setattr(convnext_mm.deploy, 'export_onnx',
                        lambda model, out, *args: open(out, 'wb').write(b'graph'))
    for second, shown in ((0.247, '2.47e-01'),
                          ('onnxruntime failed: GatherND ... invalid index', 'onnxruntime failed')):
        monkeypatch.setattr(convnext_mm.deploy, 'max_abs_differences',
                            lambda model, path, shapes: {(128, 128): 2e-6, (160, 192): second})
        out = tmp_path / 'model.onnx'
        with pytest.raises(SystemExit, match=r'onnxruntime differs from PyTorch by more than '
                           r'--atol 0.0001 or fails \(128x128: 2.00e-06, 160x192: '
                           + re.escape(shown) + r'.*\); the file is kept as .*model.unverified'):
            export_tool.main([DEMO_SEG, '--out', str(out), '--shape', '128', '128', '--dynamic'])
        assert not out.exists() and (tmp_path / 'model.unverified.onnx').read_bytes() == b'graph'
