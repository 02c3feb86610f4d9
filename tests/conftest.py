import glob
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from forked_tools import ToolRun, start_worker_server  # noqa: E402


if int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1')) > 1:
    # `make test` runs one test process per core: one thread each (and in the tools they
    # start) instead of each process spreading over every core.
    os.environ['OMP_NUM_THREADS'] = '1'
    torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: needs the demos\' work dirs (run by `make demo`)')


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope='session')
def toy_coco(tmp_path_factory) -> str:
    """A tiny toy COCO dataset (8 train, 4 val images of 128x128); its root, ending in '/'."""
    out = tmp_path_factory.mktemp('toy_coco')
    subprocess.run([sys.executable, 'tools/make_toy_data.py', '--out', str(out), '--num-train',
                    '8', '--num-val', '4', '--size', '128', '128'], cwd=ROOT, check=True)
    return str(out) + '/'


# The toy COCO classes of `make_toy_data.py --num-classes 5`, under non-contiguous ids.
FIVE_CLASSES = ('circle', 'square', 'triangle', 'pentagon', 'hexagon')
FIVE_CATEGORY_IDS = (2, 5, 9, 11, 20)


@pytest.fixture(scope='session')
def toy_coco_5(tmp_path_factory) -> str:
    """``toy_coco`` with five classes whose category ids are 2, 5, 9, 11 and 20."""
    out = tmp_path_factory.mktemp('toy_coco_5')
    subprocess.run([sys.executable, 'tools/make_toy_data.py', '--out', str(out), '--num-train',
                    '8', '--num-val', '4', '--size', '128', '128', '--num-classes', '5',
                    '--category-ids'] + [str(i) for i in FIVE_CATEGORY_IDS], cwd=ROOT, check=True)
    return str(out) + '/'


def randomize_(model: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    """Give every parameter random values so that no block is a near no-op.

    Fresh ConvNeXts have layer scale 1e-6 and zero GRN weights, which would let
    a test pass with the blocks wired wrongly.
    """
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                is_norm_weight = isinstance(module, torch.nn.LayerNorm) and name == 'weight'
                p.copy_(float(is_norm_weight) + scale * torch.randn_like(p))
    return model


def load_tool(name: str):
    """Import ``tools/<name>.py`` as a module (to call its functions in-process)."""
    path = os.path.join(ROOT, 'tools', f'{name}.py')
    spec = importlib.util.spec_from_file_location(f'{name}_tool', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start_tool(args, env=None, setup='') -> ToolRun:
    """Start ``python ARGS`` (a tool and its arguments) from the repository root, forked from
    a process with the libraries already imported (tests/forked_tools.py); ``setup`` is code
    the process runs first."""
    fd, log_path = tempfile.mkstemp(prefix='tool-', suffix='.log')
    os.close(fd)
    return ToolRun(args, ROOT, log_path, env, setup)


def run_tool(args, timeout=900, env=None, setup='', returncode=0) -> str:
    """Run a Python tool as ``start_tool`` does; fail with its output unless it exits with
    ``returncode``; return what it printed (stdout and stderr)."""
    run = start_tool(args, env, setup)
    code = run.wait(timeout)
    output = run.output()
    os.remove(run.log_path)
    assert code == returncode, f'exit code {code}\n' + output[-6000:]
    return output


# mmengine validates after the last epoch or iteration whatever val_interval says: training
# runs that test something else leave validation out (as `make demo` does).
NO_VALIDATION = {'val_cfg': None, 'val_dataloader': None, 'val_evaluator': None}


def cfg_options(root: str, **extra) -> list:
    """``--cfg-options`` pointing a demo config's dataloaders at ``root``, logging every iter;
    with ``**NO_VALIDATION`` in ``extra``, without validation."""
    options = {
        'train_dataloader.dataset.data_root': root,
        'val_dataloader.dataset.data_root': root,
        'test_dataloader.dataset.data_root': root,
        'default_hooks.logger.interval': 1,
        'randomness.seed': 0,
    }
    options.update(extra)
    if 'val_cfg' in extra and extra['val_cfg'] is None:
        options = {k: v for k, v in options.items() if not k.startswith('val_') or v is None}
    return ['--cfg-options'] + [f'{k}={v}' for k, v in options.items()]


def coco_options(root: str, **extra) -> list:
    """``cfg_options`` for the detection demo on the toy COCO data at ``root``: the COCO
    evaluators read that root's val annotations, and a checkpoint is saved every epoch."""
    annotations = root + 'annotations/instances_val.json'
    return cfg_options(root, **{'val_evaluator.ann_file': annotations,
                                'test_evaluator.ann_file': annotations,
                                'default_hooks.checkpoint.interval': 1, **extra})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_agents(command: list, nodes: int, started: int = None, timeout: int = 600,
               **env) -> list:
    """``bash COMMAND`` once per node (NNODES=nodes, NODE_RANK=i, one free port), for the first
    ``started`` nodes (default all); every agent and its workers are killed on the way out,
    whatever happened. The workers start as forks of a server with the libraries imported
    (tests/forked_tools.py). Returns each agent's (exit code, output)."""
    port, agents = str(free_port()), []
    env.setdefault('WORKER_SERVER', start_worker_server())
    try:
        for node in range(nodes if started is None else started):
            node_env = dict(os.environ, NNODES=str(nodes), NODE_RANK=str(node),
                            MASTER_ADDR='127.0.0.1', PORT=port,
                            PYTHONPATH=os.path.join(ROOT, 'tests'), **env)
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


def assert_logged_lr(work_dir: str, stem_scale: float) -> None:
    """A layer-decay run's scalars.json logs as `lr` the lr of the scale-1.0 groups, which is
    mmengine's scheduled lr (`base_lr`, from the configured lr through the warm-up), and as
    `stem_lr` that times the stem's scale in the decay table."""
    path, = glob.glob(os.path.join(work_dir, '*', 'vis_data', 'scalars.json'))
    with open(path) as f:
        rows = [row for row in map(json.loads, f) if 'lr' in row]
    assert rows and rows[1]['base_lr'] > rows[0]['base_lr']  # the warm-up is followed
    for row in rows:
        assert row['lr'] == pytest.approx(row['base_lr'], rel=1e-6), row
        assert row['stem_lr'] == pytest.approx(row['base_lr'] * stem_scale, rel=1e-6), row


def assert_v2_backbone_is_timms(backbone, arch: str) -> None:
    """A V2 backbone has the parameters of timm's convnextv2_<arch> without its classifier
    (head and final norm) plus its four per-stage output norms."""
    import timm
    with torch.device('meta'):
        reference = timm.create_model(f'convnextv2_{arch}')
    timm_backbone = sum(p.numel() for name, p in reference.named_parameters()
                        if not name.startswith('head'))
    assert sum(p.numel() for p in backbone.parameters()) == \
        timm_backbone + 2 * sum(backbone.out_channels)


def assert_v1_recipe_with_v2_block(v2, v1, arch: str) -> None:
    """Config ``v2`` is ``v1`` with the V2 block and the official FCMAE weights of ``arch``."""
    assert v2.model.backbone.use_grn and v2.model.backbone.init_cfg.checkpoint.endswith(
        f'convnextv2/pt_only/convnextv2_{arch}_1k_224_fcmae.pt')
    v2.model.backbone.pop('use_grn')
    v2.model.backbone.init_cfg = v1.model.backbone.init_cfg
    assert v2.model == v1.model and v2.optim_wrapper == v1.optim_wrapper
    assert v2.train_dataloader == v1.train_dataloader and v2.param_scheduler == v1.param_scheduler


def installed_config(package, relpath, options=None, import_custom_modules=True):
    """A config shipped with an installed OpenMMLab package (its ``.mim/configs``), with
    ``options`` (``--cfg-options`` style, list indices allowed) merged in."""
    from mmengine.config import Config
    module = pytest.importorskip(package)
    path = os.path.join(os.path.dirname(module.__file__), '.mim', 'configs', relpath)
    cfg = Config.fromfile(path, import_custom_modules=import_custom_modules)
    if options:
        cfg.merge_from_dict(options, allow_list_keys=True)
    return cfg


def without_scope(node):
    """A config dict without the ``_scope_`` marks mmengine adds to what a ``pkg::`` base
    defines."""
    if isinstance(node, dict):
        return {k: without_scope(v) for k, v in node.items() if k != '_scope_'}
    if isinstance(node, (list, tuple)):
        return type(node)(without_scope(v) for v in node)
    return node


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
