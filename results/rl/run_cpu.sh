#!/usr/bin/env bash
# The CPU comparison (issue 4): TD-MPC vs DiffTOP vs DiffTOP w/o backward, from states, 100k env
# steps, preset=cpu (mlp_dim 256, batch 256, 5 eval episodes; shared by all agents). Every run is
# resumable: re-running this script continues each run from its last checkpoint.
#   bash results/rl/run_cpu.sh "cartpole-swingup" "tdmpc difftop" "1"      # tasks, agents, seeds
set -euo pipefail
cd "$(dirname "$0")/../.."
TASKS=${1:-"cartpole-swingup reacher-easy finger-spin"}
AGENTS=${2:-"tdmpc difftop difftop_noback"}
SEEDS=${3:-"1 2 3"}
export MUJOCO_GL=egl
for seed in $SEEDS; do for task in $TASKS; do for agent in $AGENTS; do
  .venv/bin/difftop rl preset=cpu task="$task" agent="$agent" seed="$seed" steps=100000 \
    eval_every=10000 threads=1 progress=false resume=true \
    out_dir="runs/cpu/$task/$agent/seed$seed"
done; done; done
