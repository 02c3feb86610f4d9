"""``python tools/X.py ARGS`` for the tests, each run in a new process forked from a server
that has already imported torch and the OpenMMLab libraries.

A tool's own process spends about 7 s of its 10-15 s importing those on a 2-core CPU; here
each run is still a separate process (its own registries, logger, exit code, signals), it
just starts with the libraries in memory. ``convnext_mm`` itself is not preloaded: each run
imports it as the command line would. Tests of import-time behaviour start their own
interpreter instead.

torchrun's workers (tests of tools/dist_train.sh) are started by torchrun, not here: with
``WORKER_SERVER`` in their environment, ``tests/sitecustomize.py`` hands each one over to a
server forked the same way (``start_worker_server``), which forks the worker's script with the
worker's argv, environment, working directory and standard streams; the worker process stays
as a stand-in that forwards torchrun's signals and ends as the script ended (its exit code, or
the signal that killed it).
"""
import atexit
import json
import multiprocessing
import os
import runpy
import select
import signal
import socket
import struct
import sys
import tempfile
import threading
import traceback

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


def _run_as_main(script: str, args: list, cwd: str, env: dict, setup: str = '', path=None):
    """Run ``script`` with the environment, cwd, argv, sys.path (``path``, or the server's
    with the script's folder first) and thread count that ``python script args`` would have
    (torch, imported by the server, read OMP_NUM_THREADS from the server's environment)."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    if 'OMP_NUM_THREADS' in env:
        import torch
        torch.set_num_threads(int(env['OMP_NUM_THREADS']))
    sys.argv = [script] + list(args)
    if path is None:
        sys.path[0] = os.path.dirname(os.path.abspath(script))
    else:
        sys.path[:] = path
    try:
        if setup:
            exec(compile(setup, '<setup>', 'exec'), {'__name__': '__setup__'})
        runpy.run_path(script, run_name='__main__')
    finally:
        atexit._run_exitfuncs()  # multiprocessing ends its children with os._exit
        sys.stdout.flush()
        sys.stderr.flush()


def _run_script(script: str, args: list, cwd: str, env: dict, log_path: str, setup: str):
    """The child: ``script`` run as ``python script args`` would run it, stdout and stderr
    into ``log_path``; exits as the interpreter would."""
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    _run_as_main(script, args, cwd, env, setup)


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


# torchrun's workers. A request is a 4-byte length and a JSON object (argv, env, cwd, path), sent
# with the worker's stdin, stdout, stderr and the read end of a pipe whose write end only the
# worker holds: when the worker dies, however it dies, the forked script sees the pipe close
# and kills itself. The server answers the script's pid, then its wait status, one per line.

def _recv_request(conn):
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 4)
    while len(data) < 4 or len(data) < 4 + struct.unpack('!I', data[:4])[0]:
        data += conn.recv(1 << 16)
    return json.loads(data[4:]), fds


def _die_with(alive_fd):
    os.read(alive_fd, 1)  # returns when the worker's end closes
    os.kill(os.getpid(), signal.SIGKILL)


def _run_worker(request, fds):
    """The forked script: never returns."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the server's handler is not the script's
    stdin, stdout, stderr, alive = fds
    for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(fd, target)
        os.close(fd)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)  # torchrun runs its workers with -u
    threading.Thread(target=_die_with, args=(alive,), daemon=True).start()
    code = 1
    try:
        script, *args = request['argv']
        _run_as_main(script, args, request['cwd'], request['env'], path=request['path'])
        code = 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _serve_workers(address: str):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen()
    running = {}  # pid -> connection to its worker
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while True:
            if select.select([listener], [], [], 0.1)[0]:
                conn, _ = listener.accept()
                request, fds = _recv_request(conn)
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    conn.close()
                    _run_worker(request, fds)
                for fd in fds:
                    os.close(fd)
                conn.sendall(f'{pid}\n'.encode())
                running[pid] = conn
            while running:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                conn = running.pop(pid, None)
                if conn is not None:
                    try:
                        conn.sendall(f'{status}\n'.encode())
                    except OSError:
                        pass
                    conn.close()
    finally:
        for pid in running:
            os.kill(pid, signal.SIGKILL)


_worker_server = None


def start_worker_server() -> str:
    """The address of this process's worker server (started on first use, ended at exit):
    put it in a torchrun agent's environment as ``WORKER_SERVER``."""
    global _worker_server
    if _worker_server is None:
        address = os.path.join(tempfile.mkdtemp(prefix='workers-'), 'socket')
        # daemonic: multiprocessing terminates it when this process exits
        process = _forkserver().Process(target=_serve_workers, args=(address,), daemon=True)
        process.start()
        while not os.path.exists(address) and process.is_alive():
            process.join(0.05)
        _worker_server = address
    return _worker_server


def hand_over(address: str):
    """In a torchrun worker, from ``tests/sitecustomize.py``: have the server run this
    worker's script, stand in for it, and end as it ends. Never returns."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(address)
    alive_r, alive_w = os.pipe()
    path = [os.path.dirname(os.path.abspath(sys.argv[0]))] + sys.path  # as the script sees it
    payload = json.dumps({'argv': sys.argv, 'env': dict(os.environ), 'cwd': os.getcwd(),
                          'path': path}).encode()
    socket.send_fds(conn, [struct.pack('!I', len(payload)) + payload], [0, 1, 2, alive_r])
    os.close(alive_r)
    replies = conn.makefile()
    pid = int(replies.readline())

    def forward(signum, _):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:  # the script has ended: its status is on its way
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, forward)
    status = replies.readline()
    if not status:
        os.write(2, b'worker server: the connection closed before the script ended\n')
        os._exit(1)
    code = os.waitstatus_to_exitcode(int(status))
    if code < 0:  # killed by a signal: so is the stand-in
        if -code != signal.SIGKILL:
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)
