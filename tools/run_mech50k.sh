#!/usr/bin/env bash
# Issue 31's fixed-data paired test on 50k-step no-backward checkpoints (results/rl/mechanism.md, point 3).
# For each task and seed: train `difftop_noback` (preset=cpu) to 50k env steps (resumable), then from
# that checkpoint and its replay buffer run `difftop.diagnostics.fixed_data_paired` at two doses and two
# bounds options:
#   trainer dose: one PG step per episode's worth of minibatches, on that many states (online training's
#                 rate; episode = 1000 / action_repeat agent steps), for PG_STEPS PG steps;
#   high dose:    a PG step on every minibatch, 200 minibatches (the dose of the early runs).
# and, for each, the null control (`pg_null=true`: the same PG steps through a frozen, randomly initialised
# Q_s, so B - A shows what a perturbation of the model of that size does without task information).
# Every output exists once (results/rl/fixed-data/50k/<task>-seed<k>-<bounds>-<dose>[-null].{md,csv}) and is
# skipped when present, so re-running the script continues where it stopped.
#   bash tools/run_mech50k.sh "cartpole-swingup-sparse reacher-easy finger-spin" "1"
set -euo pipefail
cd "$(dirname "$0")/.."
TASKS=${1:-"cartpole-swingup-sparse reacher-easy finger-spin"}
SEEDS=${2:-"1"}
PG_STEPS=${PG_STEPS:-10}
DOSES=${DOSES:-"trainer high"}
BOUNDS=${BOUNDS:-"project tanh"}
CONTROLS=${CONTROLS:-"pg null"}
OUT=results/rl/fixed-data/50k
export MUJOCO_GL=egl OMP_NUM_THREADS=1
mkdir -p "$OUT"
for seed in $SEEDS; do for task in $TASKS; do
  run=runs/mech50k/$task/difftop_noback/seed$seed
  if [ "$(tail -n 1 "$run/eval.csv" 2>/dev/null | cut -d, -f1)" != "50000" ]; then
    .venv/bin/difftop rl task="$task" seed="$seed" preset=cpu steps=50000 eval_every=10000 progress=false \
      threads=1 agent=difftop_noback resume=true out_dir="$run"
  fi
  repeat=$(.venv/bin/python -c "import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))['action_repeat'])" \
    "$run/config.yaml")
  ep=$((1000 / repeat))
  for bounds in $BOUNDS; do for dose in $DOSES; do for ctl in $CONTROLS; do
    name=$OUT/$task-seed$seed-$bounds-$dose
    extra=()
    [ "$ctl" = null ] && { name=$name-null; extra=(--set pg_null=true); }
    [ -f "$name.md" ] && { echo "skip: $name.md exists"; continue; }
    if [ "$dose" = trainer ]; then
      args=(--updates $((PG_STEPS * ep)) --pg-every "$ep" --pg-states "$ep")
    else
      args=(--updates 200)
    fi
    echo "$(date -u +%FT%TZ) $name: ${args[*]}"
    start=$SECONDS
    .venv/bin/python -m difftop.diagnostics.fixed_data_paired "$run" "${args[@]}" --seeds 5 --episodes 10 \
      --set trajopt.bounds="$bounds" "${extra[@]}" --out "$name"
    echo "$(date -u +%FT%TZ) $name done in $((SECONDS - start)) s"
  done; done; done
done; done
