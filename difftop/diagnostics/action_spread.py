"""How much a trained RL agent's training-time actions vary on the same state (a diagnostic of exploration).

For each run's final checkpoint, 16 states from its replay buffer; each state gets ``--repeats``
training-mode actions: TD-MPC's MPPI in training mode (sampled around its elite distribution, no warm
start) or DiffTOP's solve from pi's noisy rollout (``explore=True``, the run's own solver settings,
plus ``explore_std`` if the run had it). Printed: the std over the repeats per action dimension, mean
over states, and for DiffTOP the same for the warm start alone.

    .venv/bin/python -m difftop.diagnostics.action_spread runs/cpu/reacher-easy/{tdmpc,difftop}/seed1
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from difftop.diagnostics.pg_gradient_quality import buffer_states, trained_agent
from difftop.rl.schedules import linear_schedule


def spread(run: str, states: int, repeats: int, seed: int) -> tuple[float, float | None]:
    agent, cfg, step = trained_agent(run)
    obs = buffer_states(run, states, seed)
    torch.manual_seed(seed)
    with torch.no_grad():
        if cfg.agent == "tdmpc":
            stds = []
            for o in obs:
                z = agent.model.h(o[None])
                acts = torch.stack([agent.actor.planner.plan(z, t0=True, eval_mode=False, step=step)[0]
                                    for _ in range(repeats)])
                stds.append(float(acts.std(0).mean()))
            return float(np.mean(stds)), None
        actor = agent.actor  # DiffTOP's TrajOptActor
        z = agent.model.h(obs.repeat_interleave(repeats, 0))
        a = actor.solve(z, step, explore=True, record=False)[:, 0]
        a = a + linear_schedule(cfg.get("explore_std", 0.0), step) * torch.randn_like(a)
        init = actor._init_actions(z, actor.planning_horizon(step) + 1, True)[:, 0]
        a, init = a.clamp(-1, 1).view(states, repeats, -1), init.view(states, repeats, -1)
        return float(a.std(1).mean()), float(init.std(1).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="state-based RL run directories (checkpoint, buffer.npz)")
    ap.add_argument("--states", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print("| run | training-action std (per dimension) | warm start's std (DiffTOP) |")
    print("|---|---|---|")
    for run in args.runs:
        s, w = spread(run, args.states, args.repeats, args.seed)
        print(f"| {run} | {s:.3f} | {'' if w is None else f'{w:.3f}'} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
