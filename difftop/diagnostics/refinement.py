"""How far Residual and DiffTOP runs move their frozen base's action, and how well (a diagnostic).

On a run's own validation windows (its config's ``val_ratio`` / ``split_seed``), in normalised action
units: the base's error and the refined action's error (MSE per element), the mean size of the
refinement |a - a0| against the size needed |a_demo - a0|, the least-squares slope of the
refinement on the needed one (1: it moves all the way, 0: not at all) and the median cosine
between them (direction). DiffTOP acts as at test time (z~ ~ N(0, I), seeded).

    .venv/bin/python -m difftop.diagnostics.refinement runs/il/pusht/state-cpu/{residual,difftop}_bc_rnn/seed0
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from omegaconf import OmegaConf

from difftop.data import SequenceDataset, load_dataset
from difftop.il.train import load_policy
from difftop.tasks import get_task


def run_windows(run: str):
    """(policy in eval mode, the run's config, its training windows, its validation windows, all windows)."""
    policy, state = load_policy(run)
    policy.eval()
    cfg = OmegaConf.create(state["config"])
    meta = policy.shape_meta
    data = load_dataset(cfg.data)
    get_task(cfg.task).derive(data, cfg.obs)  # the actions in the frame the run trained on
    full = SequenceDataset(data, list(meta.obs), "action", horizon=meta.horizon,
                           obs_horizon=meta.obs_horizon, n_action_steps=meta.n_action_steps)
    train, val = full.split(float(cfg.val_ratio), seed=int(cfg.split_seed))
    return policy, cfg, train, val, full


@torch.no_grad()
def refinement(run: str, max_windows: int = 2048) -> dict[str, float]:
    policy, cfg, _, val, full = run_windows(run)
    meta = policy.shape_meta
    ds = val if len(val) else full
    idx = np.linspace(0, len(ds) - 1, min(len(ds), max_windows)).astype(int)
    batch = ds.get_batch(idx)
    obs, Ta = batch["obs"], meta.n_action_steps
    base = policy.frozen_base_actions(obs)  # one draw: a stochastic base (Diffusion) differs per call
    if base is None:
        raise SystemExit(f"{run}: not a policy that refines a frozen base (residual, difftop init=base)")
    a0 = base[:, :Ta]
    if cfg.policy == "difftop":
        torch.manual_seed(0)
        To = meta.obs_horizon
        target = batch["action"][:, To - 1: To - 1 + Ta]
        refined = policy.solve(obs, init=base)[0][:, :Ta]
    else:
        target = batch["action"][:, policy.window]
        refined = policy._forward(obs, stateless=True, base=base)[:, :Ta]
    target = policy.normalizer.normalize("action", target)
    need, got = (target - a0).flatten(1), (refined - a0).flatten(1)
    return {
        "base_mse": float(need.pow(2).mean()),
        "refined_mse": float((target - refined).pow(2).mean()),
        "refinement": float(got.norm(dim=1).mean()),
        "needed": float(need.norm(dim=1).mean()),
        "slope": float((need * got).sum() / need.pow(2).sum()),
        "cosine": float(torch.nn.functional.cosine_similarity(got, need, dim=1).median()),
        "windows": len(idx),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    print("| run | base MSE | refined MSE | mean refinement | needed | slope | median cosine |")
    print("|---|---|---|---|---|---|---|")
    for run in a.runs:
        r = refinement(run)
        print(f"| {run} | {r['base_mse']:.5f} | {r['refined_mse']:.5f} | {r['refinement']:.4f} | "
              f"{r['needed']:.4f} | {r['slope']:.3f} | {r['cosine']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
