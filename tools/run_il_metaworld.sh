#!/usr/bin/env bash
# MetaWorld from point clouds, DP3-style Diffusion vs DiffTOP + Diffusion (issue 30's MetaWorld table,
# results/il/pointcloud/metaworld.md): per task, 10 scripted demos, then per seed the Diffusion base and
# DiffTOP + Diffusion from it, il_preset=cpu (shared by both: batch 64, 256 points, per-point MLP 32-64-128)
# with the release's shapes (DP3 encoder, point_dim 64, T=4, To=2, Ta=3; episodes of at most 200 steps).
# 20 evaluation episodes every 5k steps (env seeds 100000+). Every run is resumable; a run whose final
# evaluation is collected in results/ is skipped on a fresh machine; the base is finished first.
#   bash tools/run_il_metaworld.sh TASKS SEEDS
#   bash tools/run_il_metaworld.sh "assembly shelf-place stick-pull" "0 1 2"     # the table (~30-35 core-h)
set -euo pipefail
cd "$(dirname "$0")/.."
TASKS=${1:-"assembly shelf-place stick-pull"}
SEEDS=${2:-"0 1 2"}
export MUJOCO_GL=egl OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
DP3=(+policies.diffusion.encoder.point_encoder=dp3 +policies.diffusion.encoder.point_dim=64
     policies.diffusion.horizon=4 policies.diffusion.n_action_steps=3)
for task in $TASKS; do
  root=runs/il/metaworld-$task/pointcloud
  data=data/metaworld-$task.zarr
  # 10 demos as the release (resumable; a complete store returns at once)
  .venv/bin/difftop demos task="metaworld-$task" episodes=10 out="$data" progress=false
  common=(task="metaworld-$task" obs=pointcloud data="$data" il_preset=cpu max_steps=200 steps=20000
          eval_every=5000 eval_episodes=20 progress=false resume=true)
  for seed in $SEEDS; do
    if ! .venv/bin/python tools/carry.py skip "$root/diffusion/seed$seed" --forced; then
      .venv/bin/difftop il "${common[@]}" policy=diffusion "${DP3[@]}" seed="$seed" \
        out_dir="$root/diffusion/seed$seed"
    fi
    # DiffTOP refines and executes the base's chunk of 3, planned over the 4 predicted steps
    if ! .venv/bin/python tools/carry.py skip "$root/difftop_diffusion/seed$seed"; then
      .venv/bin/difftop il "${common[@]}" policy=difftop init=base base="$root/diffusion/seed$seed" \
        policies.difftop.n_action_steps=3 policies.difftop.plan_horizon=4 seed="$seed" \
        out_dir="$root/difftop_diffusion/seed$seed"
    fi
  done
done
