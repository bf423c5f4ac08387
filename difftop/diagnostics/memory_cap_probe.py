"""Probe: does capping the condition number of the L-BFGS inverse rescue the memory mode?

The layer's ``implicit_unconverged=memory`` backward applies the forward solve's L-BFGS memory as the
inverse Hessian of a solve cut short. On reacher-easy its PG gradient pointed nowhere (cosine of the
summed gradient 0.06 to the converged one; ``pg_gradient_quality.py``), with single samples 175x too
large: pairs with a tiny curvature s'y give that memory huge inverse eigenvalues. This probe builds
the memory's inverse Hessian densely, caps its eigenvalues at ``cond`` times its smallest one, and
compares the resulting gradients with the converged reference, beside the unmodified memory and
exact modes (max_iters 20, as the run was trained). It patches the layer in-process: a probe, not a
feature.

    .venv/bin/python -m difftop.diagnostics.memory_cap_probe runs/cpu-memory/reacher-easy/difftop/seed1
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from difftop.diagnostics.pg_gradient_quality import compare, load_run, pg_gradients, stat
from difftop.trajopt import implicit, layer
from difftop.trajopt.solvers.first_order import LBFGS

COND: list[float | None] = [None]
_memory_solver = implicit.memory_solver


def capped_memory_solver(memory, fixed, fallback):
    if memory is None or COND[0] is None:
        return _memory_solver(memory, fixed, fallback)
    B, n = fixed.shape
    free = (~fixed).to(memory["S"].dtype)
    rep = {k: memory[k].repeat_interleave(n, 0) for k in ("S", "Y", "valid", "gamma")}
    eye = torch.eye(n, dtype=free.dtype).repeat(B, 1)
    M = LBFGS.apply_inverse(rep, eye, free.repeat_interleave(n, 0)).reshape(B, n, n)
    M = 0.5 * (M + M.transpose(1, 2)) * free.unsqueeze(1) * free.unsqueeze(2)
    ev, V = torch.linalg.eigh(M + torch.diag_embed(fixed.to(M.dtype)))  # fixed variables: unit eigenvalue
    smallest = torch.where(ev > 0, ev, torch.full_like(ev, float("inf"))).amin(-1, keepdim=True)
    Mc = V @ torch.diag_embed(ev.clamp(min=0).minimum(COND[0] * smallest)) @ V.transpose(1, 2)
    return lambda v: (Mc @ (v * free).unsqueeze(-1)).squeeze(-1) * free


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a DiffTOP RL run directory (a checkpoint and its buffer.npz)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    layer.memory_solver = capped_memory_solver
    agent, obs, step, env_steps = load_run(args.run, 48, 0)
    ref, _, _ = pg_gradients(agent, obs, step, max_iters=300, tol=1e-6, implicit_unconverged="exact")
    print(f"{args.run} at {env_steps} env steps, 48 buffer states, max_iters {agent.actor.trajopt.max_iters}")
    print("| mode | condition cap | per-sample cosine (median) | norm ratio (median, max) "
          "| cosine of the summed gradient |")
    print("|---|---|---|---|---|")
    for mode, cond in [("exact", None), ("memory", None), ("memory", 1e4), ("memory", 1e3), ("memory", 1e2),
                       ("memory", 10.0)]:
        COND[0] = cond
        g, _, _ = pg_gradients(agent, obs, step, implicit_unconverged=mode)
        c = compare(g, ref)
        cos, ratio = c["cos"], c["ratio"]
        print(f"| {mode} | {cond or '-'} | {stat(cos, np.median)} | {stat(ratio, np.median, '.2f')}, "
              f"{stat(ratio, np.max, '.3g')} | {c['total']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
