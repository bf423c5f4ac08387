#!/usr/bin/env bash
# Copy the small files of every run (config.yaml, train.csv, eval.csv) from runs/ into results/,
# where they are committed (checkpoints, buffers, videos and TensorBoard stay in runs/), and redraw
# the RL curves.   bash results/collect.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# runs/cpu/<task>/<agent>/seedN -> results/rl/cpu/...;  runs/il/<task>/... -> results/il/runs/<task>/...
for src in runs/cpu runs/il; do
  [ -d "$src" ] || continue
  find "$src" -name eval.csv | while read -r f; do
    d=$(dirname "$f")
    case $d in
      runs/cpu/*) dst="results/rl/${d#runs/}" ;;
      runs/il/*) dst="results/il/runs/${d#runs/il/}" ;;
    esac
    mkdir -p "$dst"
    cp "$d"/config.yaml "$d"/train.csv "$d"/eval.csv "$dst"/ 2>/dev/null || true
  done
done
if [ -d results/rl/cpu ]; then
  .venv/bin/difftop plot results/rl/cpu out=results/rl/cpu_states.png reference=tdmpc-state
fi
