"""Implicit-function-theorem backward pass at the solution of the trajectory optimization.

At a solution a* the projected gradient vanishes on the free variables F:
g_F(a*, theta) = 0, so  d a*_F / d theta = -H_FF^{-1} d g_F / d theta  and variables held
at a bound have derivative 0. For an incoming gradient v = dL/da*, the loss gradient is
w^T d g / d theta with w = (-H_FF)^{-1} v_F. We therefore return an output that equals a*
in value and whose backward sends w into the graph of g = grad_a J(a*, theta): autograd
then carries it to every tensor J closes over (latent state, network parameters).

Exact solves (converged samples): -H_FF is positive definite at a strict maximum. Where it is
not (saddle, flat objective with zero-initialised heads), the system is damped and the sample
flagged IMPLICIT_DAMPED: dense mode flips and floors eigenvalues; conjugate-gradient mode detects
non-positive curvature and restarts that sample with a shift. The shift `fallback` makes a flat
problem give the gradient of one unit gradient step (first-order fallback).

Non-converged samples (a solve cut short by max_iters, the usual case in a training loop) have
no implicit derivative to be exact about; by default they use the L-BFGS memory of the forward
solve as the inverse Hessian (Ramzi et al. 2022, "SHINE: sharing the inverse estimate from the
forward pass"), which costs no Hessian product, and are flagged IMPLICIT_INEXACT.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .info import IMPLICIT_DAMPED
from .solvers.first_order import LBFGS
from .solvers.second_order import restrict

Solve = Callable[[Tensor], Tensor]


class _ImplicitGrad(torch.autograd.Function):
    """Identity on a* in value; in backward, v -> w = solve(v) sent to g."""

    @staticmethod
    def forward(ctx, x_star: Tensor, g: Tensor, solve: Solve):
        ctx.solve = solve
        return x_star.clone()

    @staticmethod
    def backward(ctx, v: Tensor):
        # solve None: every variable is fixed, the gradient is exactly zero and g's graph is not walked
        return None, None if ctx.solve is None else ctx.solve(v), None


def memory_solver(memory: dict | None, fixed: Tensor, fallback: float | Tensor) -> Solve:
    """w = M v_F with M the solver's quasi-Newton inverse Hessian on the free variables.

    Without a memory (pgd, or no positive-curvature pair yet) M = I / fallback: the gradient of
    one gradient step (Jacobian-free backpropagation). fallback: a number, or (B,) per sample (the
    layer's fallback in each sample's unit of J, see solvers.base.objective_scale)."""
    if isinstance(fallback, Tensor):
        fallback = fallback.unsqueeze(-1)

    def solve(v: Tensor) -> Tensor:
        f = (~fixed).to(v.dtype)
        vf = v * f
        if memory is None:
            return vf / fallback
        return LBFGS.apply_inverse(memory, vf, f) * f

    return solve


def free_hessian(g: Tensor, x_leaf: Tensor, fixed: Tensor) -> Tensor:
    """(B, n, n) Hessian of J on the variables free in some sample (zero rows and columns elsewhere),
    from the gradient graph ``g(x_leaf)`` of the last evaluation: one batched Hessian-vector product per
    such variable, and none when every variable is fixed.

    Why: the implicit solve restricts H to the free variables (``restrict``), so the rows of fixed ones
    were computed for nothing; and a solution on the bounds (common for trained agents, whose actions
    saturate) needs no product at all. Reusing ``g``'s graph also saves the evaluation a fresh Hessian
    call would repeat."""
    B, n = g.shape
    H = g.new_zeros(B, n, n)
    cols = torch.nonzero((~fixed).any(0)).squeeze(-1)
    if cols.numel() == 0 or not g.requires_grad:
        return H
    k = cols.numel()
    E = g.new_zeros(k, B, n)
    E[torch.arange(k, device=g.device), :, cols] = 1.0
    (rows,) = torch.autograd.grad(g, x_leaf, grad_outputs=E, is_grads_batched=True, retain_graph=True,
                                  allow_unused=True)
    if rows is None:
        return H
    block = rows.detach().permute(1, 0, 2)[:, :, cols]  # (B, k, k): H on the free variables
    H[:, cols.unsqueeze(-1), cols.unsqueeze(0)] = 0.5 * (block + block.transpose(1, 2))
    return H


def dense_solver(H: Tensor, fixed: Tensor, floor: float, fallback: float, status: Tensor,
                 exact: Tensor, approx: Solve, unit: Tensor | None = None) -> Solve:
    """Eigendecomposition of -H_FF once in forward; returns the backward solve (approx where ~exact).
    unit: (B,) J's unit per sample (objective_scale; None: 1): the absolute eigenvalue floor and the
    fallback curvature are in units of J."""
    A = restrict(H.detach(), fixed, unit)
    evals, V = torch.linalg.eigh(A)
    scale = evals.abs().amax(-1, keepdim=True)
    u = torch.ones_like(scale) if unit is None else unit.view(-1, 1).to(scale.dtype)
    lo = torch.maximum(floor * scale, torch.finfo(A.dtype).eps * u)
    ok = evals >= lo
    mu = torch.where(ok, evals, torch.maximum(evals.abs(), torch.maximum(lo, fallback * u)))
    damped = ~ok.all(-1) & exact
    status |= torch.where(damped, IMPLICIT_DAMPED, 0)
    free = (~fixed).to(H.dtype)
    every = bool(exact.all())

    def solve(v: Tensor) -> Tensor:
        vf = v * free
        w = (V @ ((V.transpose(-1, -2) @ vf.unsqueeze(-1)) / mu.unsqueeze(-1))).squeeze(-1) * free
        return w if every else torch.where(exact.unsqueeze(-1), w, approx(v))

    return solve


def cg_solver(g: Tensor, x_leaf: Tensor, fixed: Tensor, memory: dict | None, *, tol: float, max_iters: int,
              fallback: float, status: Tensor, exact: Tensor, approx: Solve, unit: Tensor | None = None
              ) -> Solve:
    """Preconditioned conjugate gradients on Hessian-vector products, run lazily in backward.

    Only the `exact` samples iterate (the others take `approx`). The L-BFGS pairs of the forward
    solve (when there are some) precondition the system, so a few products usually suffice;
    flags for damped samples are written into `status` (the info returned by the forward) when
    backward runs. unit: (B,) J's unit per sample (None: 1): the curvature test and the shift are
    relative to it.
    """
    free = (~fixed).to(g.dtype)

    def hvp(p: Tensor) -> Tensor:
        if not g.requires_grad:
            return torch.zeros_like(p)
        (Hp,) = torch.autograd.grad(g, x_leaf, grad_outputs=p, retain_graph=True, allow_unused=True)
        return torch.zeros_like(p) if Hp is None else Hp

    def precond(r: Tensor) -> Tensor:
        if memory is None:
            return r
        return LBFGS.apply_inverse(memory, r, free) * free

    def solve(v: Tensor) -> Tensor:
        with torch.no_grad():
            b = (v * free * exact.unsqueeze(-1)).detach()
            B = b.shape[0]
            lam = torch.zeros(B, dtype=b.dtype, device=b.device)
            u = torch.ones_like(lam) if unit is None else unit.to(lam.dtype)
            bnorm = b.norm(dim=-1)

            def A(p: Tensor) -> Tensor:
                with torch.enable_grad():
                    Hp = hvp(p * free)
                return (-Hp) * free + lam.unsqueeze(-1) * p

            w = torch.zeros_like(b)
            r = b.clone()
            z = precond(r)
            p = z.clone()
            rz = (r * z).sum(-1)
            done = (bnorm == 0) | ~exact
            damped = torch.zeros(B, dtype=torch.bool, device=b.device)
            for _ in range(max_iters):
                if bool(done.all()):
                    break
                Ap = A(p)
                pAp = (p * Ap).sum(-1)
                pp = (p * p).sum(-1).clamp(min=1e-300)
                bad = ~done & ~(pAp > 1e-12 * pp * (u + lam))
                if bool(bad.any()):
                    # Non-positive curvature: shift this sample and restart its CG.
                    damped |= bad
                    lam = torch.where(bad, torch.maximum(fallback * u,
                                                         2.0 * (pAp / pp).abs() + 2.0 * lam), lam)
                    keep = (~bad).unsqueeze(-1)
                    w = torch.where(keep, w, torch.zeros_like(w))
                    r = torch.where(keep, r, b)
                    z_new = precond(r)
                    z = torch.where(keep, z, z_new)
                    p = torch.where(keep, p, z_new)
                    rz = torch.where(bad, (r * z).sum(-1), rz)
                    Ap = A(p)
                    pAp = (p * Ap).sum(-1)
                step = ~done & (pAp > 0)
                alpha = torch.where(step, rz / pAp.clamp(min=1e-300), torch.zeros_like(rz))
                w = w + alpha.unsqueeze(-1) * p
                r = r - alpha.unsqueeze(-1) * Ap
                done = done | (r.norm(dim=-1) <= tol * bnorm)
                z = precond(r)
                rz_new = (r * z).sum(-1)
                beta = torch.where(step, rz_new / rz.clamp(min=1e-300), torch.zeros_like(rz))
                p = torch.where(done.unsqueeze(-1), p, z + beta.unsqueeze(-1) * p)
                rz = rz_new
            status.bitwise_or_(torch.where(damped, IMPLICIT_DAMPED, 0))
            w = w * free
            return w if bool(exact.all()) else torch.where(exact.unsqueeze(-1), w, approx(v))

    return solve


def implicit_output(x_star: Tensor, g: Tensor, solve: Solve | None) -> Tensor:
    return _ImplicitGrad.apply(x_star.detach(), g, solve)
