"""Reliability: kill-safe checkpoints with bit-identical resume, restricted checkpoint loading
everywhere, NaN losses and distributed faults (docs/reliability.md)."""
import os
import os.path as osp
import random
import signal
import time
import types

import pytest
import torch
from conftest import (NO_VALIDATION, ROOT, coco_options, load_tool, run_agents,
                      start_tool)
from conftest import run_tool as run
from mmengine.config import Config
from mmengine.model import BaseModel
from mmengine.registry import DATASETS, MODELS

import convnext_mm  # noqa: F401  (registers the hooks and the restricted checkpoint loader)
from convnext_mm.checkpoint import CheckpointError

DEMO = 'configs/demo/cascade_convnext_demo.py'
# Tests that read the reference training run (the `uninterrupted` fixture) share one process.
uses_reference_run = pytest.mark.xdist_group('reliability_reference_run')

# Dies (SIGKILL) halfway through writing the file of the epoch-2 checkpoint to disk.
KILL_DURING_SAVE = '''
import os, signal
from mmengine.fileio.backends.local_backend import LocalBackend
real_put = LocalBackend.put
def put(self, obj, filepath):
    if 'epoch_2.pth' in os.path.basename(str(filepath)):
        with open(filepath, 'wb') as f:
            f.write(obj[:len(obj) // 2])
            f.flush()
            os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return real_put(self, obj, filepath)
LocalBackend.put = put
'''


def train_options(root, epochs=3, **extra):
    return coco_options(root, **{
        'train_cfg.max_epochs': epochs, **NO_VALIDATION,
        'default_hooks.checkpoint.max_keep_ckpts': 1, 'randomness.deterministic': True, **extra})


def assert_same_training_state(path, reference):
    got = torch.load(path, weights_only=True)
    want = torch.load(reference, weights_only=True)
    assert (got['meta']['epoch'], got['meta']['iter']) == (want['meta']['epoch'], want['meta']['iter'])
    for key, tensor in want['state_dict'].items():
        assert torch.equal(got['state_dict'][key], tensor), key
    for (i, state), (_, other) in zip(want['optimizer']['state'].items(),
                                      got['optimizer']['state'].items()):
        for name in state:
            assert torch.equal(torch.as_tensor(other[name]), torch.as_tensor(state[name])), (i, name)


@pytest.fixture(scope='session')  # not torn down when another file's test runs in between
def uninterrupted(toy_coco, tmp_path_factory):
    work = str(tmp_path_factory.mktemp('uninterrupted'))
    run(['tools/train.py', DEMO, '--work-dir', work] + train_options(toy_coco))
    return osp.join(work, 'epoch_3.pth')


@uses_reference_run
def test_sigkill_during_checkpoint_write_then_resume_is_bit_identical(toy_coco, tmp_path,
                                                                       uninterrupted):
    work = str(tmp_path)
    options = train_options(toy_coco)
    run(['tools/train.py', DEMO, '--work-dir', work] + options, setup=KILL_DURING_SAVE,
        returncode=-signal.SIGKILL)
    files = sorted(f for f in os.listdir(work) if 'pth' in f)
    # The half-written file never took the checkpoint's name; max_keep_ckpts=1 did not
    # remove epoch 1 before epoch 2 was complete; the pointer still names epoch 1.
    assert files == ['epoch_1.pth', 'epoch_2.pth.partial'], files
    with open(osp.join(work, 'last_checkpoint')) as f:
        assert f.read() == osp.join(work, 'epoch_1.pth')

    log = run(['tools/train.py', DEMO, '--work-dir', work, '--resume'] + options)
    assert 'resumed epoch: 1, iter: 4' in log
    assert 'epoch_2.pth.partial: an incomplete checkpoint' in log
    assert sorted(f for f in os.listdir(work) if 'pth' in f) == ['epoch_3.pth']
    assert_same_training_state(osp.join(work, 'epoch_3.pth'), uninterrupted)


@uses_reference_run
def test_sigkill_at_a_random_moment_then_resume_is_bit_identical(toy_coco, tmp_path,
                                                                 uninterrupted):
    work = str(tmp_path)
    options = train_options(toy_coco)
    proc = start_tool(['tools/train.py', DEMO, '--work-dir', work] + options)
    deadline = time.time() + 300
    while not osp.exists(osp.join(work, 'epoch_1.pth')) and time.time() < deadline:
        time.sleep(0.05)
    delay = random.uniform(0, 2)  # somewhere in epoch 2 or 3 (about 1.5 s each)
    time.sleep(delay)
    proc.kill()
    assert proc.wait(60) == -signal.SIGKILL, f'finished before the kill at +{delay:.2f}s'
    os.remove(proc.log_path)

    log = run(['tools/train.py', DEMO, '--work-dir', work, '--resume'] + options)
    assert 'resumed epoch:' in log, f'killed at +{delay:.2f}s'
    assert_same_training_state(osp.join(work, 'epoch_3.pth'), uninterrupted)


@uses_reference_run
def test_truncated_latest_checkpoint_fails_clearly_and_keeps_the_previous(toy_coco, tmp_path,
                                                                          uninterrupted):
    work = tmp_path
    good, latest = work / 'epoch_2.pth', work / 'epoch_3.pth'
    data = open(uninterrupted, 'rb').read()
    good.write_bytes(data)
    latest.write_bytes(data[:len(data) * 2 // 3])
    (work / 'last_checkpoint').write_text(str(latest))
    train = load_tool('train')
    args = train.parse_args([DEMO, '--work-dir', str(work), '--resume'] + train_options(toy_coco))
    with pytest.raises(CheckpointError, match=r"last_checkpoint .*epoch_3.pth' is truncated or "
                       r'corrupt.*use an earlier checkpoint'):
        train.build_config(args)
    assert good.read_bytes() == data
    args = train.parse_args([DEMO, '--work-dir', str(work), '--resume', str(good)] +
                            train_options(toy_coco))
    assert train.build_config(args).load_from == str(good)


class _RunsCode:

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


@pytest.fixture
def evil_checkpoint(tmp_path, uninterrupted):
    """An mmengine checkpoint that would create ``marker`` when unpickled without restriction."""
    marker = tmp_path / 'code_ran'
    checkpoint = torch.load(uninterrupted, weights_only=True)
    checkpoint['meta']['note'] = _RunsCode(str(marker))
    path = tmp_path / 'evil.pth'
    torch.save(checkpoint, path)
    return str(path), marker


@uses_reference_run
@pytest.mark.parametrize('entry', ['resume', 'test'])
def test_crafted_pickle_is_refused_by_the_tools(toy_coco, tmp_path, evil_checkpoint, entry):
    path, marker = evil_checkpoint
    work = str(tmp_path / 'work')
    options = train_options(toy_coco)
    command = {
        'resume': ['tools/train.py', DEMO, '--work-dir', work, '--resume', path] + options,
        'test': ['tools/test.py', DEMO, path, '--work-dir', work] + options,
    }[entry]
    log = run(command, returncode=1)
    assert 'Refused to load' in log and 'evil.pth' in log, log[-2000:]
    assert not marker.exists()


@uses_reference_run
def test_crafted_pickle_is_refused_by_the_converter(tmp_path, evil_checkpoint):
    path, marker = evil_checkpoint
    with pytest.raises(CheckpointError, match="Refused to load '.*evil.pth'"):
        load_tool('convert_checkpoint').main([path, str(tmp_path / 'out.pth')])
    assert not marker.exists() and not (tmp_path / 'out.pth').exists()


@uses_reference_run
def test_mmengine_load_checkpoint_is_restricted_and_reads_safetensors(tmp_path, evil_checkpoint):
    """mmengine's load_checkpoint is what the runner calls for ``load_from`` and ``--resume``."""
    from mmengine.runner import load_checkpoint
    from safetensors.torch import save_file
    path, marker = evil_checkpoint
    model = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match='Refused to load'):
        load_checkpoint(model, path)
    assert not marker.exists()
    weights = {'weight': torch.randn(2, 2), 'bias': torch.randn(2)}
    save_file(weights, str(tmp_path / 'w.safetensors'))
    load_checkpoint(model, str(tmp_path / 'w.safetensors'))
    assert torch.equal(model.weight, weights['weight']) and torch.equal(model.bias, weights['bias'])


def test_getattr_in_a_checkpoint_reaches_only_history_buffer_statistics(tmp_path):
    from mmengine.logging.history_buffer import HistoryBuffer

    from convnext_mm.checkpoint import load_checkpoint_file

    class Getattr:

        def __init__(self, name):
            self.name = name

        def __reduce__(self):
            return (getattr, (HistoryBuffer, self.name))

    torch.save({'ok': Getattr('mean'), 'bad': Getattr('update')}, tmp_path / 'bad.pth')
    with pytest.raises(CheckpointError, match=r"(?s)Refused to load .*getattr\(<class "
                       r"'mmengine.logging.history_buffer.HistoryBuffer'>, 'update'\)"):
        load_checkpoint_file(str(tmp_path / 'bad.pth'))
    torch.save({'ok': Getattr('mean')}, tmp_path / 'ok.pth')
    assert load_checkpoint_file(str(tmp_path / 'ok.pth'))['ok'] is HistoryBuffer.mean


# --- non-finite losses ---------------------------------------------------------------------

@MODELS.register_module(name='ReliabilityToyModel', force=True)
class _ToyModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, inputs, labels, mode='loss'):
        prediction = self.linear(torch.stack(inputs))
        return dict(loss=((prediction - torch.stack(labels))**2).mean())


@DATASETS.register_module(name='ReliabilityNaNAtCall', force=True)
class _NaNAtCall(torch.utils.data.Dataset):
    """Four samples per epoch; the ``nan_at``-th sample drawn overall is NaN."""

    def __init__(self, nan_at):
        self.calls, self.nan_at = 0, nan_at

    def __len__(self):
        return 4

    def __getitem__(self, index):
        self.calls += 1
        value = float('nan') if self.calls == self.nan_at else float(index)
        return dict(inputs=torch.full((2, ), value), labels=torch.ones(1))


def test_nan_loss_stops_training_naming_the_iteration_and_keeps_the_last_checkpoint(tmp_path):
    from mmengine.runner import Runner

    from convnext_mm.utils import use_safe_training_hooks
    cfg = Config(dict(
        model=dict(type='ReliabilityToyModel'), work_dir=str(tmp_path),
        train_dataloader=dict(dataset=dict(type='ReliabilityNaNAtCall', nan_at=7), batch_size=1,
                              num_workers=0,
                              sampler=dict(type='DefaultSampler', shuffle=False)),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        train_cfg=dict(by_epoch=True, max_epochs=3),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1))))
    use_safe_training_hooks(cfg)
    runner = Runner.from_cfg(cfg)
    with pytest.raises(FloatingPointError, match=r'Loss is nan at iteration 7 \(epoch 2\).*'
                       r'Last good checkpoint: .*epoch_1.pth'):
        runner.train()
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith('.pth')) == ['epoch_1.pth']
    saved = torch.load(tmp_path / 'epoch_1.pth', weights_only=True)['state_dict']
    assert all(torch.isfinite(v).all() for v in saved.values())
    assert (tmp_path / 'last_checkpoint').read_text().endswith('epoch_1.pth')


def test_nan_loss_under_amp_is_skipped_until_too_many_in_a_row():
    from convnext_mm.engine import FiniteLossHook
    hook = FiniteLossHook(max_skipped_steps=2)
    warnings = []
    runner = types.SimpleNamespace(
        iter=9, epoch=0, optim_wrapper=types.SimpleNamespace(loss_scaler=torch.amp.GradScaler('cpu')),
        logger=types.SimpleNamespace(warning=warnings.append),
        message_hub=types.SimpleNamespace(get_info=lambda key: 'work/epoch_1.pth'))
    for _ in range(2):
        hook.after_train_iter(runner, 0, outputs=dict(loss=torch.tensor(float('inf'))))
    assert len(warnings) == 2 and 'Loss is inf at iteration 10: the AMP loss scaler skips' in warnings[0]
    hook.after_train_iter(runner, 0, outputs=dict(loss=torch.tensor(1.0)))  # resets the count
    hook.after_train_iter(runner, 0, outputs=dict(loss=torch.tensor(float('nan'))))
    hook.after_train_iter(runner, 0, outputs=dict(loss=torch.tensor(float('nan'))))
    with pytest.raises(FloatingPointError, match='Loss is nan at iteration 10'):
        hook.after_train_iter(runner, 0, outputs=dict(loss=torch.tensor(float('nan'))))


# --- distributed faults --------------------------------------------------------------------

def test_one_failing_rank_ends_the_whole_job_once_its_restarts_are_used_up(toy_coco, tmp_path):
    """MAX_RESTARTS=1: the group is started once more (from the start: no checkpoint yet),
    fails again, and the job ends non-zero with the cause, promptly."""
    config = tmp_path / 'fault.py'
    config.write_text(
        f"_base_ = {osp.join(ROOT, DEMO)!r}\n"
        "custom_imports = dict(imports=['convnext_mm', 'fault_injection'], "
        "allow_failed_imports=False)\n"
        "custom_hooks = [dict(type='RaiseOnRankHook', rank=1, iteration=2)]\n")
    start = time.time()
    (code, log), = run_agents(['tools/dist_train.sh', str(config), '2', '--work-dir',
                               str(tmp_path / 'work')] + train_options(toy_coco), nodes=1,
                              MAX_RESTARTS='1')
    elapsed = time.time() - start
    assert code != 0
    assert 'injected fault on rank 1 at iteration 2' in log, log[-3000:]
    # the two gloo ranks trained the Cascade demo under DDP until then (8 images, 2 x 2 a step)
    assert 'Distributed training: True' in log and 'GPU number: 2' in log
    assert 'Epoch(train) [1][1/2]' in log, log[-3000:]
    assert log.count('Restart 1 of the job; 0 of 1 restarts remain: resuming from the start '
                     '(no checkpoint was written yet)') == 1, log[-3000:]
    assert 'Restart 2' not in log
    assert elapsed < 240, f'the job took {elapsed:.0f} s to end after one rank failed'
