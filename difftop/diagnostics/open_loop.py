"""Open-loop action error of trained IL runs on demonstration episodes (a diagnostic, not a metric).

Each policy acts on the demo's own observations step by step (its rollout path: reset at the
episode start, observation history padded at the start, recurrent state carried) and its first
predicted action is compared with the demonstrated one. A policy whose open-loop error matches
another's but whose closed-loop coverage is far lower fails from compounding, not from a broken
acting path.

    .venv/bin/python -m difftop.diagnostics.open_loop runs/il/pusht/state-cpu/{bc,bc_rnn}/seed0
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from difftop.data import load_dataset
from difftop.il.train import load_policy


def open_loop_error(run: str, data: str, episodes: int) -> float:
    policy, _ = load_policy(run)
    policy.eval()
    d = load_dataset(data)
    ends = np.asarray(d.episode_ends)
    starts = np.concatenate([[0], ends[:-1]])
    To = policy.shape_meta.obs_horizon
    errs = []
    for s, e in list(zip(starts, ends))[:episodes]:
        states = torch.as_tensor(d.data["state"][s:e], dtype=torch.float32)
        policy.reset()
        pred = []
        for t in range(e - s):
            hist = np.clip(np.arange(t - To + 1, t + 1), 0, None)
            pred.append(policy.predict_action({"state": states[hist][None]})[0, 0].numpy())
        errs.append(np.abs(np.asarray(pred) - d.data["action"][s:e]).mean())
    return float(np.mean(errs))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--data", default="data/pusht.zarr")
    p.add_argument("--episodes", type=int, default=5)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    for run in a.runs:
        with torch.no_grad():
            print(f"{run}: mean |a - a_demo| = {open_loop_error(run, a.data, a.episodes):.3f} (action units)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
