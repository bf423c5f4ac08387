#!/usr/bin/env bash
# Issue 31, imitation: does the release's loss make DiffTOP learn a refinement on Push-T (states)?
# For each base and seed: the base (il_preset=cpu, 20k steps), then DiffTOP + base three ways, from that
# same base checkpoint, so the arms are paired by seed (results/il/mechanism/README.md):
#   default    difftop's DiffTOP (loss_weighting=paper: summed squared error + beta KL, beta = 1; prox 0.1;
#              the base's actions cached once per window; L-BFGS to convergence, implicit backward)
#   weighting  the release's loss 3000 * MSE_mean + 10 * KL, no proximal term, and a fresh base draw at
#              every batch (base_cache=false: a new Diffusion sample; BC-RNN is deterministic)
#   official   the weighting, and the release's solve: lm_refine, 100 LM steps of 3e-5 with damping
#              0.01, back-propagated through the last 5 (per sample, where the release couples the batch)
# train.csv logs the posterior's KL (`kl`: collapse is kl -> 0) and the refinement's size (`refine_abs`,
# mean |a* - a_init|: no refinement is -> 0); eval.csv the coverage and success every 5k steps.
# Runs go to runs/il/pusht/state-cpu-mechanism/<run>/seed<k> (collected in results/il/mechanism/), apart
# from the Tables 1 and 3 campaign: its bases' checkpoints are gone, and a retrained base is not
# bit-identical to the one its collected record came from. Resumable: re-running continues each run.
#   bash tools/run_il_mechanism.sh BASES SEEDS
#   bash tools/run_il_mechanism.sh bc_rnn "0 1 2"          # BC-RNN: ~25 min a base, the arms after it
#   ARMS="default weighting" bash tools/run_il_mechanism.sh diffusion 0
set -euo pipefail
cd "$(dirname "$0")/.."
BASES=${1:-"bc_rnn diffusion"}
SEEDS=${2:-"0 1 2"}
ARMS=${ARMS:-"default weighting official"}
root=runs/il/pusht/state-cpu-mechanism
export MUJOCO_GL=egl OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# the demos are not committed: (re)generate them (deterministic from seeds 0-199; a complete store returns)
.venv/bin/difftop demos task=pusht episodes=200 out=data/pusht.zarr progress=false
common=(task=pusht data=data/pusht.zarr obs=state il_preset=cpu steps=20000 eval_every=5000 eval_episodes=50
        progress=false resume=true)
for seed in $SEEDS; do for base in $BASES; do
  case $base in bc_rnn | diffusion) ;; *) echo "unknown base $base (bc_rnn | diffusion)"; exit 2 ;; esac
  # the base: trained (or resumed) unless finished with its checkpoint here
  if ! .venv/bin/python tools/carry.py skip "$root/$base/seed$seed" --forced; then
    .venv/bin/difftop il "${common[@]}" policy="$base" seed="$seed" out_dir="$root/$base/seed$seed"
  fi
  for arm in $ARMS; do
    run=difftop_$base-$arm
    if .venv/bin/python tools/carry.py skip "$root/$run/seed$seed"; then continue; fi
    args=(policy=difftop init=base base="$root/$base/seed$seed")
    # Diffusion's 8-action chunks are refined and executed whole, as in the Tables 1 and 3 campaign
    [ "$base" = diffusion ] && args+=(policies.difftop.plan_horizon=8 policies.difftop.n_action_steps=8)
    case $arm in
      default) ;;
      weighting | official)
        args+=(policies.difftop.loss_weighting=official policies.difftop.prox=0 base_cache=false)
        [ "$arm" = official ] && args+=(policies.difftop.solver=lm_refine policies.difftop.backward=truncated
          policies.difftop.max_iters=100 "+policies.difftop.trajopt.options={step_size: 3.0e-5, damping: 0.01}") ;;
      *) echo "unknown arm $arm (default | weighting | official)"; exit 2 ;;
    esac
    echo "$(date -u +%FT%TZ) $root/$run/seed$seed"
    .venv/bin/difftop il "${common[@]}" "${args[@]}" seed="$seed" out_dir="$root/$run/seed$seed"
  done
done; done
