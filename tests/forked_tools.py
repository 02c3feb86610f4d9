"""``python tools/X.py ARGS`` for the tests, each run in a new process forked from a server
that has already imported torch and the OpenMMLab libraries.

A tool's own process spends about 7 s of its 10-15 s importing those on a 2-core CPU; here
each run is still a separate process (its own registries, logger, exit code, signals), it
just starts with the libraries in memory. ``convnext_mm`` itself is not preloaded: each run
imports it as the command line would. Tests of import-time behaviour start their own
interpreter instead.
"""
import atexit
import multiprocessing
import os
import runpy
import sys

PRELOAD = ['torch', 'torchvision', 'mmengine.runner', 'mmcv.ops', 'mmdet.models', 'mmdet.apis',
           'mmseg.models', 'mmseg.apis', 'timm', 'yapf.yapflib.yapf_api',
           # tools/export_onnx.py: 2.8 s of imports per run (the forkserver skips missing ones)
           'onnx', 'onnxscript', 'onnxruntime', 'torch.onnx._internal.exporter._core']

_context = None


def _forkserver():
    global _context
    if _context is None:
        _context = multiprocessing.get_context('forkserver')
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _run_script(script: str, args: list, cwd: str, env: dict, log_path: str, setup: str):
    """The child: the environment, cwd, argv and sys.path[0] that ``python script args``
    would have, stdout and stderr into ``log_path``; exits as the interpreter would."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    sys.argv = [script] + list(args)
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    try:
        if setup:
            exec(compile(setup, '<setup>', 'exec'), {'__name__': '__setup__'})
        runpy.run_path(script, run_name='__main__')
    finally:
        atexit._run_exitfuncs()  # multiprocessing ends its children with os._exit
        sys.stdout.flush()
        sys.stderr.flush()


class ToolRun:
    """A started tool: ``wait()`` for its exit code, ``output()`` for what it printed."""

    def __init__(self, args: list, cwd: str, log_path: str, env=None, setup: str = ''):
        env = dict(os.environ if env is None else env)
        self.log_path = log_path
        self.process = _forkserver().Process(
            target=_run_script, args=(args[0], args[1:], cwd, env, log_path, setup))
        self.process.start()
        self.pid = self.process.pid

    def wait(self, timeout=None) -> int:
        """The exit code (negative: killed by that signal); kills the run after ``timeout``."""
        self.process.join(timeout)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join()
            raise TimeoutError(f'{self.log_path}: still running after {timeout} s\n' +
                               self.output()[-3000:])
        return self.process.exitcode

    def kill(self):
        self.process.kill()

    def output(self) -> str:
        with open(self.log_path, errors='replace') as f:
            return f.read()
