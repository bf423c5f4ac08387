"""How steep is a trained DiffTOP policy's objective at its base's action, and how far does a solve move it?

On 256 training windows of each run (one fixed draw of a stochastic base): the share of the base's
action elements on the box's bounds, the norm of grad_A J at the base's plan (per sample, and per
plan step), the mean distance the solve moves the plan and the solver's summary. A flat objective
(small gradient) returns its initialisation: the refinement is nil.

    .venv/bin/python -m difftop.diagnostics.objective_slope \
        runs/il/pusht/state-cpu/difftop_nocvae_{diffusion,bc_rnn}/seed0
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from difftop.diagnostics.refinement import run_windows


def slope(run: str, windows: int = 256, seed: int = 0) -> None:
    policy, _, train, _, _ = run_windows(run)
    idx = np.random.default_rng(seed).choice(len(train), min(windows, len(train)), replace=False)
    obs = train.get_batch(idx)["obs"]
    torch.manual_seed(seed)
    with torch.no_grad():
        a0 = policy.frozen_base_actions(obs)
        z_s = policy.encode(obs)
    z_tilde = z_s.new_zeros(len(z_s), policy.posterior_dim)  # the posterior's mean (none without a CVAE)
    J = policy.objective(z_s, z_tilde, a0)
    A = a0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(J(A).sum(), A)
    with torch.no_grad():
        plan, info = policy.trajopt(J, a0)
    per_step = " ".join(f"{x:.1e}" for x in g.norm(dim=-1).mean(0).tolist())
    s = info.summary()
    print(f"{run}: H {a0.shape[1]}, base elements on a bound {(a0.abs() >= 0.999).float().mean():.3f}, "
          f"|grad_A J| at the base's plan {g.flatten(1).norm(dim=1).mean():.1e} (per step: {per_step}), "
          f"|plan - base| {(plan - a0).flatten(1).norm(dim=1).mean():.4f}, "
          f"solver iterations {s['iterations']:.1f}, converged {s['converged']:.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="DiffTOP IL runs with init=base")
    ap.add_argument("--windows", type=int, default=256)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    for run in args.runs:
        slope(run, args.windows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
