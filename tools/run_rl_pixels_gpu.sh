#!/usr/bin/env bash
# Real pixels runs of issue 4 on the lent GPU machine (one NVIDIA H200, 16 cores; see
# results/rl/pixels/README.md): cartpole-swingup from 84x84 RGB (frame stack 3, EGL), the paper's sizes
# (preset=paper: lr 3e-4, batch 256, MLP 512, 5000 seed agent steps), 100k env steps, four runs side by
# side on the one GPU, each cut off after $DUR seconds (SIGINT: the run closes its logs and keeps its
# last checkpoint; every CSV row written so far stays). Device time is rationed (15 min a lease), so
# a run that does not finish in $DUR is reported as far as it got. Runs pass resume=true and keep their
# replay buffer in the checkpoint dir, so calling this again on the still-warm machine (runs/ is
# ignored by git and stays there between calls; BENCH=0) continues each run from its last checkpoint.
#
# That machine has no network: its python3 (3.12, torch+CUDA) lacks dm-control, MuJoCo, Hydra and
# gymnasium, which travel as wheels in .whl/ (and dm_control, trimmed of its unused locomotion and dog
# assets, in .whl/py/), with the EGL loader libraries as .deb files in .gl/ (both git-ignored; how to
# make them: tools/prepare_gpu.sh). Call through the device tool with carry [".whl", ".gl"]:
#   bash tools/run_rl_pixels_gpu.sh
# LOCAL=1 runs the same thing here on the CPU with .venv (a short rehearsal: DUR=60 STEPS=...).
# BENCH=N (seconds, default 90; 0: none) first times one agent step of each agent alone on the GPU
# (`difftop bench rl device=cuda`), the issue's speed benchmark, into runs/gpu/bench/.
set -uo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-420}
STEPS=${STEPS:-100000}
RUNS=${RUNS:-"tdmpc:1 tdmpc:2 difftop:1 difftop_noback:1"}
EXTRA=${EXTRA:-}
OUTD=${OUT:-runs/gpu-out}
mkdir -p "$OUTD"
export MUJOCO_GL=egl PYTHONUNBUFFERED=1
if [[ ${LOCAL:-0} == 1 ]]; then
  PY=.venv/bin/python
  export PYTHONPATH=$PWD/.whl/py  # the trimmed dm_control, as there
else
  PY=python3
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || { echo "wheel install failed"; exit 3; }
  export PYTHONPATH=$PWD:$PWD/.whl/py:/tmp/site
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
  vendor=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  [[ -f $vendor ]] && export __EGL_VENDOR_LIBRARY_FILENAMES=$vendor
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
fi
# Everything a run needs, in seconds: CUDA, a rendered pixel observation, the trainer's imports.
$PY - <<'EOF' || { echo "pre-flight check failed"; exit 4; }
import time, torch, numpy as np
t = time.time()
from difftop.envs.dmc import make_env
import difftop.rl.trainer  # noqa: F401
env = make_env("cartpole-swingup", "pixels", 0)
obs, _ = env.reset(seed=0)
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-",
      "| pixels", obs.shape, obs.dtype, "mean", float(np.mean(obs)), f"| {time.time() - t:.1f} s")
assert obs.std() > 0, "blank frame: the renderer drew nothing"
import os
assert os.environ.get("LOCAL") == "1" or torch.cuda.is_available(), "no CUDA: the runs would train on the CPU"
EOF
# Job control on: a background job of a plain script has SIGINT ignored, and timeout's SIGINT must reach
# the run (which then closes its logs; KeyboardInterrupt) rather than wait for the KILL 30 s later.
set -m
mkdir -p runs/gpu
BENCH=${BENCH:-90}
if (( BENCH > 0 )); then
  timeout --foreground -s INT -k 10 "$BENCH" $PY -m difftop.cli bench rl obs=pixels rl_preset=paper device=auto \
    buffer_episodes=2 threads=3 'rows=[tdmpc,"difftop (online PG)",difftop_noback]' tag=_pixels_gpu \
    out_dir=runs/gpu/bench 2>&1 | grep -v OpenGL
fi
pids=()
for spec in $RUNS; do
  agent=${spec%%:*} seed=${spec##*:}
  dir=runs/gpu/cartpole-swingup/$agent/seed$seed
  timeout -s INT -k 30 "$DUR" $PY -m difftop.cli rl preset=paper obs=pixels task=cartpole-swingup \
    agent="$agent" seed="$seed" steps="$STEPS" video=false progress=false threads=3 \
    checkpoint_minutes=2 resume=true out_dir="$dir" $EXTRA >> "runs/gpu/log_${agent}_seed$seed.txt" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; echo "run $p exit $?"; done
for f in runs/gpu/log_*.txt; do echo "== $f"; tail -n 4 "$f"; done
for d in runs/gpu/cartpole-swingup/*/seed*; do
  echo "== $d"; cat "$d/eval.csv" 2>/dev/null; tail -n 2 "$d/train.csv" 2>/dev/null
  a=$(basename "$(dirname "$d")"); s=$(basename "$d")
  [[ -e $d/checkpoint.pt || -d $d/checkpoint ]] && $PY tools/slim_checkpoint.py "$d" "$OUTD/ckpt_${a}_$s.pt"
done
tar czf "$OUTD/runs.tgz" --exclude=checkpoint.pt --exclude=buffer.npz --exclude=checkpoint \
  --exclude='.checkpoint.*' runs/gpu
ls -la "$OUTD"
