"""Across nodes: two torchrun agents standing for two nodes train and test as one agent with two
processes does; a worker killed mid-epoch is restarted by torchrun and the job resumes and ends
where an uninterrupted run ends; a node that never arrives ends in a clear time-out."""
import os
import os.path as osp
import re
import signal
import socket
import subprocess
import tempfile
import time

import pytest
from conftest import ROOT, coco_options
from conftest import run_tool as run
from test_reliability import assert_same_training_state, train_options

DEMO = osp.join(ROOT, 'configs', 'demo', 'cascade_convnext_demo.py')
uses_reference_run = pytest.mark.xdist_group('distributed_reference_run')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_agents(command: list, nodes: int, started: int = None, timeout: int = 600,
               **env) -> list:
    """``bash COMMAND`` once per node (NNODES=nodes, NODE_RANK=i, one free port), for the first
    ``started`` nodes (default all); every agent and its workers are killed on the way out,
    whatever happened. Returns each agent's (exit code, output)."""
    port, agents = str(free_port()), []
    try:
        for node in range(nodes if started is None else started):
            node_env = dict(os.environ, NNODES=str(nodes), NODE_RANK=str(node),
                            MASTER_ADDR='127.0.0.1', PORT=port,
                            PYTHONPATH=osp.join(ROOT, 'tests'), **env)
            log = tempfile.TemporaryFile('w+')  # a pipe read at the end would fill and block
            agents.append((subprocess.Popen(['bash'] + command, cwd=ROOT, env=node_env,
                                            stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True), log))
        deadline = time.time() + timeout
        results = []
        for agent, log in agents:
            code = agent.wait(max(1, deadline - time.time()))
            log.seek(0)
            results.append((code, log.read()))
        return results
    finally:
        for agent, log in agents:
            try:
                os.killpg(agent.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            agent.wait()
            log.close()


def assert_succeeded(results):
    for code, log in results:
        assert code == 0, log[-4000:]


@pytest.fixture(scope='session')
def one_node_two_procs(toy_coco, tmp_path_factory):
    """The reference: one agent, two processes, the Cascade demo for 3 epochs (2 iterations
    each), deterministic, a checkpoint per epoch."""
    work = str(tmp_path_factory.mktemp('one_node'))
    (code, log), = run_agents(['tools/dist_train.sh', DEMO, '2', '--work-dir', work] +
                              train_options(toy_coco), nodes=1)
    assert code == 0, log[-4000:]
    assert 'Epoch(train) [3][2/2]' in log
    return osp.join(work, 'epoch_3.pth')


@uses_reference_run
def test_two_nodes_train_and_test_as_one_node_does(toy_coco, tmp_path, one_node_two_procs):
    """Same world size, same rank order, same gloo all-reduce: the weights, AdamW states and
    iteration count are bit-identical. Testing the result on two nodes gives tools/test.py's
    figures."""
    work = str(tmp_path / 'two_nodes')
    # torchrun sets OMP_NUM_THREADS=1 for more than one process per node only: with two
    # threads the convolutions sum in another order (weights then differ by about 1e-6)
    results = run_agents(['tools/dist_train.sh', DEMO, '1', '--work-dir', work] +
                         train_options(toy_coco), nodes=2, OMP_NUM_THREADS='1')
    assert_succeeded(results)
    assert 'node 1 of 2: waiting up to 600 s' in results[1][1]
    assert_same_training_state(osp.join(work, 'epoch_3.pth'), one_node_two_procs)

    checkpoint = osp.join(work, 'epoch_3.pth')
    single = run(['tools/test.py', DEMO, checkpoint, '--work-dir', str(tmp_path / 'test1')] +
                 coco_options(toy_coco))
    results = run_agents(['tools/dist_test.sh', DEMO, checkpoint, '1', '--work-dir',
                          str(tmp_path / 'test2')] + coco_options(toy_coco), nodes=2,
                         OMP_NUM_THREADS='1')
    assert_succeeded(results)
    figures = 'coco/bbox_mAP: ([-0-9.]+).*coco/segm_mAP: ([-0-9.]+)'
    want, got = re.search(figures, single), re.search(figures, results[0][1])
    assert want and got, results[0][1][-3000:]
    assert got.groups() == want.groups()


@uses_reference_run
def test_killed_worker_is_restarted_and_the_job_ends_as_an_uninterrupted_one(
        toy_coco, tmp_path, one_node_two_procs):
    """MAX_RESTARTS=1: rank 1 is SIGKILLed before iteration 4 (epoch 2, after epoch 1's
    checkpoint); torchrun starts both workers again, they resume from epoch 1 and finish with
    the reference run's weights, optimizer state and iteration, bit for bit."""
    config = tmp_path / 'killed.py'
    config.write_text(
        f"_base_ = {DEMO!r}\n"
        "custom_imports = dict(imports=['convnext_mm', 'fault_injection'], "
        "allow_failed_imports=False)\n"
        "custom_hooks = [dict(type='KillOnRankHook', rank=1, iteration=4)]\n")
    work = str(tmp_path / 'work')
    (code, log), = run_agents(['tools/dist_train.sh', str(config), '2', '--work-dir', work] +
                              train_options(toy_coco), nodes=1, MAX_RESTARTS='1')
    assert code == 0, log[-4000:]
    assert 'exitcode: -9' in log or 'exitcode : -9' in log or 'Signals.SIGKILL' in log, log[-3000:]
    assert f'Restart 1 of the job; 0 of 1 restarts remain: resuming from {work}/epoch_1.pth' in log
    assert_same_training_state(osp.join(work, 'epoch_3.pth'), one_node_two_procs)


def test_a_node_that_never_arrives_ends_in_a_clear_time_out(tmp_path):
    start = time.time()
    (code, log), = run_agents(['tools/dist_train.sh', DEMO, '1', '--work-dir', str(tmp_path)],
                              nodes=2, started=1, timeout=120, RDZV_TIMEOUT='5')
    assert code != 0
    assert 'node 0 of 2: waiting up to 5 s for the others' in log
    assert 'Timed out after' in log and '1/2 clients joined' in log, log[-3000:]
    assert time.time() - start < 60
