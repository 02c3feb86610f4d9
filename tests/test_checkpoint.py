"""Checkpoint formats: round trips through init_cfg, the converter, and clear errors."""
import ast
import os
import re
import sys

import pytest
import torch
from conftest import randomize_, run_tool

from convnext_mm import ConvNeXt
from convnext_mm.arch import ARCH_SETTINGS
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


def mmpretrain_fcmae(backbone_sd, channels):
    """mmpretrain's converted FCMAE encoders ('convnext-v2-*_3rdparty-fcmae_in1k'): its layout,
    the backbone alone (FCMAE has no final norm or head)."""
    state = mmpretrain_classifier(backbone_sd, channels)['state_dict']
    return {'state_dict': {k: v for k, v in state.items()
                           if not k.startswith(('head.', 'backbone.norm3.'))}}


WRITERS = {'official_cls': official_classifier, 'official_det': official_detector,
           'mmpretrain': mmpretrain_classifier, 'mmpretrain_fcmae': mmpretrain_fcmae}


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


# --- ConvNeXt-V2 FCMAE pre-training checkpoints ----------------------------------------------

def fcmae_checkpoint(arch):
    """What the official ConvNeXt-V2 main_pretrain.py saves under 'model' (models/fcmae.py: the
    sparse encoder of models/convnextv2_sparse.py with D=2, then proj, mask_token, one dense
    decoder block of 512 channels and pred for 32x32 patches): every key and shape, random
    values. MinkowskiEngine keeps kernels as (kernel volume, in, out) or, depthwise, (volume,
    channels), biases and GRN parameters as (1, C); its LayerNorm and Linear wrap torch's as
    `.ln` and `.linear`."""
    depths, dims = ARCH_SETTINGS[arch]['depths'], ARCH_SETTINGS[arch]['channels']
    generator = torch.Generator().manual_seed(0)

    def rand(*shape, around=0.):
        return around + 0.2 * torch.randn(*shape, generator=generator)

    model = {'encoder.downsample_layers.0.0.weight': rand(dims[0], 3, 4, 4),
             'encoder.downsample_layers.0.0.bias': rand(dims[0]),
             'encoder.downsample_layers.0.1.weight': rand(dims[0], around=1.),
             'encoder.downsample_layers.0.1.bias': rand(dims[0])}
    for i in range(1, 4):
        layer = f'encoder.downsample_layers.{i}'
        model.update({f'{layer}.0.ln.weight': rand(dims[i - 1], around=1.),
                      f'{layer}.0.ln.bias': rand(dims[i - 1]),
                      f'{layer}.1.kernel': rand(4, dims[i - 1], dims[i]),
                      f'{layer}.1.bias': rand(1, dims[i])})
    for i, (depth, c) in enumerate(zip(depths, dims)):
        for j in range(depth):
            block = f'encoder.stages.{i}.{j}'
            model.update({f'{block}.dwconv.kernel': rand(49, c), f'{block}.dwconv.bias': rand(1, c),
                          f'{block}.norm.ln.weight': rand(c, around=1.),
                          f'{block}.norm.ln.bias': rand(c),
                          f'{block}.pwconv1.linear.weight': rand(4 * c, c),
                          f'{block}.pwconv1.linear.bias': rand(4 * c),
                          f'{block}.grn.gamma': rand(1, 4 * c), f'{block}.grn.beta': rand(1, 4 * c),
                          f'{block}.pwconv2.linear.weight': rand(c, 4 * c),
                          f'{block}.pwconv2.linear.bias': rand(c)})
    decoder = {'proj.weight': rand(512, dims[3], 1, 1), 'proj.bias': rand(512),
               'mask_token': rand(1, 512, 1, 1),
               'decoder.0.dwconv.weight': rand(512, 1, 7, 7), 'decoder.0.dwconv.bias': rand(512),
               'decoder.0.norm.weight': rand(512), 'decoder.0.norm.bias': rand(512),
               'decoder.0.pwconv1.weight': rand(2048, 512), 'decoder.0.pwconv1.bias': rand(2048),
               'decoder.0.grn.gamma': rand(1, 1, 1, 2048), 'decoder.0.grn.beta': rand(1, 1, 1, 2048),
               'decoder.0.pwconv2.weight': rand(512, 2048), 'decoder.0.pwconv2.bias': rand(512),
               'pred.weight': rand(3072, 512, 1, 1), 'pred.bias': rand(3072)}
    return {'model': {**model, **decoder}}


def official_remap(model):
    """The official fine-tuning code's remapping (ConvNeXt-V2 utils.remap_checkpoint_keys), as
    it describes each step: drop 'encoder.', turn kernels into weights, drop 'ln'/'linear',
    flatten (1, C) biases, make GRN parameters (1, 1, 1, C). The decoder keys go through
    unchanged, as there."""
    remapped = {}
    for key, value in model.items():
        key = key[len('encoder.'):] if key.startswith('encoder') else key
        if key.endswith('kernel'):
            size = int(value.shape[0] ** 0.5)
            if value.dim() == 3:
                volume, c_in, c_out = value.shape
                weight = value.permute(2, 1, 0).reshape(c_out, c_in, size, size).transpose(3, 2)
            else:
                volume, c = value.shape
                weight = value.permute(1, 0).reshape(c, 1, size, size).transpose(3, 2)
            remapped[key[:-len('kernel')] + 'weight'] = weight
            continue
        parts = key.split('.')
        if 'ln' in parts or 'linear' in parts:
            parts.pop(-2)
        remapped['.'.join(parts)] = value
    for key, value in remapped.items():
        if key.endswith('bias') and value.dim() != 1:
            remapped[key] = value.reshape(-1)
        elif 'grn' in key:
            remapped[key] = value.reshape(1, 1, 1, -1)
    return remapped


@pytest.mark.parametrize('arch', ['atto', 'tiny'])
def test_fcmae_checkpoint_loads_as_the_official_remapping(tmp_path, arch):
    """An FCMAE checkpoint loads with every encoder tensor used, the decoder dropped and named,
    and computes what the V2 backbone given the official remapping computes."""
    checkpoint = fcmae_checkpoint(arch)
    converted, source = to_convnext_mm(checkpoint)
    assert source.startswith("fcmae ({'model': ...}; FCMAE decoder dropped: 15 tensors of "
                             "['decoder', 'mask_token', 'pred', 'proj']")
    model = ConvNeXt(arch, use_grn=True)
    backbone_keys = {k for k in model.state_dict() if not re.match(r'norm\d\.', k)}
    assert set(converted) == backbone_keys  # nothing missing but the per-stage output norms

    path = save(checkpoint, str(tmp_path / f'convnextv2_{arch}_1k_224_fcmae.pt'))
    reference = save({'model': official_remap(checkpoint['model'])}, str(tmp_path / 'dense.pth'))
    loaded, expected = (ConvNeXt(arch, use_grn=True, init_cfg=dict(type='Pretrained', checkpoint=p))
                        for p in (path, reference))
    for m in (loaded, expected):
        m.init_weights()
        m.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(loaded(x), expected(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_fcmae_kernels_keep_minkowski_spatial_order():
    """A MinkowskiEngine kernel's volume index runs over the first spatial axis fastest (the
    official remapping: offset (h, w) is index w * k + h): the converted convolutions equal
    sums of shifted inputs weighted by the raw kernel entries."""
    checkpoint = fcmae_checkpoint('atto')['model']
    converted, _ = to_convnext_mm({'model': checkpoint})
    x = torch.randn(1, 40, 12, 10)
    kernel, bias = checkpoint['encoder.stages.0.1.dwconv.kernel'], checkpoint['encoder.stages.0.1.dwconv.bias']
    padded = torch.nn.functional.pad(x, (3, 3, 3, 3))
    expected = bias.reshape(1, -1, 1, 1) + sum(
        kernel[k].reshape(1, -1, 1, 1) * padded[:, :, k % 7:k % 7 + 12, k // 7:k // 7 + 10]
        for k in range(49))
    got = torch.nn.functional.conv2d(x, converted['stages.0.1.dwconv.weight'],
                                     converted['stages.0.1.dwconv.bias'], padding=3, groups=40)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    kernel = checkpoint['encoder.downsample_layers.1.1.kernel']  # (4, 40, 80), stride 2
    expected = sum(torch.einsum('nihw,io->nohw', x[:, :, k % 2::2, k // 2::2], kernel[k])
                   for k in range(4))
    got = torch.nn.functional.conv2d(x, converted['downsample_layers.1.1.weight'], stride=2)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_fcmae_checkpoint_through_the_converter(tmp_path):
    src = save(fcmae_checkpoint('atto'), str(tmp_path / 'convnextv2_atto_1k_224_fcmae.pt'))
    dst = str(tmp_path / 'atto_fcmae_mm.pth')
    out = run_tool(['tools/convert_checkpoint.py', src, dst])
    assert "fcmae ({'model': ...}; FCMAE decoder dropped: 15 tensors" in out and 'atto V2' in out
    converted = torch.load(dst, weights_only=True)['state_dict']
    expected = official_remap(fcmae_checkpoint('atto')['model'])
    assert set(converted) == {f'backbone.{k}' for k in expected if k.startswith(('downsample', 'stages'))}
    torch.testing.assert_close(converted['backbone.stages.3.1.dwconv.weight'],
                               expected['stages.3.1.dwconv.weight'])


def test_dense_fcmae_release_drops_the_decoder_by_name():
    """A remapped (dense) FCMAE file, encoder and decoder, loads as the official layout."""
    dense = official_remap(fcmae_checkpoint('atto')['model'])
    converted, source = to_convnext_mm({'model': dense})
    assert source.startswith("official ({'model': ...}; FCMAE decoder dropped: 15 tensors")
    assert set(converted) == {k for k in dense if k.startswith(('downsample', 'stages'))}


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


@pytest.fixture
def checkpoint_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving ``tmp_path/served``: ``/cut/NAME`` announces NAME's
    full size and sends half of it; every request is counted by path."""
    import http.server
    import threading
    served = tmp_path / 'served'
    served.mkdir()
    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            cut = self.path.startswith('/cut/')
            path = served / self.path.split('/')[-1]
            if not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            self.send_response(200)
            self.send_header('Content-Length', str(len(data)))
            self.end_headers()
            self.wfile.write(data[:len(data) // 2] if cut else data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hub_dir = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / 'torch_hub'))
    try:
        yield f'http://127.0.0.1:{server.server_address[1]}', served, requests
    finally:
        torch.hub.set_dir(hub_dir)
        server.shutdown()
        server.server_close()


def test_url_checkpoint_is_downloaded_once_into_the_cache(checkpoint_server, tmp_path):
    url, served, requests = checkpoint_server
    source = randomize_(ConvNeXt('atto')).eval()
    save(official_classifier(source.state_dict(), 320), str(served / 'atto.pth'))
    cache = tmp_path / 'torch_hub' / 'checkpoints'
    for _ in range(2):
        model = ConvNeXt('atto', init_cfg=dict(type='Pretrained', checkpoint=f'{url}/atto.pth'))
        model.init_weights()
        torch.testing.assert_close(model.stages[3][1].pwconv2.weight,
                                   source.stages[3][1].pwconv2.weight, rtol=0, atol=0)
    assert requests == ['/atto.pth'] and os.listdir(cache) == ['atto.pth']


def test_url_cut_short_or_not_a_checkpoint_is_refused_and_not_cached(checkpoint_server, tmp_path):
    url, served, requests = checkpoint_server
    save({'model': ConvNeXt('atto').state_dict()}, str(served / 'atto.pth'))
    (served / 'page.pth').write_text('<html>404 - the file moved</html>')
    cache = tmp_path / 'torch_hub' / 'checkpoints'
    with pytest.raises(CheckpointError, match=rf"The download of '{url}/cut/atto.pth' was cut "
                       r'short: \d+ of \d+ bytes; nothing was cached'):
        ConvNeXt('atto', init_cfg=dict(type='Pretrained',
                                       checkpoint=f'{url}/cut/atto.pth')).init_weights()
    with pytest.raises(CheckpointError, match=rf"(?s)'{url}/page.pth' is not a checkpoint this "
                       r'project reads: .*nothing was cached'):
        ConvNeXt('atto', init_cfg=dict(type='Pretrained',
                                       checkpoint=f'{url}/page.pth')).init_weights()
    with pytest.raises(CheckpointError, match=rf"Cannot download '{url}/missing.pth': HTTP "
                       r'Error 404'):
        ConvNeXt('atto', init_cfg=dict(type='Pretrained',
                                       checkpoint=f'{url}/missing.pth')).init_weights()
    assert os.listdir(cache) == []  # nothing half-written stays


def test_the_log_names_what_was_dropped_and_what_is_missing(tmp_path):
    """Loading is not strict: the log is the only sign of a partial load. A classifier
    checkpoint without its last block: the head and final norm are named as dropped, the last
    block's tensors as kept at their init."""
    import logging

    from mmengine.logging import MMLogger
    model_sd = ConvNeXt('atto').state_dict()
    partial = {k: v for k, v in model_sd.items() if not k.startswith('stages.3.1.')}
    path = save(official_classifier(partial, 320), str(tmp_path / 'partial.pth'))
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        model = ConvNeXt('atto', init_cfg=dict(type='Pretrained', checkpoint=path))
        with pytest.raises(CheckpointError, match=r'stage depths \[2, 2, 6, 1\] vs \[2, 2, 6, 2\]'):
            model.init_weights()  # a missing block changes the depth: refused
        partial.update({k: v for k, v in model_sd.items() if k.startswith('stages.3.1.dwconv')})
        save(official_classifier(partial, 320), path)
        model.init_weights()
    finally:
        logger.removeHandler(handler)
    log = '\n'.join(records)
    assert "dropped (no part of the backbone): ['head.bias', 'head.weight', 'norm.bias', " \
        "'norm.weight']" in log
    missing = re.search(r'not in the checkpoint \(kept at their init\): (\[.*\])', log)[1]
    dropped_block = {k for k in model_sd if k.startswith('stages.3.1.') and 'dwconv' not in k}
    output_norms = {f'norm{i}.{p}' for i in range(4) for p in ('weight', 'bias')}
    assert set(ast.literal_eval(missing)) == dropped_block | output_norms


def mmpretrain_convnext():
    """mmpretrain's own ConvNeXt class, from the folder tools/setup_env.sh installs it to (outside
    site-packages). mmpretrain 1.2's multimodal models (BLIP) do not import with transformers 5;
    its own WITH_MULTIMODAL switch leaves them out (the backbone never uses them)."""
    folder = os.path.join(sys.prefix, 'test-reference', 'mmpretrain')
    if folder not in sys.path:
        sys.path.append(folder)
    pytest.importorskip('mmpretrain')
    import mmpretrain.utils.dependency as dependency
    dependency.WITH_MULTIMODAL = False
    from mmpretrain.models.backbones import ConvNeXt as MMPretrainConvNeXt
    return MMPretrainConvNeXt


@pytest.mark.parametrize('version', ['v1', 'v2'])
def test_mmpretrain_checkpoints_of_mmpretrains_own_convnext(tmp_path, version):
    """The layout as mmpretrain itself writes it (its ConvNeXt class, not our rewrite of its
    names): a detection-style backbone with a norm per stage loads to the same features, and its
    classifier (final norm3 only, plus a head) loads every block tensor."""
    v2 = version == 'v2'
    block = dict(use_grn=v2, layer_scale_init_value=0. if v2 else 1e-6)
    theirs_cls = mmpretrain_convnext()
    theirs = randomize_(theirs_cls(arch='atto', out_indices=(0, 1, 2, 3),
                                   gap_before_final_norm=False, **block))
    theirs.eval()  # mmpretrain's train() returns None
    state = {f'backbone.{k}': v for k, v in theirs.state_dict().items()}
    state['head.fc.weight'] = torch.rand(10, 320)
    path = save({'state_dict': state, 'meta': {'mmpretrain_version': '1.2.0'}},
                str(tmp_path / 'mmpretrain.pth'))
    ours = ConvNeXt('atto', init_cfg=dict(type='Pretrained', checkpoint=path), **block)
    ours.init_weights()
    ours.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(ours(x), theirs(x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)

    classifier = randomize_(theirs_cls(arch='atto', **block))  # out_indices=-1: norm3 only
    converted, _ = to_convnext_mm({'state_dict': {
        f'backbone.{k}': v for k, v in classifier.state_dict().items()}})
    expected = {k: v for k, v in ours.state_dict().items() if not re.match(r'norm\d\.', k)}
    assert set(converted) == set(expected)
    for name, value in converted.items():
        torch.testing.assert_close(value.reshape(expected[name].shape),
                                   classifier.state_dict()[mmpretrain_name(name)].reshape(
                                       expected[name].shape))


def mmpretrain_name(ours):
    for our_name, their_name in MMPRETRAIN_NAMES.items():
        ours = ours.replace(f'.{our_name}.', f'.{their_name}.')
    return ours
