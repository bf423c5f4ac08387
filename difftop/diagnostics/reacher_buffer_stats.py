"""Where reacher-easy runs spent their training time: replay-buffer statistics (a diagnostic).

For each run's replay buffer, over the episodes after the 5,000 random seed steps: the share of states
with the elbow at its joint limit (|q2| > 2.7 rad; the joint's range is +-160 deg = +-2.79 rad), the
share of those that were rewarded, the share of a 24 x 24 grid over (shoulder mod 2 pi, elbow)
that was visited, how the actions sit in the box (mean |a|, share at a bound |a| > 0.99), and
the training episodes that never reached the target (return < 50).

Why: DiffTOP's reacher-easy failures fold the elbow into its limit and stay there (see
``python -m difftop.diagnostics.acting_probe``); this says how much of each agent's data was collected there.

    .venv/bin/python -m difftop.diagnostics.reacher_buffer_stats runs/cpu/reacher-easy/{tdmpc,difftop}/seed1
"""

from __future__ import annotations

import argparse

import numpy as np

from difftop.diagnostics._runs import buffer_file


def stats(run: str, seed_episodes: int = 20) -> dict[str, float]:
    b = np.load(buffer_file(run))
    n = int(b["num_episodes"])
    obs, act, rew = b["obs"][seed_episodes:n, :-1], b["action"][seed_episodes:n], b["reward"][seed_episodes:n]
    q1, q2 = np.mod(obs[..., 0], 2 * np.pi), obs[..., 1]  # reacher's observation starts with qpos
    at_limit = np.abs(q2) > 2.7
    grid, _, _ = np.histogram2d(q1.ravel(), q2.ravel(), bins=24, range=[[0, 2 * np.pi], [-2.8, 2.8]])
    return {"episodes": n - seed_episodes, "at_limit": float(at_limit.mean()),
            "rewarded_at_limit": float((rew[at_limit] > 0).mean()) if at_limit.any() else float("nan"),
            "cells": float((grid > 0).mean()), "mean_abs_action": float(np.abs(act).mean()),
            "at_bound": float((np.abs(act) > 0.99).mean()),
            "failed_episodes": int((rew.sum(1) < 50).sum())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="reacher-easy run directories (with buffer.npz)")
    ap.add_argument("--seed-episodes", type=int, default=20, help="episodes of random seed steps to skip")
    args = ap.parse_args(argv)
    print("| run | episodes | elbow at its limit | rewarded there | (q1, q2) cells visited | mean abs action "
          "| actions at a bound | episodes with return < 50 |")
    print("|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        s = stats(run, args.seed_episodes)
        print(f"| {run} | {s['episodes']} | {s['at_limit']:.3f} | {s['rewarded_at_limit']:.3f} "
              f"| {s['cells']:.2f} | {s['mean_abs_action']:.3f} | {s['at_bound']:.3f} "
              f"| {s['failed_episodes']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
