#!/usr/bin/env bash
# ManiSkill3 PickCube from point clouds, BC vs DiffTOP + BC (and Residual + BC), il_preset=cpu, on the
# motion-planner demos: the table of results/il/pointcloud/maniskill.md (issue 30). Every run is resumable:
# re-running continues each one from its checkpoint; a run whose final evaluation is collected in results/
# is skipped on a fresh machine; a run's base is finished first.
#   bash tools/run_il_pickcube.sh RUNS SEEDS
#   bash tools/run_il_pickcube.sh "bc difftop_bc" "0 1 2"
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-"bc difftop_bc"}
SEEDS=${2:-"0 1 2"}
root=runs/il/maniskill-pickcube/pointcloud
data=data/maniskill/pickcube.zarr
export MUJOCO_GL=egl OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# the demos are not committed: (re)generate them (100 episodes, ~18-30 s each here; resumable)
.venv/bin/difftop demos task=maniskill-pickcube episodes=100 out=$data progress=false
train() {
  local run=$1 seed=$2 args=""
  # finished in results/ with no checkpoint here (a fresh machine; unless forced as a base), or a finished
  # base whose checkpoint came back from results/carry (resume=true would repeat its final evaluation)
  if .venv/bin/python tools/carry.py skip "$root/$run/seed$seed" ${3:+--forced}; then return; fi
  # every policy executes 8-action chunks: BC predicts them, DiffTOP refines the base's chunk as an 8-step
  # plan, Residual corrects each of its actions (single actions: BC 0/10 at 5k steps, chunks 1/10;
  # results/il/pointcloud/maniskill.md)
  case $run in
    bc) args="policy=bc policies.bc.n_action_steps=8" ;;
    difftop_bc) train bc "$seed" force
      args="policy=difftop init=base base=$root/bc/seed$seed policies.difftop.plan_horizon=8 policies.difftop.n_action_steps=8" ;;
    residual_bc) train bc "$seed" force
      args="policy=residual base=$root/bc/seed$seed policies.residual.n_action_steps=8" ;;
    *) echo "unknown run $run (bc | difftop_bc | residual_bc)"; exit 2 ;;
  esac
  # one evaluation, at the end: 50 episodes of up to 150 steps (about twice the longest demo, 81 steps);
  # ten point-cloud envs in memory at a time
  # shellcheck disable=SC2086
  .venv/bin/difftop il task=maniskill-pickcube obs=pointcloud data=$data il_preset=cpu steps=20000 \
    eval_every=0 eval_episodes=50 eval_batch=10 max_steps=150 seed="$seed" $args progress=false resume=true \
    out_dir="$root/$run/seed$seed"
}
for seed in $SEEDS; do for run in $RUNS; do train "$run" "$seed"; done; done
