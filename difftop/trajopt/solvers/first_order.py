"""Cheap solvers that need only gradients: projected gradient ascent and projected L-BFGS.

These are the fast path: one value+gradient evaluation per iteration when the first trial
step is accepted, so at batch 1 (where each evaluation costs per-op overhead) and at batch
256 (where it costs FLOPs) they do far less work per iteration than a dense Hessian.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from ..box import Box
from ..evaluate import Problem
from .base import Solver, State, where_rows


def _initial_alpha(gF: Tensor, box: Box) -> Tensor:
    """First step without curvature information: move at most half a box width (or 1)."""
    reach = (0.5 * box.width.amax(-1)).clamp(max=1.0)
    return reach / gF.detach().abs().amax(-1).clamp(min=1e-12)


def _forced(force: Tensor | None, active: Tensor) -> Tensor:
    return active & force if force is not None else torch.zeros_like(active)


class ProjectedGradient(Solver):
    """Projected gradient ascent with Barzilai-Borwein step lengths and backtracking."""

    name = "pgd"

    def init_memory(self, st: State) -> dict:
        return {"alpha": torch.full_like(st.J.detach(), float("nan"))}

    def step(self, prob: Problem, box: Box, st: State, active: Tensor, create_graph: bool,
             force: Tensor | None = None):
        fixed = box.fixed_mask(st.x.detach(), st.g.detach())
        d = torch.where(fixed, torch.zeros_like(st.g), st.g)
        prev = st.extra["alpha"]
        forced = _forced(force, active)
        # A forced (differentiated, truncated-mode) step at a solution keeps the step length of the
        # solve, or takes a unit step: 1/|g| scaling there would blow its derivative up like 1/|g|.
        first = torch.where(forced, torch.ones_like(prev), _initial_alpha(d, box))
        alpha0 = torch.where(torch.isnan(prev), first, prev)
        new, acc, stall, nonfin, _ = self.line_search(prob, box, st, d, alpha0, active, create_graph, force)
        # Barzilai-Borwein (BB1) for the next step, on the curvature of -J along the step.
        s = (new.x - st.x).detach()
        y = -(new.g - st.g).detach()
        sy = (s * y).sum(-1)
        ss = (s * s).sum(-1)
        bb = ss / sy.clamp(min=1e-30)
        nxt = torch.where(sy > 1e-12 * ss.clamp(min=1e-30), bb, alpha0 * 2.0).clamp(1e-10, 1e10)
        alpha = torch.where(acc & ~forced, nxt, prev)
        new = replace(new, extra={"alpha": alpha})
        return new, acc, stall, nonfin, torch.zeros_like(acc)


class LBFGS(Solver):
    """Projected L-BFGS: two-loop recursion on the free variables, projected backtracking.

    Its curvature pairs are kept after the solve: they precondition the conjugate-gradient
    solve of the implicit backward pass (difftop.trajopt.implicit).
    """

    name = "lbfgs"

    def __init__(self, memory: int = 8, reduced: bool = True, **kw):
        super().__init__(**kw)
        self.memory = int(memory)
        self.reduced = bool(reduced)

    def init_memory(self, st: State) -> dict:
        B, n = st.x.shape
        M = self.memory
        z = st.x.detach().new_zeros
        return {
            "S": z(B, M, n), "Y": z(B, M, n), "rho": z(B, M),
            "valid": torch.zeros(B, M, dtype=torch.bool, device=st.x.device),
            "gamma": z(B) + 1.0, "ptr": 0, "npairs": z(B),
        }

    @staticmethod
    def apply_inverse(mem: dict, q: Tensor, free: Tensor | None = None) -> Tensor:
        """Two-loop recursion: approximately (-Hessian)^-1 q, per sample (batched).

        free: (B, n) 0/1 mask; the pairs are then restricted to the free variables (reduced
        space), so curvature seen while a variable moved does not leak into a step where it
        is held at a bound.
        """
        S, Y, rho, valid = mem["S"], mem["Y"], mem["rho"], mem["valid"]
        if free is not None:
            S = S * free.unsqueeze(1)
            Y = Y * free.unsqueeze(1)
            sy = (S * Y).sum(-1)
            valid = valid & (sy > 1e-10 * (Y * Y).sum(-1).clamp(min=1e-30))
            rho = 1.0 / sy.clamp(min=1e-30)
        M = S.shape[1]
        ptr = mem["ptr"]
        order = [(ptr - 1 - i) % M for i in range(M)]  # newest first
        alphas = []
        q = q.clone()
        for j in order:
            a = torch.where(valid[:, j], rho[:, j] * (S[:, j] * q).sum(-1), torch.zeros_like(rho[:, j]))
            q = q - a.unsqueeze(-1) * Y[:, j]
            alphas.append(a)
        r = mem["gamma"].unsqueeze(-1) * q
        for j, a in zip(reversed(order), reversed(alphas)):
            b = torch.where(valid[:, j], rho[:, j] * (Y[:, j] * r).sum(-1), torch.zeros_like(rho[:, j]))
            r = r + (a - b).unsqueeze(-1) * S[:, j]
        return r

    def step(self, prob: Problem, box: Box, st: State, active: Tensor, create_graph: bool,
             force: Tensor | None = None):
        mem = st.extra
        fixed = box.fixed_mask(st.x.detach(), st.g.detach())
        gF = torch.where(fixed, torch.zeros_like(st.g), st.g)
        d = self.apply_inverse(mem, gF, (~fixed).to(gF.dtype) if self.reduced else None)
        d = torch.where(fixed, torch.zeros_like(d), d)
        has_pairs = mem["valid"].any(-1)
        ascent = (gF.detach() * d.detach()).sum(-1) > 0
        # Forced (differentiated, truncated-mode) steps at a solution use the memory as it is: its
        # ascent test is on rounding noise there, and 1/|g| step scaling (below) would blow the
        # derivative of the step up like 1/|g|; without pairs they take the step gamma * g.
        forced = _forced(force, active)
        use_grad = ~(has_pairs & (ascent | forced))
        d = where_rows(use_grad, gF, d)
        first = torch.where(forced, mem["gamma"], _initial_alpha(gF, box))
        alpha0 = torch.where(use_grad, first, torch.ones_like(st.J.detach()))
        d = self.cap_step(d, box)
        new, acc, stall, nonfin, _ = self.line_search(prob, box, st, d, alpha0, active, create_graph, force)
        # Curvature pair of f = -J; keep it only where it is positive (f locally convex).
        s = new.x - st.x
        y = -(new.g - st.g)
        sy_g = (s * y).sum(-1)  # keeps the graph when unrolling (rho and gamma depend on it)
        yy_g = (y * y).sum(-1)
        sy, yy = sy_g.detach(), yy_g.detach()
        # No pair from a forced step: s and y are rounding noise there and rho = 1/s.y would carry
        # a derivative ~ 1/(s.y)^2 into the next differentiated step (gradients off by 1e6 and more).
        good = acc & ~forced & (sy > 1e-10 * yy.clamp(min=1e-30)) & (yy > 0)
        M = self.memory
        p = mem["ptr"]
        S, Y, rho, valid = mem["S"], mem["Y"], mem["rho"], mem["valid"]
        if create_graph:  # keep the graph through the memory when unrolling
            S, Y = S.clone(), Y.clone()
        else:
            s, y, sy_g, yy_g = s.detach(), y.detach(), sy, yy
        S[:, p] = where_rows(good, s, S[:, p])
        Y[:, p] = where_rows(good, y, Y[:, p])
        rho = rho.clone()
        rho[:, p] = torch.where(good, 1.0 / sy_g.clamp(min=1e-30), rho[:, p])
        valid = valid.clone()
        # A sample that did not produce a pair this round keeps its old pair in this slot.
        valid[:, p] = torch.where(good, True, valid[:, p])
        # Where the direction was not an ascent direction, the memory is stale: drop it.
        valid = valid & ~(has_pairs & ~ascent & active & ~forced).unsqueeze(-1)
        gamma = torch.where(good, sy_g / yy_g.clamp(min=1e-30), mem["gamma"])
        new_mem = {"S": S, "Y": Y, "rho": rho, "valid": valid, "gamma": gamma,
                   "ptr": (p + 1) % M, "npairs": mem["npairs"] + good.to(mem["npairs"].dtype)}
        new = replace(new, extra=new_mem)
        return new, acc, stall, nonfin, torch.zeros_like(acc)
