#!/usr/bin/env bash
# Distributed training on one node: bash tools/dist_train.sh CONFIG NUM_PROCS [train.py args]
# Multi-node: NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 bash tools/dist_train.sh CONFIG 8
# Without CUDA the processes run on the CPU with the gloo backend.
# MAX_RESTARTS=3: when a worker dies, torchrun starts the whole group again (up to 3 times) and
# each attempt resumes from the last complete checkpoint in the work dir.
# RDZV_TIMEOUT (seconds, default 600): how long the nodes wait for each other at the start.
set -euo pipefail
CONFIG=$1
NPROCS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
MAX_RESTARTS=${MAX_RESTARTS:-0}
RDZV_TIMEOUT=${RDZV_TIMEOUT:-600}
ROOT="$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python )}

if [ "$NNODES" -gt 1 ]; then
    echo "[${0##*/}] node $NODE_RANK of $NNODES: waiting up to ${RDZV_TIMEOUT} s for the others at $MASTER_ADDR:$PORT" >&2
fi
PYTHONPATH="$ROOT":${PYTHONPATH:-} \
"$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$NPROCS" \
    --master_port="$PORT" \
    --max-restarts="$MAX_RESTARTS" \
    --rdzv-conf timeout="$RDZV_TIMEOUT" \
    "$ROOT/tools/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
