"""How often is DiffTOP's policy gradient exactly zero, under each way the action box enters the solve?

Issue 31: with ``bounds=project`` (the default) a variable held at a bound has derivative 0, so a state
whose executed action a*_0 has every component at a bound gives the PG loss ``-c0 min Q_s(s, a*_0)`` no
gradient at all. This probe loads a trained state-based DiffTOP run (``difftop`` or ``difftop_noback``:
its checkpoint and replay buffer), takes ``--states`` buffer observations, solves them as the agent acts
(pi's noiseless rollout as the warm start, the run's solver settings) under each option below, and takes
the gradient of the PG loss with respect to the PG parameters (encoder, dynamics, reward, latent Q), one
state at a time. Options:

- ``project``: the run's own layer (projection and an active set, implicit backward);
- ``tanh``, ``sigmoid``, ``barrier``: ``TrajOpt(bounds=...)`` with ``--weight`` (difftop.trajopt.bounds);
- ``lm_refine``: the release's LM refinement (truncated backward through 5 iterations, clamp in the cost)
  with the release's settings for the run's task (configs/variant/official.yaml), on the run's objective;
- ``official``: the same refinement on the release's objective (H actions, terminal min Q(z_H, pi(z_H))).

Columns: the fraction of states whose PG gradient is exactly zero; the fraction with every component of
a*_0 at a bound (|a| >= 1 - 1e-6); the median gradient norm relative to ``project``'s median over its
non-zero states; the mean objective of the executed plan under the run's objective minus ``project``'s
(``official`` plans are scored with the run's objective on their H actions plus pi's terminal action);
and the time per state.

    .venv/bin/python -m difftop.diagnostics.bounds_gradient runs/mechanism/reacher-easy/difftop_noback/seed1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from difftop.diagnostics.pg_gradient_quality import buffer_states, trained_agent

OPTIONS = ("project", "tanh", "sigmoid", "barrier", "lm_refine", "official")
OFFICIAL_YAML = Path(__file__).resolve().parents[1] / "configs" / "variant" / "official.yaml"


def release_settings(task: str) -> dict:
    """The release's lm_refine settings for ``task`` (configs/variant/official.yaml's table)."""
    table = OmegaConf.load(OFFICIAL_YAML).official
    row = table.tasks.get(task) or table.default
    return {"solver": "lm_refine", "backward": "truncated", "backward_iters": 5,
            "max_iters": int(row.max_iters), "step_size": float(row.step_size),
            "damping": float(row.damping), "residual_offset": 1000.0, "clamp_in_cost": True}


def layer_for(actor, option: str, task: str, weight: float):
    base = actor.trajopt
    if option == "project":
        return base
    if option in ("tanh", "sigmoid", "barrier"):
        return base.replace(bounds=option, bounds_weight=weight)
    keep = {k: v for k, v in base._settings.items() if k in ("low", "high")}
    from difftop.trajopt import TrajOpt

    return TrajOpt(**keep, **release_settings(task))


def measure(agent, obs: torch.Tensor, step: int, option: str, task: str, weight: float) -> dict:
    """Per-state PG gradient norms, a*_0, and the run objective of the executed plan under one option."""
    actor = agent.actor
    layer, terminal = layer_for(actor, option, task, weight), actor.terminal
    actor.terminal = "pi" if option == "official" else "action"
    base_layer, actor.trajopt = actor.trajopt, layer
    norms, a0s, values = [], [], []
    try:
        for i in range(len(obs)):
            o = obs[i:i + 1]
            z0 = agent.model.h(o)
            T = actor.planning_horizon(step) + (actor.terminal == "action")
            init = actor._init_actions(z0, T, False)
            a, _ = actor.trajopt(actor.objective(z0), init)
            g = torch.autograd.grad(actor._pg_loss(o, a[:, 0]).sum(), actor.pg_params, allow_unused=True)
            norms.append(float(torch.sqrt(sum((x.double() ** 2).sum() for x in g if x is not None))
                               if any(x is not None for x in g) else 0.0))
            a0s.append(a[0, 0].detach())
            with torch.no_grad():  # the run's objective (terminal=action) on the executed plan
                plan = a.detach()
                if actor.terminal == "pi":  # append pi's terminal action to score H+1 actions
                    z = z0
                    for t in range(plan.shape[1]):
                        z = agent.model.dynamics(z, plan[:, t])
                    plan = torch.cat([plan, agent.model.pi(z, 0.0).unsqueeze(1)], 1)
                actor.terminal = "action"
                values.append(float(actor.objective(z0)(plan)))
                actor.terminal = "pi" if option == "official" else "action"
    finally:
        actor.trajopt, actor.terminal = base_layer, terminal
    return {"norm": np.array(norms), "a0": torch.stack(a0s), "value": np.array(values)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="state-based difftop / difftop_noback run directories")
    ap.add_argument("--states", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weight", type=float, default=1e-3, help="bounds_weight of tanh/sigmoid/barrier")
    ap.add_argument("--options", nargs="*", default=list(OPTIONS), choices=OPTIONS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print("| run | option | zero PG gradient | a*_0 all at a bound | median norm / project's "
          "| objective - project's | ms per state |")
    print("|---|---|---|---|---|---|---|")
    for run in args.runs:
        agent, cfg, step = trained_agent(run)
        if not cfg.agent.startswith("difftop") or cfg.obs != "state":
            raise SystemExit(f"{run}: needs a state-based difftop run, got {cfg.agent} from {cfg.obs}")
        obs = buffer_states(run, args.states, args.seed)
        torch.manual_seed(args.seed)
        ref = None
        for option in args.options:
            t0 = time.perf_counter()
            m = measure(agent, obs, step, option, str(cfg.task), args.weight)
            ms = 1000 * (time.perf_counter() - t0) / len(obs)
            if ref is None:
                ref = m
            zero = float((m["norm"] == 0).mean())
            at_bound = float((m["a0"].abs() >= 1 - 1e-6).all(-1).float().mean())
            nz = ref["norm"][ref["norm"] > 0]
            ratio = np.median(m["norm"]) / np.median(nz) if len(nz) else float("nan")
            dv = float((m["value"] - ref["value"]).mean())
            print(f"| {run} | {option} | {zero:.2f} | {at_bound:.2f} | {ratio:.3g} | {dv:+.3g} | {ms:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
