#!/usr/bin/env bash
# A pixels smoke run on the 2-core CPU (issue 4, results/rl/pixels/): 84x84 RGB, frame stack 3, EGL rendering, the quick
# preset's sizes (mlp 256, batch 128, 2 eval episodes, 250 seed agent steps), 3k env steps: the
# 250-update burst after the seed steps, then one learning episode (a DiffTOP pixel update takes
# ~6 s on a shared core here). It shows the pixel pipeline learning end to end, not a converged
# agent: a real pixels run needs a GPU.
#   bash tools/run_rl_pixels_smoke.sh ["difftop tdmpc"]
set -euo pipefail
cd "$(dirname "$0")/.."
export MUJOCO_GL=egl
for agent in ${1:-difftop}; do
  .venv/bin/difftop rl preset=quick obs=pixels task=cartpole-swingup agent="$agent" seed=1 steps=3000 \
    eval_every=1000 threads=1 progress=false resume=true out_dir="runs/pixels-smoke/cartpole-swingup/$agent/seed1"
done
