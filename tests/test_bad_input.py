"""Bad input raises early with a message naming the bad value and what is allowed, and leaves
nothing behind. (Backbone arguments, checkpoints and layer decay have their own cases in
test_backbone.py, test_checkpoint.py and test_layer_decay.py; docs/reliability.md lists all.)"""
import json
import os.path as osp
import shutil

import pytest
import torch
from conftest import ROOT, cfg_options, load_tool

from convnext_mm.checkpoint import CheckpointError
from convnext_mm.models import ConvNeXt

DEMO = 'configs/demo/cascade_convnext_demo.py'


@pytest.fixture(scope='module')
def train_tool():
    return load_tool('train')


@pytest.fixture
def toy_copy(toy_coco, tmp_path):
    root = tmp_path / 'toy'
    shutil.copytree(toy_coco, root)
    return root


def build_train_config(train_tool, root, work_dir, *extra, **options):
    args = train_tool.parse_args([DEMO, '--work-dir', str(work_dir), *extra] +
                                 cfg_options(str(root) + '/', **options))
    return train_tool.build_config(args)


def test_config_key_typo_in_backbone_names_the_closest_argument():
    with pytest.raises(TypeError, match=r"unknown argument\(s\) 'drop_path' \(did you mean "
                       r"'drop_path_rate'\?\); allowed: \['arch', 'in_channels'"):
        ConvNeXt('atto', drop_path=0.1)


@pytest.mark.parametrize('option,match', [
    ({'train_dataloader.dataset.data_root': '/nonexistent/coco/'},
     r"train_dataloader.dataset.data_root: folder not found: '/nonexistent/coco/'"),
    ({'train_dataloader.dataset.ann_file': 'annotations/instances_train2017.json'},
     r"train_dataloader.dataset.ann_file: annotation file not found: .*instances_train2017.json"),
    ({'train_dataloader.dataset.data_prefix.img': 'train2017/'},
     r"train_dataloader.dataset.data_prefix.img: folder not found: .*train2017/'"),
])
def test_missing_dataset_paths_fail_before_anything_is_written(train_tool, toy_copy, tmp_path,
                                                               option, match):
    work = tmp_path / 'work'
    with pytest.raises(FileNotFoundError, match=match):
        build_train_config(train_tool, toy_copy, work, **option)
    assert not work.exists()


def test_empty_annotation_file(train_tool, toy_copy, tmp_path):
    (toy_copy / 'annotations' / 'instances_train.json').write_text('')
    with pytest.raises(ValueError, match=r'annotation file .*instances_train.json\' is empty'):
        build_train_config(train_tool, toy_copy, tmp_path / 'work')


@pytest.mark.parametrize('change', ['no_images', 'all_crowd'])
def test_training_set_without_usable_images_is_an_error(train_tool, toy_copy, tmp_path, change):
    path = toy_copy / 'annotations' / 'instances_train.json'
    coco = json.loads(path.read_text())
    if change == 'no_images':
        coco['images'], coco['annotations'] = [], []
    else:
        for annotation in coco['annotations']:
            annotation['iscrowd'] = 1
    path.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=r"training set has no usable sample \(annotation "
                       r"file\(s\): \[.*instances_train.json'\]\).*iscrowd=1"):
        train_tool.main([DEMO, '--work-dir', str(tmp_path / 'work')] +
                        cfg_options(str(toy_copy) + '/'))


def test_undecodable_image_fails_naming_the_file(toy_copy):
    """The documented rule: a training image that cannot be decoded stops the run, naming it
    (LoadImageFromFile(ignore_empty=True) would skip it instead)."""
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(osp.join(ROOT, DEMO))
    cfg.train_dataloader.dataset.data_root = str(toy_copy) + '/'
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    broken = dataset.get_data_info(0)['img_path']
    with open(broken, 'wb') as f:
        f.write(b'not an image')
    with pytest.raises(AssertionError, match=f'failed to load image: {broken}'):
        dataset[0]


def test_resume_checkpoint_errors(train_tool, toy_copy, tmp_path):
    work = tmp_path / 'work'
    with pytest.raises(FileNotFoundError, match=r"--resume checkpoint not found: '.*nope.pth'"):
        build_train_config(train_tool, toy_copy, work, '--resume', str(tmp_path / 'nope.pth'))
    work.mkdir()
    (work / 'last_checkpoint').write_text(str(work / 'epoch_9.pth'))
    with pytest.raises(FileNotFoundError, match=r'checkpoint named by .*last_checkpoint not '
                       r"found: '.*epoch_9.pth'"):
        build_train_config(train_tool, toy_copy, work, '--resume')
    (work / 'epoch_9.pth').write_bytes(b'')
    with pytest.raises(CheckpointError, match=r"epoch_9.pth' is empty \(0 bytes\)"):
        build_train_config(train_tool, toy_copy, work, '--resume')
    with pytest.raises(FileNotFoundError, match=r"load_from checkpoint not found: '.*w.pth'"):
        build_train_config(train_tool, toy_copy, work, load_from=str(tmp_path / 'w.pth'))


def test_test_tool_checks_checkpoint_and_data_first(toy_copy, tmp_path):
    test_tool = load_tool('test')
    work = tmp_path / 'work'

    def build(checkpoint, **options):
        args = test_tool.parse_args([DEMO, str(checkpoint), '--work-dir', str(work)] +
                                    cfg_options(str(toy_copy) + '/', **options))
        return test_tool.build_config(args)

    with pytest.raises(FileNotFoundError, match=r"Checkpoint not found: '.*missing.pth'"):
        build(tmp_path / 'missing.pth')
    truncated = tmp_path / 'cut.pth'
    truncated.write_bytes(b'PK\x03\x04' + b'\0' * 100)
    with pytest.raises(CheckpointError, match=r"cut.pth' is truncated or corrupt"):
        build(truncated)
    valid = tmp_path / 'ok.pth'
    torch.save({'state_dict': {}}, valid)
    with pytest.raises(FileNotFoundError, match=r"test_dataloader.dataset.ann_file: annotation "
                       r"file not found: '.*instances_test.json'"):
        build(valid, **{'test_dataloader.dataset.ann_file': 'annotations/instances_test.json'})
    assert not work.exists()


def test_unknown_config_file_and_bad_hook_argument(train_tool, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Config file not found: 'configs/nope.py'"):
        train_tool.build_config(train_tool.parse_args(['configs/nope.py']))
    from convnext_mm.engine import FiniteLossHook
    with pytest.raises(ValueError, match=r'max_skipped_steps must be an int >= 0, got -1'):
        FiniteLossHook(max_skipped_steps=-1)


def test_datasets_on_remote_storage_are_left_to_their_file_backend():
    from mmengine.config import Config

    from convnext_mm.utils import check_dataset_paths
    cfg = Config.fromfile(osp.join(ROOT, 'configs/cascade_convnext_t_coco.py'))
    cfg.train_dataloader.dataset.data_root = '/nonexistent/coco/'
    with pytest.raises(FileNotFoundError, match=r"data_root: folder not found: '/nonexistent"):
        check_dataset_paths(cfg, 'train')
    cfg.train_dataloader.dataset.backend_args = dict(backend='petrel')
    check_dataset_paths(cfg, 'train')
    cfg.train_dataloader.dataset.backend_args = None
    cfg.train_dataloader.dataset.data_root = 's3://bucket/coco/'
    check_dataset_paths(cfg, 'train')


def test_infer_tool_refuses_bad_arguments_before_loading_the_model(toy_coco, tmp_path, capsys):
    infer_tool = load_tool('infer')
    checkpoint = tmp_path / 'model.pth'
    checkpoint.write_bytes(b'x')  # not opened: every error below comes first

    out = tmp_path / 'out'

    def infer(*args):
        infer_tool.main([DEMO, str(checkpoint), toy_coco + 'val', '--out-dir', str(out), *args])

    with pytest.raises(SystemExit):
        infer('--score-thr', '1.5')
    assert '--score-thr must be within [0, 1], got 1.5' in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"--device must be cpu, cuda or cuda:N, got 'gpu'"):
        infer('--device', 'gpu')
    for name in ('a', 'b'):
        shutil.copytree(toy_coco + 'val', tmp_path / name)
    with pytest.raises(ValueError, match=r"several inputs are called '000000.png' \(4 such names\)"
                       r': infer each folder into its own --out-dir'):
        infer_tool.main([DEMO, str(checkpoint), str(tmp_path / 'a'), str(tmp_path / 'b'),
                         '--out-dir', str(out)])
    other_scope = tmp_path / 'classifier.py'
    other_scope.write_text("default_scope = 'mmpretrain'\nmodel = dict(type='ImageClassifier')\n")
    with pytest.raises(ValueError, match=r"classifier.py: default_scope must be 'mmdet' or "
                       r"'mmseg', got 'mmpretrain'"):
        infer_tool.main([str(other_scope), str(checkpoint), toy_coco + 'val', '--device', 'cpu',
                         '--out-dir', str(out)])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r'--device cuda:1: no CUDA device on this machine'):
            infer('--device', 'cuda:1')
    assert not out.exists()


def test_amp_and_auto_scale_lr_flags(train_tool, toy_copy, tmp_path, monkeypatch):
    """--auto-scale-lr turns on mmengine's scaling by the config's base batch size; --amp makes
    any config train under AmpOptimWrapper with a dynamic loss scale where CUDA is (on the CPU
    adapt_to_device turns it back to fp32, saying so)."""
    work = tmp_path / 'work'
    plain = {'optim_wrapper.type': 'OptimWrapper'}
    cfg = build_train_config(train_tool, toy_copy, work, '--auto-scale-lr', **plain)
    assert cfg.auto_scale_lr == dict(base_batch_size=2, enable=True)
    assert cfg.optim_wrapper.type == 'OptimWrapper'
    assert not build_train_config(train_tool, toy_copy, work, **plain).auto_scale_lr.get('enable')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    cfg = build_train_config(train_tool, toy_copy, work, '--amp', **plain)
    assert (cfg.optim_wrapper.type, cfg.optim_wrapper.loss_scale) == ('AmpOptimWrapper',
                                                                      'dynamic')
    with pytest.raises(KeyError, match='--auto-scale-lr needs auto_scale_lr.base_batch_size'):
        build_train_config(train_tool, toy_copy, work, '--auto-scale-lr',
                           **{'auto_scale_lr': None})
