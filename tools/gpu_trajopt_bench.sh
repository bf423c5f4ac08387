#!/usr/bin/env bash
# On the GPU machine (device tool, one call, < 8 min): the layer's reference path vs its fixed-shape path
# (sync_every=8) vs one TD-MPC MPPI step (and Theseus where installed), held-out family, batch 1 and 256.
# Needs only torch on the device (the repository is on PYTHONPATH); writes $OUT/gpu_trajopt.json.
#   run(command="bash tools/gpu_trajopt_bench.sh", timeout_s=540)
# CPU smoke run of the same script: SMALL=1 OUT=/tmp bash tools/gpu_trajopt_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OUT="${OUT:-$PWD}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
PY=python3; [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch' 2>/dev/null && PY=.venv/bin/python
timeout 450 "$PY" tools/gpu_trajopt_bench.py --problems "${PROBLEMS:-4}" --runs "${RUNS:-9}" \
  ${SMALL:+--small --device cpu --runs 1 --problems 2 --batches 1,4}
