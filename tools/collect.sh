#!/usr/bin/env bash
# Copy the small files of every run (config.yaml, train.csv, eval.csv) from runs/ into results/,
# where they are committed (checkpoints, buffers, videos and TensorBoard stay in runs/), and redraw
# the RL curves and the IL tables and curves.   bash tools/collect.sh
# Where each run goes is `tools/carry.py dest <run>` (RL_DEST / IL_DEST there), by the question it answers:
#   runs/cpu/<task>/<agent>/seedN     -> results/rl/states/runs/...      (the states comparison)
#   runs/cpu-pg/...                   -> results/rl/pg-mode/runs/...     (online vs batched PG)
#   runs/cpu-qs1/...                  -> results/rl/qs-horizon/runs/...  (Q_s on one step)
#   runs/mech50k/...                  -> results/rl/fixed-data/50k/runs/... (issue 31, the 50k checkpoints)
#   runs/il/<task>/<setting>/...      -> results/il/<question>/runs/<task>/<setting>/...
set -euo pipefail
cd "$(dirname "$0")/.."
for src in runs/cpu runs/cpu-pg runs/cpu-qs1 runs/mech50k runs/il; do
  [ -d "$src" ] || continue
  find "$src" -name eval.csv | while read -r f; do
    d=$(dirname "$f")
    dst=$(.venv/bin/python tools/carry.py dest "$d")
    # never replace a longer record: a run restarted on a fresh machine (runs/ lost) is copied once it
    # has as many evaluations as the collected one. A finished IL run trained again (a base retrained to
    # initialise other runs: the same seed, but not bit-identical on another machine) keeps its first
    # record; the new one (the base the later runs started from) goes to <question>/reruns/, outside the
    # folders that tables and plots read
    if [ -f "$dst/eval.csv" ]; then
      n=$(wc -l < "$f") m=$(wc -l < "$dst/eval.csv")
      if [ "$n" -lt "$m" ]; then
        echo "kept $dst: its record is longer than $d's"; continue
      elif [ "$n" -eq "$m" ] && ! cmp -s "$f" "$dst/eval.csv" && [ "${d#runs/il/}" != "$d" ] \
        && .venv/bin/python tools/carry.py finished "$d"; then
        re="${dst/\/runs\//\/reruns\/}"
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
S=results/rl/states
if [ -d $S/runs ]; then
  # against env steps only: seeds ran on different machines (wall-clock: the hours column of cpu_states.md)
  .venv/bin/difftop plot $S/runs out=$S/cpu_states.png reference=tdmpc-state x=steps
  # final returns per task and agent over seeds, and DiffTOP paired with TD-MPC and noback seed by seed
  .venv/bin/python -m difftop.diagnostics.rl_table $S/runs --out $S/cpu_states.md >/dev/null
  # The first seed-1 DiffTOP runs (memory-mode PG gradient, 20 solver iterations) beside TD-MPC
  G=results/rl/pg-gradient
  .venv/bin/difftop plot $S/runs/{cartpole-swingup,reacher-easy,finger-spin}/tdmpc/seed1 $G/runs-memory \
    $G/runs-iters20/*/difftop_noback \
    out=$G/early_seed1_runs.png reference=tdmpc-state
fi
if [ -d results/rl/pg-mode/runs ]; then
  # How the PG loss is applied: online (official) vs batched at every update, cartpole-swingup seed 1
  .venv/bin/difftop plot $S/runs/cartpole-swingup/*/seed1 results/rl/pg-mode/runs \
    out=results/rl/pg-mode/cpu_pg_modes.png reference=tdmpc-state
fi
if [ -d results/rl/qs-horizon/runs ]; then
  # Q_s's TD loss on one step (qs_horizon=1, the pixel default) vs all H, DiffTOP from states
  .venv/bin/python results/rl/qs-horizon/qs_horizon_table.py --out results/rl/qs-horizon/qs_horizon.md >/dev/null
fi
# IL: the Table 1/3 layout and the evaluation curves of each results/il/<question>/runs/<task>/<setting>
for root in results/il/*/runs/*/*; do
  [ -d "$root" ] || continue
  q=${root%%/runs/*}
  name=$(basename "$(dirname "$root")")_$(basename "$root")
  .venv/bin/python -m difftop.diagnostics.il_table "$root" --out "$q/$name.md" >/dev/null
  .venv/bin/difftop plot "$root" out="$q/$name.png" >/dev/null
done
