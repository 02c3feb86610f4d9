"""The environment: package import, mmcv's compiled ops (guards the source build)."""
import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, run_tool


def test_package_imports_with_version():
    import convnext_mm
    assert convnext_mm.__version__.count('.') == 2


def test_shipped_configs_are_reachable_from_the_package():
    from mmengine.config import Config

    import convnext_mm
    path = convnext_mm.get_config_path('cascade_convnext_t_coco.py')
    assert Config.fromfile(path).model.backbone.type == 'ConvNeXt'
    with pytest.raises(FileNotFoundError, match='no_such.py'):
        convnext_mm.get_config_path('no_such.py')


def test_collect_env_reports_compiled_ops():
    out = run_tool(['tools/collect_env.py'])
    for name in ('torch', 'mmcv', 'mmengine', 'mmdet', 'mmseg', 'timm', 'CUDA available'):
        assert f'\n{name} ' in '\n' + out
    assert 'compiled, loaded' in out
    assert 'smoke test : passed' in out


def test_stack_imports():
    import mmcv
    import mmcv.ops  # noqa: F401
    import mmdet
    import mmseg
    import timm  # noqa: F401
    from packaging.version import Version
    assert Version(mmcv.__version__) < Version('2.2.0')  # as a version: '2.10.0' is later
    assert mmdet.__version__.startswith('3.')
    assert mmseg.__version__.startswith('1.')


def test_roi_align_hand_computed():
    from mmcv.ops import roi_align
    # f(y, x) = 10 * y + x on a 5x5 map; bilinear sampling of a linear map is exact.
    ys, xs = torch.meshgrid(torch.arange(5.), torch.arange(5.), indexing='ij')
    feat = (10 * ys + xs)[None, None]
    # aligned=True: box [1, 1, 3, 3] in pixel-edge coordinates covers pixel centres 0.5..2.5;
    # a 2x2 output with one sample per bin samples the bin centres y, x in {1.0, 2.0}.
    rois = torch.tensor([[0., 1., 1., 3., 3.]])
    out = roi_align(feat, rois, (2, 2), 1.0, 1, 'avg', True)
    expected = torch.tensor([[[[11., 12.], [21., 22.]]]])
    torch.testing.assert_close(out, expected)


def test_roi_align_forward_and_backward_match_torchvision():
    from mmcv.ops import roi_align
    torchvision_ops = pytest.importorskip('torchvision.ops')
    feat = torch.randn(2, 3, 16, 20)
    rois = torch.tensor([[0., 1.3, 2.2, 9.7, 12.1], [1., 0., 0., 19., 15.], [1., 4., 5., 6., 7.]])
    feat.requires_grad_()
    weights = torch.randn(3, 3, 7, 7)
    grads = []
    for op in (lambda: roi_align(feat, rois, (7, 7), 0.5, 2, 'avg', True),
               lambda: torchvision_ops.roi_align(feat, rois, (7, 7), 0.5, 2, True)):
        out = op()
        (out * weights).sum().backward()
        grads.append((out.detach(), feat.grad.clone()))
        feat.grad = None
    (ours, ours_grad), (reference, reference_grad) = grads
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_grad, reference_grad, rtol=1e-5, atol=1e-5)


def test_batched_nms_hand_computed():
    from mmcv.ops import batched_nms
    # IoU(box0, box1) = 81 / 119 = 0.68; box2 is disjoint; box3 is inside box0 (IoU 0.25).
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [20., 20., 30., 30.],
                          [0., 0., 5., 5.]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    cfg = dict(type='nms', iou_threshold=0.5)
    dets, keep = batched_nms(boxes, scores, torch.tensor([0, 0, 0, 0]), cfg)
    assert keep.tolist() == [0, 2, 3]
    torch.testing.assert_close(dets[:, 4], torch.tensor([0.9, 0.7, 0.6]))
    _, keep = batched_nms(boxes, scores, torch.tensor([0, 1, 0, 0]), cfg)
    assert keep.tolist() == [0, 1, 2, 3]  # different classes never suppress each other
    _, keep = batched_nms(boxes, scores, torch.tensor([0, 0, 0, 0]),
                          dict(type='nms', iou_threshold=0.7))
    assert keep.tolist() == [0, 1, 2, 3]


INHERITING_CONFIG = '''\
from mmengine.config import read_base

with read_base():
    from convnext_mm.configs.cascade_convnext_t_coco import *

model.backbone.drop_path_rate = 0.2
'''

BUILD_INHERITING_CONFIG = '''\
import json, sys
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import MODELS, init_default_scope

cfg = Config.fromfile('my_cascade.py')  # registers ConvNeXt: nothing else imports it here
inherited = cfg.to_dict()
init_default_scope(cfg.default_scope)
model = MODELS.build(cfg.model)
cfg.optim_wrapper.type = 'OptimWrapper'  # the recipe's AmpOptimWrapper needs a GPU
optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
recipe = Config.fromfile(sys.argv[1]).to_dict()
recipe['model']['backbone']['drop_path_rate'] = 0.2
import convnext_mm
print(json.dumps(dict(
    package=convnext_mm.__file__, equals_recipe=inherited == recipe,
    model=type(model).__name__, backbone=type(model.backbone).__name__,
    last_drop_prob=model.backbone.stages[-1][-1].drop_path.drop_prob,
    lrs=sorted({group['lr'] for group in optim_wrapper.optimizer.param_groups}))))
'''


def test_a_config_anywhere_inherits_a_recipe_from_the_installed_wheel(tmp_path):
    """`with read_base(): from convnext_mm.configs.NAME import *` in a config outside the
    repository, against a built wheel installed into a folder (not an editable install)."""
    import zipfile

    source = tmp_path / 'source'
    for part in ('convnext_mm', 'configs'):
        shutil.copytree(os.path.join(ROOT, part), source / part,
                        ignore=shutil.ignore_patterns('__pycache__', '.mim'))
    for part in ('setup.py', 'README.md'):
        shutil.copy(os.path.join(ROOT, part), source / part)
    pip = [sys.executable, '-m', 'pip', '-q']
    subprocess.run(pip + ['wheel', '--no-deps', '--no-build-isolation', '-w', str(tmp_path),
                          str(source)], check=True, capture_output=True)
    wheel, = tmp_path.glob('convnext_mm-*.whl')
    subprocess.run(pip + ['install', '--no-deps', '--target', str(tmp_path / 'site'),
                          str(wheel)], check=True, capture_output=True)

    recipes = {os.path.relpath(path, os.path.join(ROOT, 'configs'))
               for path in glob.glob(os.path.join(ROOT, 'configs', '**', '*.py'), recursive=True)}
    shipped = zipfile.ZipFile(wheel).namelist()
    for folder in ('convnext_mm/configs/', 'convnext_mm/.mim/configs/'):
        assert {name[len(folder):] for name in shipped if name.startswith(folder)} == recipes

    user = tmp_path / 'user'
    user.mkdir()
    (user / 'my_cascade.py').write_text(INHERITING_CONFIG)
    run = subprocess.run(
        [sys.executable, '-c', BUILD_INHERITING_CONFIG,
         os.path.join(ROOT, 'configs', 'cascade_convnext_t_coco.py')],
        cwd=user, env=dict(os.environ, PYTHONPATH=str(tmp_path / 'site'), PYTHONWARNINGS='ignore'),
        capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    built = json.loads(run.stdout.strip().splitlines()[-1])
    assert built['package'].startswith(str(tmp_path / 'site'))
    assert built['equals_recipe']
    assert (built['model'], built['backbone']) == ('CascadeRCNN', 'ConvNeXt')
    assert built['last_drop_prob'] == pytest.approx(0.2)
    assert max(built['lrs']) == pytest.approx(2e-4) and len(built['lrs']) == 8  # 0.7 ** (0..7)
