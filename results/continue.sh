#!/usr/bin/env bash
# The runs still owed to issues 4 (RL) and 5 (IL), in the order we want them, as two lanes: one
# process each, so both lanes together fill a 2-core machine. Every run resumes from its checkpoint
# and a finished run is skipped in seconds, so after an interruption (a session's end) the same
# command carries on where it stopped:
#   nohup bash results/continue.sh rl > runs/logs/rl.log 2>&1 &
#   nohup bash results/continue.sh il > runs/logs/il.log 2>&1 &
# then `bash results/collect.sh` copies the CSVs into results/ and redraws tables and curves.
# The IL lane has far less left to run: once done, it works through the RL list from its far end
# (run_cpu.sh locks each run while it trains, so the two lanes never take the same run).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs/logs
rl() { bash results/rl/run_cpu.sh "$1" "$2" "$3"; }            # task agent seed
il() { bash results/il/run_pusht_state.sh "$1" "$2" cpu; }       # runs seed (il_preset=cpu)
BASES="bc difftop_bc residual_bc difftop_zero difftop_random difftop_nocvae_bc
bc_rnn residual_bc_rnn difftop_bc_rnn difftop_nocvae_bc_rnn"
DIFFUSION="diffusion residual_diffusion difftop_diffusion difftop_nocvae_diffusion"
# RL runs ("task agent seed"): seed 1 of the three tasks first (DiffTOP and noback with max_iters 50,
# session 6; explore_std 0.15 since session 8, whose probe run is reacher-easy difftop seed 1; the run
# with explore_std 0 moved to runs/cpu-explore0), shortest first (agent steps: cartpole 12.5k,
# reacher 25k, finger-spin 50k), then seeds 2-3
RL_RUNS=("reacher-easy difftop 1" "finger-spin tdmpc 1" "cartpole-swingup difftop 1"
  "reacher-easy difftop_noback 1" "cartpole-swingup difftop_noback 1" "finger-spin difftop 1"
  "finger-spin difftop_noback 1")
for seed in 2 3; do for task in cartpole-swingup reacher-easy finger-spin; do
  for agent in tdmpc difftop difftop_noback; do RL_RUNS+=("$task $agent $seed"); done
done; done
case ${1:-} in
  rl)
    # session 10's PG-scheme probe (results/rl/README.md, "How the PG loss is applied"), if unfinished
    ROOT=runs/cpu-pg NAME=difftop_batched_c0.1 OVERRIDES="pg_mode=batched c0=0.1 label=difftop_batched_c0.1" \
      bash results/rl/run_cpu.sh cartpole-swingup difftop 1
    for run in "${RL_RUNS[@]}"; do rl $run; done ;;  # $run splits into task agent seed
  il)
    # every row of Tables 1 and 3 for seed 1 (IBC's first seed before the rest of the Diffusion rows:
    # no IBC row exists yet), then seed 2, then IBC for seeds 1-2
    il "$BASES" 1
    il difftop_nocvae_diffusion 0
    il diffusion 1
    il "ibc ibc_diffusion" 0
    il "$DIFFUSION" 1
    il "$BASES" 2
    il "$DIFFUSION" 2
    il "ibc ibc_diffusion" "1 2"
    for ((i = ${#RL_RUNS[@]} - 1; i >= 0; i--)); do rl ${RL_RUNS[i]}; done ;;
  *) echo "usage: bash results/continue.sh rl|il"; exit 2 ;;
esac
