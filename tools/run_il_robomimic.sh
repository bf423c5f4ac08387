#!/usr/bin/env bash
# Robomimic tasks from images (84x84 robomimic cameras plus the low-dim state), il_preset=cpu: the Square
# table of issue 29 (BC, Diffusion, DiffTOP + BC, DiffTOP + Diffusion, seeds 0-2) and the one-seed
# Transport / ToolHang pairs (results/il/robomimic-images/). Every run is resumable: re-running continues
# each one from its checkpoint; a run whose final evaluation is collected in results/ is skipped on a
# fresh machine; a run's base is finished first. The demos (200, images) are generated when missing.
#   bash tools/run_il_robomimic.sh TASK RUNS SEEDS
#   bash tools/run_il_robomimic.sh square "bc difftop_bc diffusion difftop_diffusion" "0 1 2"
#   bash tools/run_il_robomimic.sh toolhang "bc difftop_bc" 0
set -euo pipefail
cd "$(dirname "$0")/.."
TASK=${1:?task: square | transport | toolhang | lift | can}
RUNS=${2:-"bc difftop_bc"}
SEEDS=${3:-"0 1 2"}
case $TASK in square | transport | toolhang | lift | can) ;; *) echo "unknown task $TASK"; exit 2 ;; esac
root=runs/il/$TASK/image-cpu
data=data/${TASK}_image.hdf5
export MUJOCO_GL=egl OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
.venv/bin/difftop demos task="$TASK" episodes=200 out="$data" progress=false
train() {
  local run=$1 seed=$2 base="" args=""
  # finished in results/ with no checkpoint here (a fresh machine; unless forced as a base), or a finished
  # base whose checkpoint came back from results/carry (resume=true would repeat its final evaluation)
  if .venv/bin/python tools/carry.py skip "$root/$run/seed$seed" ${3:+--forced}; then return; fi
  case $run in
    bc | diffusion) args="policy=$run" ;;
    difftop_bc) base=bc; args="policy=difftop init=base" ;;
    # Diffusion executes 8-action chunks; DiffTOP refines and executes the whole chunk, planned as an
    # 8-step trajectory (as on Push-T, tools/run_il_pusht_state.sh)
    difftop_diffusion)
      base=diffusion; args="policy=difftop init=base policies.difftop.plan_horizon=8 policies.difftop.n_action_steps=8" ;;
    *) echo "unknown run $run (bc | diffusion | difftop_bc | difftop_diffusion)"; exit 2 ;;
  esac
  [ -n "$base" ] && { train "$base" "$seed" force; args="$args base=$root/$base/seed$seed"; }
  # 50 evaluation episodes at 10k and 20k steps (the task's horizon: Square 400 steps, Transport and
  # ToolHang 700), env seeds 100000+ (never demo seeds)
  # shellcheck disable=SC2086
  .venv/bin/difftop il task="$TASK" obs=image data="$data" il_preset=cpu seed="$seed" $args steps=20000 \
    eval_every=10000 eval_episodes=50 progress=false resume=true out_dir="$root/$run/seed$seed"
}
for seed in $SEEDS; do for run in $RUNS; do train "$run" "$seed"; done; done
