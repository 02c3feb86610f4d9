#!/usr/bin/env bash
# Distributed testing on one node: bash tools/dist_test.sh CONFIG CHECKPOINT NUM_PROCS [test.py args]
# Multi-node: NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 bash tools/dist_test.sh CONFIG CKPT 8
# Without CUDA the processes run on the CPU with the gloo backend.
# RDZV_TIMEOUT (seconds, default 600): how long the nodes wait for each other at the start.
set -euo pipefail
CONFIG=$1
CHECKPOINT=$2
NPROCS=$3
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
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
    --rdzv-conf timeout="$RDZV_TIMEOUT" \
    "$ROOT/tools/test.py" \
    "$CONFIG" "$CHECKPOINT" \
    --launcher pytorch "${@:4}"
