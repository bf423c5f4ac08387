"""The per-step figures that results/rl/pixels/README.md (the second GPU lease) quotes, from the
committed CSVs.

Where a pixel run's time went after its 5,000-update burst (train.csv rows past 40k env steps: each row
is one 1000-env-step episode = 125 agent steps at action repeat 8), and DrQ-v2's published cartpole-swingup
pixel returns (mean and population std over its 10 seeds) at the steps our runs reached.
    .venv/bin/python results/rl/pixels/gpu_step_times.py > results/rl/pixels/gpu-lease2/summary.md
"""
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent / "gpu-lease2" / "cartpole-swingup"
REFERENCES = Path(__file__).resolve().parents[4] / "shared" / "reference-curves"  # ../shared beside the repo
DRQ = REFERENCES / "drqv2-pixels" / "cartpole-swingup.csv"
AGENT_STEPS_PER_ROW = 1000 // 8

print("| agent (seed 1) | rows | act ms / agent step | update ms / agent step | env steps / s (median) "
      "| solve iterations | solves flagged |\n|---|---|---|---|---|---|---|")
for agent in ("tdmpc", "difftop"):
    df = pd.read_csv(HERE / agent / "seed1" / "train.csv")
    df = df[df.env_step > 40000]
    solve = [f"{df[c].min():.3f}-{df[c].max():.3f}" if c in df else "-"
             for c in ("solve_iters", "solve_flagged")]
    act, update = (1e3 * df[c].mean() / AGENT_STEPS_PER_ROW for c in ("collect_s", "update_s"))
    print(f"| {agent} | {len(df)} | {act:.1f} | {update:.1f} | {df.env_steps_per_s.median():.1f} "
          f"| {solve[0]} | {solve[1]} |")

drq = pd.read_csv(DRQ)
drq = drq[drq.frame <= 100000].groupby("frame").episode_reward
print("\n| env steps | DrQ-v2 mean | std (10 seeds) |\n|---|---|---|")
for frame, mean, std in zip(drq.mean().index, drq.mean(), drq.std(ddof=0)):
    print(f"| {frame} | {mean:.1f} | {std:.1f} |")
