#!/usr/bin/env bash
# The open CPU campaigns, in the order we want them, as two lanes: one process each, so both lanes together
# fill a 2-core machine. Every run resumes from its checkpoint and a finished run is skipped in seconds
# (also on a fresh machine, from what results/ holds), so after an interruption (the machine went away)
# the same command carries on where it stopped:
#   nohup bash tools/continue.sh rl > runs/logs/rl.log 2>&1 &    # issue 31: the 50k fixed-data tests
#   nohup bash tools/continue.sh il > runs/logs/il.log 2>&1 &    # issues 29-30: images, point clouds
# rl: issue 31. tools/run_mech50k.sh's project-bounds rows of cartpole-swingup-sparse and reacher-easy
#     (checkpoint seed 1: reacher-easy's null control and high dose), then tools/run_il_mechanism.sh on
#     the BC-RNN base (the release's IL loss vs difftop's, seeds 0-2; results/il/mechanism/), then every
#     row of run_mech50k.sh on reacher-easy, finger-spin and cartpole-swingup-sparse, checkpoint seeds 1-5
#     (results/rl/fixed-data/50k/).
# il: the PickCube point-cloud table (BC vs DiffTOP + BC,
#     seeds 0-2, relative joint targets, 8-action chunks; results/il/pointcloud/), the Push-T image table's
#     BC rows (results/il/pusht-images/), the Square image table (results/il/robomimic-images/),
#     Push-T's Diffusion rows, ToolHang and Transport (demos, BC and DiffTOP + BC on seed 0), then the
#     MetaWorld table (Diffusion vs DiffTOP + Diffusion, 3 tasks x 3 seeds; results/il/pointcloud/).
# The finished campaigns of issues 4 and 5 (results/rl/states/, results/il/pusht-states/) are the lanes
# rl-states and il-states (all their runs are collected, so they only skip).
# then `bash tools/collect.sh` copies the CSVs into results/ and redraws tables and curves, and before
# the machine goes away `.venv/bin/python tools/carry.py save` packs what unfinished runs need to resume
# (results/carry/, committed: a fresh machine starts without runs/).
# The IL lane has less left to run: once done, it takes the finger-spin runs of the RL list, the longest
# (run_rl_cpu.sh locks each run while it trains, so the two lanes never take the same run).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs/logs runs/locks
# A fresh machine has no runs/: unpack the resume state of unfinished runs that the last machine saved
# (tools/carry.py; it takes a lock, as both lanes start with this)
.venv/bin/python tools/carry.py restore
# ... and while the lanes run, save it every 30 min, so that a machine taken back before its final
# `carry.py save` still leaves recent tarballs behind (one lane's keeper saves; the other's waits on a
# lock and takes over when that lane ends)
.venv/bin/python tools/carry.py keep --every 1800 &
keeper=$!
trap 'kill $keeper 2>/dev/null || true' EXIT
rl() { bash tools/run_rl_cpu.sh "$1" "$2" "$3"; }              # task agent seed
il() { bash tools/run_il_pusht_state.sh "$1" "$2" cpu; }        # runs seed (il_preset=cpu)
BASES="bc difftop_bc residual_bc difftop_zero difftop_random difftop_nocvae_bc
bc_rnn residual_bc_rnn difftop_bc_rnn difftop_nocvae_bc_rnn"
DIFFUSION="diffusion residual_diffusion difftop_diffusion difftop_nocvae_diffusion"
# RL runs ("task agent seed"; all collected in results/rl/states/runs, so run_rl_cpu.sh skips them).
# Agent steps: cartpole 12.5k, reacher 25k, finger-spin 50k; finger-spin takes 1.5-5 h, longer than a
# machine may be held, and tools/carry.py carries it to the next. The order: seed 2 of reacher-easy
# first, then finger-spin DiffTOP and noback seed 1 (every agent on every task once before a third seed
# anywhere), then seed 3 of cartpole and reacher, then finger-spin seeds 2-3.
RL_RUNS=()
for agent in tdmpc difftop difftop_noback; do RL_RUNS+=("cartpole-swingup $agent 2" "reacher-easy $agent 2"); done
RL_RUNS+=("finger-spin difftop 1" "finger-spin difftop_noback 1")
for task in cartpole-swingup reacher-easy; do
  for agent in tdmpc difftop difftop_noback; do RL_RUNS+=("$task $agent 3"); done
done
for seed in 2 3; do for agent in tdmpc difftop difftop_noback; do RL_RUNS+=("finger-spin $agent $seed"); done; done
# Beyond the issue's three tasks: cartpole-swingup-sparse, one of the paper's 15 (action repeat 8 like
# cartpole-swingup, so ~0.4-0.7 h a run), every agent on a seed before the next seed.
for seed in 1 2 3; do
  for agent in tdmpc difftop difftop_noback; do RL_RUNS+=("cartpole-swingup-sparse $agent $seed"); done
done
case ${1:-} in
  rl)
    BOUNDS=project bash tools/run_mech50k.sh "cartpole-swingup-sparse reacher-easy" 1
    bash tools/run_il_mechanism.sh bc_rnn "0 1 2"
    for seed in 1 2 3 4 5; do
      bash tools/run_mech50k.sh "cartpole-swingup-sparse reacher-easy finger-spin" "$seed"
    done ;;
  il)
    bash tools/run_il_pickcube.sh "bc difftop_bc" "0 1 2"
    OBS=image OMP_NUM_THREADS=1 bash tools/run_il_pusht_state.sh "bc difftop_bc" "0 1 2" cpu
    bash tools/run_il_robomimic.sh square "bc difftop_bc diffusion difftop_diffusion" "0 1 2"
    OBS=image OMP_NUM_THREADS=1 bash tools/run_il_pusht_state.sh "diffusion difftop_diffusion" "0 1 2" cpu
    bash tools/run_il_robomimic.sh toolhang "bc difftop_bc" 0
    bash tools/run_il_robomimic.sh transport "bc difftop_bc" 0
    bash tools/run_il_metaworld.sh "assembly shelf-place stick-pull" "0 1 2" ;;
  rl-states)
    for run in "${RL_RUNS[@]}"; do rl $run; done ;;  # $run splits into task agent seed
  il-states)
    # every row of Tables 1 and 3 for seed 2 (the BC and BC-RNN rows first: no Diffusion base to
    # train), seed 1's last Diffusion row, the Diffusion rows of seed 2, then IBC for seeds 1-2.
    # Finished runs are skipped (collected in results/il/pusht-states/runs); a missing base is retrained first.
    il "$BASES" 2
    il difftop_nocvae_diffusion 1
    il "$DIFFUSION" 2
    il "ibc ibc_diffusion" "1 2"
    for run in "${RL_RUNS[@]}"; do if [[ $run == finger-spin* ]]; then rl $run; fi; done
    for run in "${RL_RUNS[@]}"; do rl $run; done ;;
  *) echo "usage: bash tools/continue.sh rl|il|rl-states|il-states"; exit 2 ;;
esac
