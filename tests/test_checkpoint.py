"""Checkpoint formats: round trips through init_cfg, the converter, and clear errors."""
import os
import re

import pytest
import torch
from conftest import randomize_, run_tool

from convnext_mm import ConvNeXt
from convnext_mm.checkpoint import CheckpointError, detect_layout, to_convnext_mm

MMPRETRAIN_NAMES = {'dwconv': 'depthwise_conv', 'pwconv1': 'pointwise_conv1',
                    'pwconv2': 'pointwise_conv2'}


def official_classifier(backbone_sd, channels):
    """An official classification checkpoint: {'model': ...} with final norm and head."""
    model = {k: v for k, v in backbone_sd.items() if not re.match(r'norm\d\.', k)}
    model.update({'norm.weight': torch.rand(channels), 'norm.bias': torch.rand(channels),
                  'head.weight': torch.rand(10, channels), 'head.bias': torch.rand(10)})
    return {'model': model}


def official_detector(backbone_sd, channels):
    """A full mmdet checkpoint of the official detection backbone."""
    state = {f'backbone.{k}': v for k, v in backbone_sd.items()}
    state['neck.lateral_convs.0.conv.weight'] = torch.rand(4, channels, 1, 1)
    return {'state_dict': state, 'meta': {'epoch': 36}}


def mmpretrain_classifier(backbone_sd, channels):
    state = {}
    for k, v in backbone_sd.items():
        if re.match(r'norm\d\.', k):
            continue
        for ours, theirs in MMPRETRAIN_NAMES.items():
            k = k.replace(f'.{ours}.', f'.{theirs}.')
        if k.endswith('.grn.gamma') or k.endswith('.grn.beta'):
            v = v.flatten()  # mmpretrain keeps GRN parameters 1-D
        state[f'backbone.{k}'] = v
    state['backbone.norm3.weight'] = torch.rand(channels)  # the classifier's final norm
    state['backbone.norm3.bias'] = torch.rand(channels)
    state['head.fc.weight'] = torch.rand(10, channels)
    return {'state_dict': state}


WRITERS = {'official_cls': official_classifier, 'official_det': official_detector,
           'mmpretrain': mmpretrain_classifier}


def save(obj, path):
    if path.endswith('.safetensors'):
        from safetensors.torch import save_file
        tensors = obj.get('state_dict', obj.get('model', obj))
        save_file({k: v.contiguous() for k, v in tensors.items()}, path)
    else:
        torch.save(obj, path)
    return path


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
@pytest.mark.parametrize('layout', list(WRITERS))
@pytest.mark.parametrize('use_grn', [False, True])
def test_layouts_round_trip_through_init_cfg(tmp_path, layout, suffix, use_grn):
    source = randomize_(ConvNeXt('atto', use_grn=use_grn)).eval()
    path = save(WRITERS[layout](source.state_dict(), 320), str(tmp_path / f'ckpt{suffix}'))
    loaded = ConvNeXt('atto', use_grn=use_grn, init_cfg=dict(type='Pretrained', checkpoint=path))
    loaded.init_weights()
    loaded.eval()
    keeps_output_norms = layout == 'official_det'
    if not keeps_output_norms:  # classifiers carry no per-stage norms: they start fresh
        for name, p in loaded.named_parameters():
            if re.match(r'norm\d\.', name):
                expected = torch.ones_like(p) if name.endswith('weight') else torch.zeros_like(p)
                torch.testing.assert_close(p.detach(), expected)
                source.get_parameter(name).data.copy_(expected)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(loaded(x), source(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_detects_every_layout():
    timm = pytest.importorskip('timm')
    torchvision = pytest.importorskip('torchvision')
    sd = ConvNeXt('atto').state_dict()
    assert detect_layout(sd) == 'official'
    assert detect_layout(timm.create_model('convnext_atto').state_dict()) == 'timm'
    assert detect_layout(torchvision.models.convnext_tiny().state_dict()) == 'torchvision'
    mm = mmpretrain_classifier(sd, 320)['state_dict']
    assert to_convnext_mm({'state_dict': mm})[1] == "mmpretrain ({'state_dict': ...} with backbone. prefix)"


def test_heads_and_classifier_norms_are_dropped():
    sd = ConvNeXt('atto').state_dict()
    converted, _ = to_convnext_mm(official_classifier(sd, 320))
    assert not any(k.startswith(('head', 'norm')) for k in converted)
    converted, _ = to_convnext_mm(mmpretrain_classifier(sd, 320))
    assert not any(k.startswith(('head', 'norm')) for k in converted)
    converted, _ = to_convnext_mm(official_detector(sd, 320))
    assert {f'norm{i}.weight' for i in range(4)} <= set(converted)
    assert not any(k.startswith('neck') for k in converted)


def test_resnet_checkpoint_is_rejected_clearly(tmp_path):
    torchvision = pytest.importorskip('torchvision')
    path = save(torchvision.models.resnet18().state_dict(), str(tmp_path / 'r18.pth'))
    model = ConvNeXt('atto', init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(CheckpointError, match='looks like a ResNet'):
        model.init_weights()


@pytest.mark.parametrize('source_arch,match', [
    ('femto', r"format: official .*arch: femto V1\).*arch: atto V1\).*shape mismatch"),
    ('nano', r"arch: nano V1\).*stage depths \[2, 2, 8, 2\] vs \[2, 2, 6, 2\]"),
])
def test_wrong_arch_checkpoint_names_format_and_arch(tmp_path, source_arch, match):
    path = save(official_classifier(ConvNeXt(source_arch).state_dict(), 10),
                str(tmp_path / 'ckpt.pth'))
    if source_arch == 'nano':  # same channels as atto but deeper: only depths differ
        sd = ConvNeXt(dict(depths=[2, 2, 8, 2], channels=[40, 80, 160, 320])).state_dict()
        path = save({'model': sd}, path)
        match = match.replace('nano V1', r'depths=\[2, 2, 8, 2\] channels=\[40, 80, 160, 320\] V1')
    model = ConvNeXt('atto', init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(CheckpointError, match=match):
        model.init_weights()


def test_truncated_and_missing_files(tmp_path):
    path = save({'model': ConvNeXt('atto').state_dict()}, str(tmp_path / 'ckpt.pth'))
    with open(path, 'rb') as f:
        data = f.read()
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(data[:len(data) // 2])
    model = ConvNeXt('atto', init_cfg=dict(type='Pretrained', checkpoint=str(truncated)))
    with pytest.raises(CheckpointError, match='truncated.pth'):
        model.init_weights()
    missing = ConvNeXt('atto', init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'no.pth')))
    with pytest.raises(FileNotFoundError, match='no.pth'):
        missing.init_weights()


class _RunsCode:

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


def test_checkpoint_with_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / 'pwned'
    path = str(tmp_path / 'evil.pth')
    torch.save({'model': ConvNeXt('atto').state_dict(), 'x': _RunsCode(str(marker))}, path)
    model = ConvNeXt('atto', init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(CheckpointError, match='Refused to load'):
        model.init_weights()
    assert not marker.exists()


def test_fcmae_checkpoint_is_rejected_clearly():
    with pytest.raises(CheckpointError, match='FCMAE'):
        to_convnext_mm({'model': {'encoder.stages.0.0.dwconv.kernel': torch.zeros(1)}})


@pytest.mark.parametrize('dst_suffix', ['.pth', '.safetensors'])
def test_convert_checkpoint_tool(tmp_path, dst_suffix):
    timm = pytest.importorskip('timm')
    reference = randomize_(timm.create_model('convnext_atto'))
    src = save(reference.state_dict(), str(tmp_path / 'timm.pth'))
    dst = str(tmp_path / f'out{dst_suffix}')
    assert 'timm (plain state dict), atto V1' in run_tool(['tools/convert_checkpoint.py', src, dst])
    model = ConvNeXt('atto', init_cfg=dict(type='Pretrained', checkpoint=dst))
    model.init_weights()
    # timm's atto stores its MLP as 1x1 convolutions; ours are Linear layers.
    torch.testing.assert_close(model.stages[2][5].pwconv1.weight,
                               reference.stages[2].blocks[5].mlp.fc1.weight.flatten(1))
    if dst_suffix == '.pth':  # loadable by mmengine's load_from as a detector checkpoint
        keys = torch.load(dst, weights_only=True)['state_dict']
        assert all(k.startswith('backbone.') for k in keys)
    bad = run_tool(['tools/convert_checkpoint.py', src, str(tmp_path / 'x.ckpt')], returncode=1)
    assert "x.ckpt" in bad
