#!/usr/bin/env bash
# Push-T from states on the locally generated demos (difftop demos task=pusht episodes=200
# out=data/pusht.zarr). Resumable: re-running continues every run from its checkpoint.
#   bash results/il/run_pusht_state.sh "bc difftop_bc" "0 1 2"
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-"bc difftop_bc"}
SEEDS=${2:-"0 1 2"}
export MUJOCO_GL=egl
for seed in $SEEDS; do for run in $RUNS; do
  case $run in
    bc) args="policy=bc steps=20000" ;;
    difftop_bc) args="policy=difftop base=runs/il/pusht/state/bc/seed$seed init=base steps=20000" ;;
    *) echo "unknown run $run"; exit 2 ;;
  esac
  .venv/bin/difftop il task=pusht data=data/pusht.zarr obs=state seed="$seed" $args eval_every=5000 \
    eval_episodes=50 progress=false resume=true out_dir="runs/il/pusht/state/$run/seed$seed"
done; done
