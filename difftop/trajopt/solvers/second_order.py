"""Solvers on the true Hessian: Levenberg-Marquardt damping and a modified Newton method.

Both maximise J directly with the exact (B, n, n) Hessian of J, not a Gauss-Newton model of
a scalar residual (the official release minimised (1000 - J)^2, whose Gauss-Newton matrix
is rank 1 and whose Cholesky fails on non-positive-definite systems). An indefinite or
singular system never raises: LM increases its damping, Newton flips and floors the
eigenvalues; either way the sample is flagged DAMPED in the info.
They end with the Hessian at the solution, which the implicit backward reuses.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from ..box import Box
from ..evaluate import Problem
from .base import Solver, State, all_finite, rounding_accept, where_rows


def restrict(H: Tensor, fixed: Tensor, unit: Tensor | None = None) -> Tensor:
    """-H on the free variables; fixed variables decoupled with a unit diagonal.

    unit: (B,) J's unit per sample (objective_scale; None: 1). The decoupling diagonal is one unit of
    J, not 1: an absolute 1 dominated the spectrum of an objective scaled by 1e-8 and the relative
    eigenvalue floor then flattened every true eigenvalue."""
    A = -H
    free = (~fixed).to(H.dtype)
    A = A * free.unsqueeze(-1) * free.unsqueeze(-2)
    diag = fixed.to(H.dtype) if unit is None else fixed.to(H.dtype) * unit.unsqueeze(-1)
    return A + torch.diag_embed(diag)


class Newton(Solver):
    """Modified Newton: eigenvalues of -H made positive (|lambda|, floored), projected line search."""

    name = "newton"
    needs_hessian = True

    def __init__(self, eig_floor: float = 1e-6, **kw):
        super().__init__(**kw)
        self.eig_floor = float(eig_floor)

    def step(self, prob: Problem, box: Box, st: State, active: Tensor, create_graph: bool,
             force: Tensor | None = None, fixed: Tensor | None = None):
        fixed = box.fixed_mask(st.x.detach(), st.g.detach()) if fixed is None else fixed
        gF = torch.where(fixed, torch.zeros_like(st.g), st.g)
        A = restrict(st.H, fixed, prob.scale)
        evals, V = torch.linalg.eigh(A.detach())
        scale = evals.abs().amax(-1, keepdim=True)
        # eigenvalues are in units of J (prob.scale) per action^2: so is the absolute part of the floor
        unit = prob.scale.unsqueeze(-1) if prob.scale is not None else 1.0
        floor = torch.maximum(self.eig_floor * scale, torch.finfo(A.dtype).eps * unit)
        ok = evals >= floor
        mu = torch.where(ok, evals, torch.maximum(evals.abs(), floor))
        damped = ~ok.all(-1)
        d = (V @ ((V.transpose(-1, -2) @ gF.detach().unsqueeze(-1)) / mu.unsqueeze(-1))).squeeze(-1)
        if create_graph and (A.requires_grad or gF.requires_grad):
            # Differentiate the step through a linear solve, never through eigh, whose derivative is
            # infinite at repeated eigenvalues (two variables held at bounds share restrict()'s unit
            # eigenvalue; c * I has one eigenvalue): unrolled/truncated gradients were NaN there.
            # Same value as d; the damping correction (mu - evals) is held constant.
            C = V @ torch.diag_embed(mu - evals) @ V.transpose(-1, -2)
            dg = torch.linalg.solve(A + C, gF.unsqueeze(-1)).squeeze(-1)
            d = d + (dg - dg.detach())
        d = torch.where(fixed, torch.zeros_like(gF), d)
        d = self.cap_step(d, box)
        alpha0 = torch.ones_like(st.J.detach())
        new, acc, stall, nonfin, _ = self.line_search(prob, box, st, d, alpha0, active, create_graph, force)
        return new, acc, stall, nonfin, damped


class LevenbergMarquardt(Solver):
    """Newton steps on (-H + lambda I) with lambda adapted by the gain ratio (Nielsen's rule).

    lambda grows until the damped system is positive definite (Cholesky succeeds) and the
    step increases J as the quadratic model predicted; it shrinks after good steps, so LM
    turns into Newton near a maximum. A trust-region method in all but name.
    """

    name = "lm"
    needs_hessian = True

    def __init__(self, damping: float = 1e-3, max_damping_tries: int = 12, **kw):
        super().__init__(**kw)
        self.damping = float(damping)
        self.max_damping_tries = int(max_damping_tries)

    def init_memory(self, st: State, box: Box, unit: Tensor) -> dict:
        # lambda is in units of J (unit: objective_scale) per action^2, as the Hessian
        diag = st.H.detach().diagonal(dim1=-2, dim2=-1).abs().amax(-1)
        lam = self.damping * torch.maximum(diag, unit)
        return {"lam": lam, "nu": torch.full_like(lam, 2.0), "unit": unit}

    def step(self, prob: Problem, box: Box, st: State, active: Tensor, create_graph: bool,
             force: Tensor | None = None, fixed: Tensor | None = None):
        lam, nu, unit = st.extra["lam"], st.extra["nu"], st.extra["unit"]
        fixed = box.fixed_mask(st.x.detach(), st.g.detach()) if fixed is None else fixed
        gF = torch.where(fixed, torch.zeros_like(st.g), st.g)
        A = restrict(st.H, fixed, unit)
        n = A.shape[-1]
        eye = torch.eye(n, dtype=A.dtype, device=A.device)
        damped = torch.zeros_like(active)
        lam_try = lam.clone()
        for _ in range(self.max_damping_tries):
            L, info = torch.linalg.cholesky_ex((A + lam_try.view(-1, 1, 1) * eye).detach())
            bad = (info != 0) & active
            if not bool(bad.any()):
                break
            damped |= bad
            lam_try = torch.where(bad, lam_try * 10.0 + 1e-12 * unit, lam_try)
        bad = info != 0
        if create_graph:  # differentiable solve (unrolling)
            d = torch.linalg.solve(A + lam_try.view(-1, 1, 1) * eye, gF.unsqueeze(-1)).squeeze(-1)
        else:
            d = torch.cholesky_solve(gF.unsqueeze(-1), L).squeeze(-1)
        d = torch.where(fixed | bad.unsqueeze(-1), torch.zeros_like(d), d)
        d = self.cap_step(d, box)
        xt = box.project(st.x + d)
        xt = where_rows(active & ~bad, xt, st.x)
        s = (xt - st.x).detach()
        Hd = st.H.detach()
        pred = (st.g.detach() * s).sum(-1) + 0.5 * (s.unsqueeze(-2) @ Hd @ s.unsqueeze(-1)).view(-1)
        Jt, gt, Ht = self.evaluate(prob, xt, create_graph)
        fin = all_finite(Jt.detach(), gt.detach(), Ht.detach())
        actual = Jt.detach() - st.J.detach()
        rho = actual / torch.where(pred > 0, pred, torch.ones_like(pred))
        model_ok = ((pred > 0) & (rho > 1e-4)) | ((pred <= 0) & (actual > 0))
        # A change of J within rounding says nothing about the model: judge the step on its slope.
        near = ~model_ok & rounding_accept(st.J.detach(), Jt.detach(), (st.g.detach() * s).sum(-1),
                                           (gt.detach() * s).sum(-1), unit)
        rho = torch.where(near, torch.ones_like(rho), rho)
        accept = active & ~bad & fin & (model_ok | near)
        if force is not None:
            accept = accept | (active & ~bad & fin & force)
        # Nielsen's damping update.
        shrink = torch.clamp(1.0 - (2.0 * rho - 1.0) ** 3, min=1.0 / 3.0)
        lam_new = torch.where(accept, lam_try * shrink, lam_try * nu)
        nu_new = torch.where(accept, torch.full_like(nu, 2.0), nu * 2.0)
        lam_new = torch.where(active, lam_new, lam)
        nu_new = torch.where(active, nu_new, nu)
        scale = torch.maximum(Hd.diagonal(dim1=-2, dim2=-1).abs().amax(-1), unit)
        stall = active & ~accept & (lam_new > 1e16 * scale)
        new = replace(
            st,
            x=where_rows(accept, xt, st.x),
            J=torch.where(accept, Jt, st.J),
            g=where_rows(accept, gt, st.g),
            H=where_rows(accept, Ht, st.H),
            extra={"lam": lam_new, "nu": nu_new, "unit": unit},
        )
        nonfin = active & ~fin
        return new, accept, stall, nonfin, damped
