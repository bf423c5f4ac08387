#!/usr/bin/env bash
# Copy the small files of every run (config.yaml, train.csv, eval.csv) from runs/ into results/,
# where they are committed (checkpoints, buffers, videos and TensorBoard stay in runs/), and redraw
# the RL curves and the IL tables and curves.   bash results/collect.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# runs/cpu[-pg|-qs1]/<task>/<agent>/seedN -> results/rl/cpu[-pg|-qs1]/...;  runs/il/<task>/... -> results/il/runs/<task>/...
for src in runs/cpu runs/cpu-pg runs/cpu-qs1 runs/il; do
  [ -d "$src" ] || continue
  find "$src" -name eval.csv | while read -r f; do
    d=$(dirname "$f")
    case $d in
      runs/cpu/* | runs/cpu-pg/* | runs/cpu-qs1/*) dst="results/rl/${d#runs/}" ;;
      runs/il/*) dst="results/il/runs/${d#runs/il/}" ;;
    esac
    # never replace a longer record: a run restarted on a fresh machine (runs/ lost) is copied once it
    # has as many evaluations as the collected one. A finished IL run trained again (a base retrained to
    # initialise other runs: the same seed, but not bit-identical on another machine) keeps its first
    # record; the new one (the base the later runs started from) goes to results/il/reruns/, outside the
    # folders that tables and plots read
    if [ -f "$dst/eval.csv" ]; then
      n=$(wc -l < "$f") m=$(wc -l < "$dst/eval.csv")
      if [ "$n" -lt "$m" ]; then
        echo "kept $dst: its record is longer than $d's"; continue
      elif [ "$n" -eq "$m" ] && ! cmp -s "$f" "$dst/eval.csv" && [ "${d#runs/il/}" != "$d" ] \
        && .venv/bin/python results/carry.py finished "$d"; then
        re="results/il/reruns/${d#runs/il/}"
        mkdir -p "$re" && cp "$d"/config.yaml "$d"/train.csv "$d"/eval.csv "$re/"
        echo "kept $dst: its record is as long as $d's, which went to $re"; continue
      fi
    fi
    mkdir -p "$dst"
    cp "$d"/config.yaml "$d"/train.csv "$d"/eval.csv "$dst"/ 2>/dev/null || true
    if [ -f "$d/final20/eval.json" ]; then  # RL: the 20-episode evaluation of the final checkpoint
      mkdir -p "$dst/final20" && cp "$d/final20/eval.json" "$dst/final20/"
    fi
  done
done
if [ -d results/rl/cpu ]; then
  # against env steps only: seeds ran on different machines (wall-clock: the hours column of cpu_states.md)
  .venv/bin/difftop plot results/rl/cpu out=results/rl/cpu_states.png reference=tdmpc-state x=steps
  # final returns per task and agent over seeds, and DiffTOP paired with TD-MPC and noback seed by seed
  .venv/bin/python results/rl/table.py results/rl/cpu --out results/rl/cpu_states.md >/dev/null
  # The seed-1 DiffTOP runs of sessions 2-5 (memory-mode PG gradient, 20 solver iterations) beside TD-MPC
  .venv/bin/difftop plot results/rl/cpu/{cartpole-swingup,reacher-easy,finger-spin}/tdmpc/seed1 results/rl/cpu-memory \
    results/rl/cpu-iters20/*/difftop_noback \
    out=results/rl/cpu_states_sessions2-5.png reference=tdmpc-state
fi
if [ -d results/rl/cpu-pg ]; then
  # How the PG loss is applied (session 10): online (official) vs batched at every update, cartpole-swingup seed 1
  .venv/bin/difftop plot results/rl/cpu/cartpole-swingup/*/seed1 results/rl/cpu-pg out=results/rl/cpu_pg_modes.png \
    reference=tdmpc-state
fi
if [ -d results/rl/cpu-qs1 ]; then
  # Q_s's TD loss on one step (qs_horizon=1, the pixel default) vs all H (session 21), DiffTOP from states
  .venv/bin/python results/rl/qs_horizon_table.py --out results/rl/qs_horizon.md >/dev/null
fi
# IL: the Table 1/3 layout and the evaluation curves of each results/il/runs/<task>/<setting>
for root in results/il/runs/*/*; do
  [ -d "$root" ] || continue
  name=$(basename "$(dirname "$root")")_$(basename "$root")
  .venv/bin/python results/il/table.py "$root" --out "results/il/$name.md" >/dev/null
  .venv/bin/difftop plot "$root" out="results/il/$name.png" >/dev/null
done
