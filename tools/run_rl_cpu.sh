#!/usr/bin/env bash
# The CPU comparison (issue 4; results/rl/states/): TD-MPC vs DiffTOP vs DiffTOP w/o backward, from
# states, 100k env steps, preset=cpu (mlp_dim 256, batch 256, 5 eval episodes; shared by all agents). Every run is
# resumable: re-running this script continues each run from its last checkpoint. A finished run then
# gets a final evaluation of its last checkpoint on 20 other episodes (`difftop eval`, seeds
# 20000..20019, into <run>/final20/eval.json): the 5-episode evals during training swing by +-200 on
# reacher-easy, where an episode either reaches the target (~1000) or not (~0).
#   bash tools/run_rl_cpu.sh "cartpole-swingup" "tdmpc difftop" "1"      # tasks, agents, seeds
# A variant (a probe, kept out of runs/cpu): ROOT=runs/cpu-probes NAME=difftop_explore0
#   OVERRIDES="explore_std=0" bash tools/run_rl_cpu.sh reacher-easy difftop 1
# Two copies of this script may work through overlapping lists (tools/continue.sh's two lanes): each
# run holds a lock (runs/locks/) while it trains, and a run locked by the other copy is skipped. A run
# whose 100k evaluation and final20 are already collected in results/ (`tools/carry.py dest`) is
# skipped too.
set -euo pipefail
cd "$(dirname "$0")/.."
TASKS=${1:-"cartpole-swingup reacher-easy finger-spin"}
AGENTS=${2:-"tdmpc difftop difftop_noback"}
SEEDS=${3:-"1 2 3"}
STEPS=100000
export MUJOCO_GL=egl
mkdir -p runs/locks
for seed in $SEEDS; do for task in $TASKS; do for agent in $AGENTS; do
  out="${ROOT:-runs/cpu}/$task/${NAME:-$agent}/seed$seed"
  # A run finished earlier and collected into results/ (a fresh machine has no runs/) is not retrained
  if [ ! -e "$out/checkpoint.pt" ] && [ ! -e "$out/checkpoint" ] && .venv/bin/python tools/carry.py finished "$out"; then
    echo "skip: $out is finished (collected in $(.venv/bin/python tools/carry.py dest "$out"))"; continue
  fi
  (
    flock -n 9 || { echo "skip: $out is being trained by another process"; exit 0; }
    # shellcheck disable=SC2086  # OVERRIDES: space-separated key=value words
    .venv/bin/difftop rl preset=cpu task="$task" agent="$agent" seed="$seed" steps=$STEPS \
      eval_every=10000 threads=1 progress=false resume=true ${OVERRIDES:-} out_dir="$out"
    if [ "$(tail -n 1 "$out/eval.csv" | cut -d, -f1)" = "$STEPS" ] && [ ! -f "$out/final20/eval.json" ]; then
      .venv/bin/difftop eval checkpoint="$out" episodes=20 seed=20000 video=false threads=1 device=cpu \
        out_dir="$out/final20"
    fi
  ) 9>"runs/locks/${out//\//_}.lock"
done; done; done
