"""Across nodes and at scale: two torchrun agents standing for two nodes train (DDP) and test;
one agent with two processes trains the same model sharded by FSDP, with a worker killed
mid-epoch that torchrun restarts and the job resumes, and ends where the two-node run ends; a
node that never arrives ends in a clear time-out; slurm requeues resume."""
import json
import os.path as osp
import re
import time

import pytest
import torch
from conftest import ROOT, coco_options, run_agents
from conftest import run_tool as run
from test_reliability import train_options

DEMO = osp.join(ROOT, 'configs', 'demo', 'cascade_convnext_demo.py')
uses_reference_run = pytest.mark.xdist_group('distributed_reference_run')


def assert_succeeded(results):
    for code, log in results:
        assert code == 0, log[-4000:]


@pytest.fixture(scope='session')
def two_nodes(toy_coco, tmp_path_factory):
    """Two agents of one process each (NNODES=2, NODE_RANK 0 and 1, gloo): the Cascade demo
    for 3 epochs of 2 iterations, deterministic, a checkpoint per epoch. torchrun sets
    OMP_NUM_THREADS=1 only for more than one process per node; it is set here as for the
    one-node runs it is compared with (two threads sum the convolutions in another order:
    weights then differ by about 1e-6)."""
    work = str(tmp_path_factory.mktemp('two_nodes'))
    results = run_agents(['tools/dist_train.sh', DEMO, '1', '--work-dir', work] +
                         train_options(toy_coco), nodes=2, OMP_NUM_THREADS='1')
    assert_succeeded(results)
    assert 'node 1 of 2: waiting up to 600 s' in results[1][1]
    assert 'Epoch(train) [3][2/2]' in results[0][1]
    return osp.join(work, 'epoch_3.pth')


@uses_reference_run
def test_two_nodes_test_as_one_process_does(toy_coco, tmp_path, two_nodes):
    """dist_test.sh on two agents: each tests half of the 4 val images; the gathered COCO
    figures are tools/test.py's in one process."""
    single = run(['tools/test.py', DEMO, two_nodes, '--work-dir', str(tmp_path / 'test1')] +
                 coco_options(toy_coco))
    results = run_agents(['tools/dist_test.sh', DEMO, two_nodes, '1', '--work-dir',
                          str(tmp_path / 'test2')] + coco_options(toy_coco), nodes=2,
                         OMP_NUM_THREADS='1')
    assert_succeeded(results)
    figures = 'coco/bbox_mAP: ([-0-9.]+).*coco/segm_mAP: ([-0-9.]+)'
    want, got = re.search(figures, single), re.search(figures, results[0][1])
    assert want and got, results[0][1][-3000:]
    assert got.groups() == want.groups()


def test_a_node_that_never_arrives_ends_in_a_clear_time_out(tmp_path):
    start = time.time()
    (code, log), = run_agents(['tools/dist_train.sh', DEMO, '1', '--work-dir', str(tmp_path)],
                              nodes=2, started=1, timeout=120, RDZV_TIMEOUT='5')
    assert code != 0
    assert 'node 0 of 2: waiting up to 5 s for the others' in log
    assert 'Timed out after' in log and '1/2 clients joined' in log, log[-3000:]
    assert time.time() - start < 60


FSDP_OPTIONS = ['runner_type=FlexibleRunner', 'strategy.type=ConvNeXtFSDPStrategy',
                'strategy.model_wrapper.auto_wrap_policy=convnext_block_wrap_policy',
                'strategy.model_wrapper.use_orig_params=True', 'strategy.state_dict_cfg=full']


@uses_reference_run
def test_a_killed_fsdp_worker_is_restarted_and_the_job_ends_as_the_ddp_run(toy_coco, tmp_path,
                                                                           two_nodes):
    """One agent, two processes, MAX_RESTARTS=1, the Cascade demo sharded by FSDP (one unit per
    ConvNeXt block, the layer-decay groups on the original parameters): rank 1 is SIGKILLed
    before iteration 4 (epoch 2, after epoch 1's checkpoint); torchrun starts both workers
    again, they resume from the whole checkpoint rank 0 wrote and end with the two-node DDP
    run's weights, AdamW states (by parameter name) and iteration, bit for bit: same world size
    and rank order, and with two ranks FSDP's reduce-scatter sums what DDP's all-reduce sums
    (on GPUs NCCL may round differently). A wrong restart, a wrong multi-node run or a wrong
    FSDP run each breaks the equality. Each rank held half the parameters and AdamW states;
    tools/test.py reads the checkpoint."""
    config = tmp_path / 'fsdp.py'
    config.write_text(
        f"_base_ = {DEMO!r}\n"
        "custom_imports = dict(imports=['convnext_mm', 'fault_injection'], "
        "allow_failed_imports=False)\n"
        "custom_hooks = [dict(type='LayerDecayLrLogHook'), "
        "dict(type='KillOnRankHook', rank=1, iteration=4), dict(type='ModelStateBytesHook')]\n")
    work = str(tmp_path / 'work')
    options = train_options(toy_coco)
    (code, log), = run_agents(['tools/dist_train.sh', str(config), '2', '--work-dir', work] +
                              options + FSDP_OPTIONS, nodes=1, MAX_RESTARTS='1')
    assert code == 0, log[-4000:]
    assert 'stem_lr' in log  # LayerDecayLrLogHook
    assert 'exitcode: -9' in log and 'local_rank: 1' in log, log[-3000:]
    assert f'Restart 1 of the job; 0 of 1 restarts remain: resuming from {work}/epoch_1.pth' in log
    assert 'resumed epoch: 1, iter: 2' in log

    got = torch.load(osp.join(work, 'epoch_3.pth'), weights_only=True)
    want = torch.load(two_nodes, weights_only=True)
    assert (got['meta']['epoch'], got['meta']['iter']) == (3, 6)
    assert got['state_dict'].keys() == want['state_dict'].keys()  # no FSDP names
    for key, tensor in want['state_dict'].items():
        assert torch.equal(got['state_dict'][key], tensor), key
    # the same layer-decay groups, parameters under their own names (no FSDP wrapper names)
    groups = [(g['group_name'], g['lr'], g['weight_decay'], g['param_names'])
              for g in got['optimizer']['param_groups']]
    assert groups == [(g['group_name'], g['lr'], g['weight_decay'], g['param_names'])
                      for g in want['optimizer']['param_groups']]
    # AdamW's states by parameter name (DDP's by index), in the parameters' shapes
    ddp_states = dict(zip((name for group in want['optimizer']['param_groups']
                           for name in group['param_names']), want['optimizer']['state'].values()))
    states = got['optimizer']['state']
    assert states.keys() == ddp_states.keys()
    for name, state in states.items():
        for key in ('exp_avg', 'exp_avg_sq'):
            assert torch.equal(state[key], ddp_states[name][key]), (name, key)

    total = 4 * sum(t.numel() for k, t in want['state_dict'].items()
                    if t.is_floating_point() and 'running_' not in k)
    for rank in (0, 1):
        with open(osp.join(work, f'state_bytes_rank{rank}.json')) as f:
            held = json.load(f)
        # DDP holds all of it on every rank: parameters once, AdamW states twice
        assert 0.45 < held['parameters'] / total < 0.55, held
        assert 0.45 < held['optimizer'] / (2 * total) < 0.55, held

    # the config that trained it names the FSDP strategy: tools/test.py tests on the Runner
    out = run(['tools/test.py', DEMO, osp.join(work, 'epoch_3.pth'), '--work-dir',
               str(tmp_path / 'test')] + coco_options(toy_coco) + FSDP_OPTIONS)
    assert re.search(r'coco/bbox_mAP: [0-9.]+', out), out[-3000:]


def test_a_requeued_slurm_job_resumes_from_the_last_checkpoint(tmp_path, monkeypatch):
    """slurm starts a requeued job's command again with SLURM_RESTART_COUNT > 0: it resumes
    from the checkpoint last_checkpoint names; with none written yet it starts as the first
    attempt did (load_from kept); a first start is left alone."""
    from mmengine.config import Config

    import convnext_mm.utils.runtime
    from convnext_mm.utils import resolve_resume
    logged = []  # what print_log shows (the current logger's stream is another test's)
    monkeypatch.setattr(convnext_mm.utils.runtime, 'print_log',
                        lambda message, **kwargs: logged.append(message))
    checkpoint, pretrained = tmp_path / 'epoch_7.pth', str(tmp_path / 'pretrained.pth')
    for path in (checkpoint, pretrained):
        torch.save({'state_dict': {}, 'meta': {}}, path)

    def resolved(restart, pointer):
        monkeypatch.setenv('SLURM_RESTART_COUNT', str(restart))
        monkeypatch.delenv('TORCHELASTIC_RESTART_COUNT', raising=False)
        (tmp_path / 'last_checkpoint').unlink(missing_ok=True)
        if pointer:
            (tmp_path / 'last_checkpoint').write_text(str(checkpoint))
        cfg = Config(dict(work_dir=str(tmp_path), load_from=pretrained))
        resolve_resume(cfg, None)
        return cfg.get('resume', False), cfg.load_from

    assert resolved(0, pointer=True) == (False, pretrained)
    assert resolved(2, pointer=True) == (True, None)  # mmengine reads last_checkpoint
    assert logged.pop() == f'Restart 2 of the job: resuming from {checkpoint}'
    assert resolved(1, pointer=False) == (False, pretrained)
    assert logged.pop().endswith('resuming from the start (no checkpoint was written yet)')


def test_fsdp_units_are_the_convnext_blocks_and_names_lose_the_wrappers():
    from convnext_mm import ConvNeXt
    from convnext_mm.engine.fsdp import convnext_block_wrap_policy, unwrapped_name
    from convnext_mm.models.backbones.convnext import ConvNeXtBlock
    backbone = ConvNeXt('atto')
    wrapped = [m for m in backbone.modules() if convnext_block_wrap_policy(m, False, 0)]
    assert len(wrapped) == sum(backbone.depths)
    assert all(isinstance(m, ConvNeXtBlock) for m in wrapped)
    assert all(convnext_block_wrap_policy(m, True, 0) for m in backbone.modules())  # descend
    assert unwrapped_name('backbone.stages.2._fsdp_wrapped_module.3._checkpoint_wrapped_module.'
                          'pwconv1.weight') == 'backbone.stages.2.3.pwconv1.weight'


def test_fsdp_recipes_are_their_recipes_on_the_flexible_runner():
    from mmengine.config import Config
    for name in ('cascade_convnext_xl_in22k_coco', 'upernet_convnext_xl_in22k_ade20k_640'):
        fsdp = Config.fromfile(osp.join(ROOT, 'configs', f'{name}_fsdp.py')).to_dict()
        plain = Config.fromfile(osp.join(ROOT, 'configs', f'{name}.py')).to_dict()
        assert fsdp.pop('custom_imports')['imports'] == ['convnext_mm',
                                                         'convnext_mm.engine.fsdp_strategy']
        plain.pop('custom_imports')
        assert fsdp.pop('runner_type') == 'FlexibleRunner'
        assert fsdp.pop('strategy') == dict(
            type='ConvNeXtFSDPStrategy', state_dict_cfg='full',
            model_wrapper=dict(auto_wrap_policy='convnext_block_wrap_policy',
                               use_orig_params=True))
        assert fsdp == plain


def test_plan_memory_counts_the_units_fsdp_gathers():
    """The demo detector: every parameter is in a block or in the root unit; the largest
    block is one of stage 3 (320 channels): depthwise 7x7, LayerNorm, 320 -> 1280 -> 320 and
    the layer scale."""
    from conftest import load_tool
    from mmengine.config import Config
    tool = load_tool('plan_memory')
    model = tool.build_on_meta(Config.fromfile(DEMO))
    total, root, largest = tool.unit_sizes(model)
    assert total == sum(p.numel() for p in model.parameters())
    assert largest == (320 * 49 + 320) + 2 * 320 + (320 * 1280 + 1280) + (1280 * 320 + 320) + 320
    blocks = sum(p.numel() for n, p in model.named_parameters() if n.startswith('backbone.stages'))
    assert root == total - blocks
    line = tool.row('demo', model, [1, 8])
    gib = [float(v) for v in line.split('|')[4:7]]
    assert gib[0] == pytest.approx(16 * total / 2**30, abs=0.005)
    assert gib[2] == pytest.approx((2 * total + 8 * (root + largest)) / 2**30, abs=0.005)
