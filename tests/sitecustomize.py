"""Imported at start-up by the Python processes of tests that put tests/ on PYTHONPATH: a
torchrun worker (LOCAL_RANK set) in a test that started a worker server hands its script over
to that server, which has torch and the OpenMMLab libraries imported already
(tests/forked_tools.py). Every other process carries on as usual."""
import os
import sys

if os.environ.get('WORKER_SERVER') and 'LOCAL_RANK' in os.environ and \
        sys.argv and sys.argv[0].endswith('.py'):
    try:
        from forked_tools import hand_over  # tests/ is on sys.path: this module was found there
        hand_over(os.environ['WORKER_SERVER'])  # ends the process
    finally:  # never run the script here as well
        import traceback
        traceback.print_exc()
        os._exit(1)
