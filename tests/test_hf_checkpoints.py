"""Hugging Face checkpoints: the transformers layouts of ConvNeXt and ConvNeXt V2 (bare model,
classification model, backbone), written by transformers itself as one safetensors file, a
sharded one or pytorch_model.bin, and hub ids resolved offline from a huggingface_hub cache.
Each is compared with transformers' own outputs."""
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, randomize_

from convnext_mm import ConvNeXt
from convnext_mm.checkpoint import load_checkpoint_file, to_convnext_mm

transformers = pytest.importorskip('transformers')

# A small arch of its own (not in the arch table): 1, 1, 2, 1 blocks of 16 ... 128 channels.
DEPTHS, CHANNELS = [1, 1, 2, 1], [16, 32, 64, 128]
KINDS = ('Model', 'ForImageClassification', 'Backbone')
STORAGE = {  # save_pretrained's arguments per storage
    'safetensors': dict(),
    'sharded': dict(max_shard_size='300KB'),
    'bin': None,  # pytorch_model.bin, as older transformers wrote it
}


def hf_model(version: str, kind: str):
    """A transformers ConvNeXt (V1) or ConvNeXtV2 of the small arch with random weights
    (layer scale and GRN too, so that no block is a near no-op)."""
    prefix = 'ConvNext' if version == 'v1' else 'ConvNextV2'
    config = getattr(transformers, f'{prefix}Config')(
        depths=DEPTHS, hidden_sizes=CHANNELS, num_labels=10,
        out_features=['stage1', 'stage2', 'stage3', 'stage4'])
    torch.manual_seed(0)
    model = getattr(transformers, f'{prefix}{kind}')(config).eval()
    return randomize_(model)


def save_pretrained(model, folder, storage):
    if STORAGE[storage] is None:
        os.makedirs(folder, exist_ok=True)
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), os.path.join(folder, 'pytorch_model.bin'))
    else:
        model.save_pretrained(folder, **STORAGE[storage])
    return str(folder)


def hf_stage_outputs(model, x):
    """Each stage's output as the backbone gives it: the Backbone's feature maps (through its
    per-stage norms), else the hidden states through a fresh LayerNorm over channels."""
    with torch.no_grad():
        if type(model).__name__.endswith('Backbone'):
            return list(model(x).feature_maps)
        hidden = model(x, output_hidden_states=True).hidden_states[1:]
    return [torch.nn.functional.layer_norm(h.permute(0, 2, 3, 1), h.shape[1:2], eps=1e-6)
            .permute(0, 3, 1, 2) for h in hidden]


def assert_loads_as_transformers(checkpoint, reference, use_grn):
    model = ConvNeXt(dict(depths=DEPTHS, channels=CHANNELS), use_grn=use_grn,
                     init_cfg=dict(type='Pretrained', checkpoint=checkpoint))
    model.init_weights()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ours = model.eval()(x)
    for got, want in zip(ours, hf_stage_outputs(reference, x), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


# each version in each model kind and each storage
@pytest.mark.parametrize('version,kind,storage', [
    ('v1', 'Model', 'safetensors'), ('v1', 'ForImageClassification', 'sharded'),
    ('v1', 'Backbone', 'bin'), ('v2', 'Model', 'bin'),
    ('v2', 'ForImageClassification', 'safetensors'), ('v2', 'Backbone', 'sharded')])
def test_transformers_checkpoints_load_as_transformers_computes(tmp_path, version, kind, storage):
    reference = hf_model(version, kind)
    folder = save_pretrained(reference, tmp_path / 'saved', storage)
    files = sorted(os.listdir(folder))
    if storage == 'sharded':
        assert 'model.safetensors.index.json' in files and len(files) >= 4, files
    assert_loads_as_transformers(folder, reference, version == 'v2')  # the folder
    if storage == 'sharded':  # or the index itself
        assert_loads_as_transformers(os.path.join(folder, 'model.safetensors.index.json'),
                                     reference, version == 'v2')
    _, source = to_convnext_mm(load_checkpoint_file(folder))
    assert source.startswith('transformers (plain state dict')


def test_transformers_heads_are_dropped_and_backbone_norms_kept():
    converted, _ = to_convnext_mm(hf_model('v2', 'ForImageClassification').state_dict())
    assert not any(k.startswith(('classifier', 'layernorm', 'norm')) for k in converted)
    converted, _ = to_convnext_mm(hf_model('v1', 'Backbone').state_dict())
    assert {f'norm{i}.weight' for i in range(4)} <= set(converted)
    assert set(converted) == set(ConvNeXt(dict(depths=DEPTHS, channels=CHANNELS)).state_dict())


def test_sharded_checkpoint_with_a_missing_shard_is_refused(tmp_path):
    folder = save_pretrained(hf_model('v1', 'Model'), tmp_path / 'saved', 'sharded')
    shard = sorted(f for f in os.listdir(folder) if f.startswith('model-'))[-1]
    os.remove(os.path.join(folder, shard))
    with pytest.raises(FileNotFoundError, match=f"Shard '{shard}' named by .*index.json"):
        load_checkpoint_file(folder)
    with pytest.raises(FileNotFoundError, match='holds none of the weight files'):
        load_checkpoint_file(str(tmp_path))


def fill_hub_cache(hf_home, repo_id, folder):
    """Put ``folder``'s files where huggingface_hub keeps a downloaded snapshot of ``repo_id``
    (``HF_HOME/hub/models--OWNER--NAME``, its ``main`` ref naming the snapshot)."""
    commit = 'c0ffee' * 6 + 'c0ff'
    repo = os.path.join(hf_home, 'hub', 'models--' + repo_id.replace('/', '--'))
    snapshot = os.path.join(repo, 'snapshots', commit)
    os.makedirs(snapshot)
    os.makedirs(os.path.join(repo, 'refs'))
    with open(os.path.join(repo, 'refs', 'main'), 'w') as f:
        f.write(commit)
    for name in os.listdir(folder):
        os.replace(os.path.join(folder, name), os.path.join(snapshot, name))


HUB_SCRIPT = '''
import sys
sys.path.insert(0, 'tools')
import convert_checkpoint
from convnext_mm.checkpoint import CheckpointError, load_checkpoint_file
convert_checkpoint.main([sys.argv[1], sys.argv[2]])
try:
    load_checkpoint_file('hf-hub:nobody/not-cached')
except CheckpointError as e:
    print('refused:', e)
'''


def test_hub_id_resolves_offline_from_the_cache(tmp_path):
    pytest.importorskip('huggingface_hub')
    reference = hf_model('v2', 'ForImageClassification')
    hf_home = str(tmp_path / 'hf_home')
    fill_hub_cache(hf_home, 'facebook/convnextv2-test', save_pretrained(
        reference, tmp_path / 'saved', 'sharded'))
    converted = str(tmp_path / 'converted.safetensors')
    env = dict(os.environ, HF_HOME=hf_home, HF_HUB_OFFLINE='1', PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, '-c', HUB_SCRIPT, 'hf-hub:facebook/convnextv2-test',
                          converted], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "hf-hub:facebook/convnextv2-test (transformers (plain state dict)" in out.stdout
    assert ("refused: 'hf-hub:nobody/not-cached' has none of the weight files" in out.stdout and
            'HF_HUB_OFFLINE=1' in out.stdout), out.stdout
    assert_loads_as_transformers(converted, reference, use_grn=True)


def test_hub_ids_are_checked_before_any_lookup():
    with pytest.raises(ValueError, match=r"hf-hub:OWNER/NAME\[@REVISION\], got 'hf-hub:convnext'"):
        load_checkpoint_file('hf-hub:convnext')
