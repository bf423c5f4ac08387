#!/usr/bin/env bash
# Paper Fig. 5 for a trained DiffTOP + BC (seed 0, il_preset=cpu, 20k steps; 20 eval episodes, since only the figure
# is wanted). Writes into runs/fig5/ (outside runs/il/, which collect.sh gathers). The committed copies are in results/il/landscape/.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export MUJOCO_GL=egl
r=runs/fig5
common="task=pusht data=data/pusht.zarr obs=state il_preset=cpu seed=0 steps=20000 eval_every=20000 eval_episodes=20 progress=false resume=true threads=1"
# shellcheck disable=SC2086
.venv/bin/difftop il $common policy=bc out_dir=$r/bc
# shellcheck disable=SC2086
.venv/bin/difftop il $common policy=difftop init=base base=$r/bc out_dir=$r/difftop_bc
.venv/bin/difftop il-landscape checkpoint=$r/difftop_bc out=$r/landscape.png threads=1
.venv/bin/difftop il-landscape checkpoint=$r/difftop_bc out=$r/landscape_f.png threads=1 include_prox=false
