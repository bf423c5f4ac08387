#!/usr/bin/env bash
# Push-T from states on the locally generated demos (difftop demos task=pusht episodes=200
# out=data/pusht.zarr): the runs of the paper's Tables 1 and 3 (results/il/pusht-states/). Every run is
# resumable: re-running continues each one from its checkpoint. List base runs before the runs that use them (`all` does).
#   bash tools/run_il_pusht_state.sh RUNS SEEDS [PRESET]
#   bash tools/run_il_pusht_state.sh "bc difftop_bc" "0 1 2"               # paper sizes
#   bash tools/run_il_pusht_state.sh all "0" cpu                          # every run, CPU sizes
# PRESET: paper (default; runs/il/pusht/state/...) or cpu (il_preset=cpu, batch 64 for every
# policy; runs/il/pusht/state-cpu/...). 20k gradient steps, 50 evaluation episodes every 5k steps.
# OBS=image: the same runs from 96x96 pixels plus agent_pos (issue 29; runs/il/pusht/image[-cpu]/...,
# results/il/pusht-images/), on the same demos (they store the frames).
#   OBS=image bash tools/run_il_pusht_state.sh "bc difftop_bc" "0 1 2" cpu
set -euo pipefail
cd "$(dirname "$0")/.."
ALL="bc difftop_bc residual_bc difftop_zero difftop_random bc_rnn residual_bc_rnn difftop_bc_rnn
diffusion residual_diffusion difftop_diffusion ibc ibc_diffusion
difftop_nocvae_bc difftop_nocvae_bc_rnn difftop_nocvae_diffusion"
RUNS=${1:-"bc difftop_bc"}
[ "$RUNS" = all ] && RUNS=$ALL
SEEDS=${2:-"0 1 2"}
PRESET=${3:-paper}
OBS=${OBS:-state}
case $OBS in state | image) ;; *) echo "unknown OBS $OBS (state | image)"; exit 2 ;; esac
case $PRESET in
  paper) root=runs/il/pusht/$OBS ;;
  cpu) root=runs/il/pusht/$OBS-cpu ;;
  *) echo "unknown preset $PRESET (paper | cpu)"; exit 2 ;;
esac
export MUJOCO_GL=egl
# The demos are not committed: (re)generate them, deterministic from seeds 0-199 (30,580 steps, ~4 min);
# a complete store returns at once, a partial one is completed
.venv/bin/difftop demos task=pusht episodes=200 out=data/pusht.zarr progress=false
# train RUN SEED [force]: train (or resume) one run; its base (or IBC's weights) is trained (or resumed)
# first, also when the base itself is finished in results/ but its checkpoint is gone (a fresh machine)
train() {
  local run=$1 seed=$2 base="" steps=20000 args every
  # finished in results/ with no checkpoint here (a fresh machine; unless forced as a base), or a finished
  # base whose checkpoint came back from results/carry (resume=true would repeat its final evaluation)
  if .venv/bin/python tools/carry.py skip "$root/$run/seed$seed" ${3:+--forced}; then return; fi
  case $run in
    bc | bc_rnn | diffusion | ibc) args="policy=$run" ;;
    difftop_zero | difftop_random) args="policy=difftop init=${run#difftop_}" ;;
    # DiffTOP without the CVAE (eq. 8): on these demos beta = 1 collapses the posterior, and its 64
    # noise inputs slowed learning the refinement (results/il/refinement/README.md)
    difftop_nocvae_*)
      base=${run#difftop_nocvae_}; args="policy=difftop init=base policies.difftop.posterior_dim=0" ;;
    difftop_*) base=${run#difftop_}; args="policy=difftop init=base" ;;
    residual_*) base=${run#residual_}; args="policy=residual" ;;
    # IBC trains without its initialiser: IBC + Diffusion is the trained IBC with Diffusion attached
    ibc_diffusion) base=diffusion; args="policy=ibc weights=$root/ibc/seed$seed"; steps=0 ;;
    *) echo "unknown run $run; choose from: $ALL"; exit 2 ;;
  esac
  # Diffusion predicts 8-action chunks and is evaluated executing them; a policy that refines it
  # refines and executes the whole chunk (one step at a time it would re-sample Diffusion at every
  # step: Residual + Diffusion fell from the base's 0.72 coverage to 0.27 that way, seed 0). DiffTOP
  # plans the chunk as an 8-step trajectory through its latent dynamics.
  case $run in
    residual_diffusion) args="$args policies.residual.n_action_steps=8" ;;
    difftop_diffusion | difftop_nocvae_diffusion)
      args="$args policies.difftop.plan_horizon=8 policies.difftop.n_action_steps=8" ;;
  esac
  local need=$base b
  [ "$run" = ibc_diffusion ] && need="ibc diffusion"
  # (a base finished in runs/ resumes in seconds; a base cut off mid-training is finished first)
  for b in $need; do train "$b" "$seed" force; done
  [ -n "$base" ] && args="$args base=$root/$base/seed$seed"
  # IBC's derivative-free evaluation takes ~35 min per 50 episodes on this CPU: every 10k steps only
  # (the tables use the last evaluation, at 20k, as for every policy)
  # (and a checkpoint every 2k steps, so that losing the machine does not throw away up to 10k steps)
  every=5000
  [ "$run" = ibc ] && every=10000 args="$args checkpoint_every=2000"
  # shellcheck disable=SC2086  # args: space-separated key=value words
  .venv/bin/difftop il task=pusht data=data/pusht.zarr obs="$OBS" il_preset="$PRESET" seed="$seed" \
    $args steps=$steps eval_every=$every eval_episodes=50 progress=false resume=true \
    out_dir="$root/$run/seed$seed"
}
for seed in $SEEDS; do for run in $RUNS; do train "$run" "$seed"; done; done
