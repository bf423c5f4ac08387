"""``solver="lm_refine"``: the official release's short Levenberg-Marquardt refinement, in plain torch.

The release (github.com/wkwan7/DiffTORI, ``mbrl/src/algorithm/tdmpc.py``; per-task settings in
``mbrl/cfgs/tasks/*.yaml``) does not solve the trajectory optimization; it refines pi's actions by a
fixed number of Levenberg-Marquardt iterations of Theseus on the one residual ``r = 1000 - G(clamp(a))``
and back-propagates through the last 5 of them. For one residual the damped LM step is, by
Sherman-Morrison,

    a <- a + step_size * r * grad G / (damping + |grad G|^2),

so this module takes that step directly (no Theseus, no Cholesky, no per-call layer construction), per
sample. Why this is worth having beside ``solver=theseus``: with step sizes of 1e-4 and a clamp inside
the cost, the iterate is never held at a bound, and the backward through the last ``backward_iters``
iterations gives every state a non-zero derivative, which the converged box-constrained solve with an
implicit backward does not (issue 31). It needs no optional install and is cheap enough for RL on a CPU.

Semantics, as the release: ``max_iters`` iterations, none skipped (no convergence test: the release's
refinement is never near convergence at these step sizes); the first ``max_iters - backward_iters`` run
without a graph, the last ``backward_iters`` with one (``create_graph``, so the step's dependence on the
model is differentiated); non-finite objective values count as 0 (the release's ``nan_to_num``) and a
non-finite gradient gives a zero step. The release executes Theseus' best iterate (lowest residual) and
differentiates the last one; here the returned tensor has the best iterate's value, projected into the
box (what is executed), and the last iterate's derivative (``best + (last - last.detach())``): the
release's gradient, evaluated at the executed action.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .box import Box
from .info import NONFINITE_INIT, NONFINITE_STEP, NOT_CONVERGED, TrajOptInfo

__all__ = ["REFINE_OPTIONS", "lm_refine"]

#: lm_refine's options (TrajOpt keywords beside max_iters / backward_iters); defaults: the release's
#: cfgs/default.yaml (per-task values in difftop/configs/variant/official.yaml)
REFINE_OPTIONS = ("step_size", "damping", "residual_offset", "clamp_in_cost")


def lm_refine(objective: Callable[[Tensor], Tensor], x0: Tensor, box: Box, *, max_iters: int,
              backward_iters: int, graph: bool, step_size: float = 1e-3, damping: float = 1e-3,
              residual_offset: float = 1000.0, clamp_in_cost: bool = True, solver_name: str = "lm_refine",
              backward: str = "truncated", fast: bool = True) -> tuple[Tensor, TrajOptInfo]:
    """Refine ``x0`` (B, H, m) by ``max_iters`` single-residual LM steps; see the module docstring.

    graph: build the autograd graph of the last ``backward_iters`` iterations (False: constants).
    fast: the iterations without a graph call the objective's own ``value_grad(actions) -> (G, dG/dA)``
      when it has one (`latent_objective` over difftop/nn/vjp.py's functions), with clamp's derivative
      applied as autograd's ``clamp_backward`` does: the same iterates, without autograd's per-op cost.
    """
    shape, B = x0.shape, x0.shape[0]
    x = x0.detach().reshape(B, -1)
    status = torch.zeros(B, dtype=torch.long, device=x.device)
    best_x, best_r, best_G = x.clone(), None, None
    # (fewer iterations than backward_iters: every one is differentiated)
    first_graph = max(0, max_iters - backward_iters) if graph else max_iters + 1

    own = getattr(objective, "value_grad", None) if fast else None

    def value(x_: Tensor, create: bool) -> tuple[Tensor, Tensor]:
        """(G, dG/dx) at x_; the gradient is part of the graph when ``create``."""
        if own is not None and not create:
            with torch.no_grad():
                a = torch.clamp(x_, box.low, box.high) if clamp_in_cost else x_
                G, g = own(a.reshape(shape))
                g = g.reshape(B, -1)
                if clamp_in_cost:  # autograd's clamp_backward: the gradient where low <= x <= high
                    g = torch.where((x_ >= box.low).logical_and_(x_ <= box.high), g, torch.zeros_like(g))
            return (G.squeeze(-1) if G.dim() == 2 and G.shape[-1] == 1 else G), g
        leaf = x_ if create else x_.detach().requires_grad_(True)
        a = torch.clamp(leaf, box.low, box.high) if clamp_in_cost else leaf  # the release's clamp
        G = objective(a.reshape(shape))
        if G.dim() == 2 and G.shape[-1] == 1:
            G = G.squeeze(-1)
        if not G.requires_grad:
            return G.detach(), torch.zeros_like(leaf)
        (g,) = torch.autograd.grad(G.sum(), leaf, create_graph=create, allow_unused=True)
        g = torch.zeros_like(leaf) if g is None else g
        return (G if create else G.detach()), (g if create else g.detach())

    def track(x_: Tensor, G: Tensor) -> None:
        """Theseus' best solution: the iterate of least squared residual so far."""
        nonlocal best_x, best_r, best_G
        G = torch.nan_to_num(G.detach(), nan=0.0, posinf=0.0, neginf=0.0)
        r = (residual_offset - G).abs()
        better = torch.ones_like(r, dtype=torch.bool) if best_r is None else r < best_r
        best_r = r if best_r is None else torch.where(better, r, best_r)
        best_G = G if best_G is None else torch.where(better, G, best_G)
        best_x = torch.where(better.unsqueeze(-1), x_.detach(), best_x)

    with torch.enable_grad():
        for k in range(max_iters):
            create = k >= first_graph
            if k == first_graph:
                x = x.detach().requires_grad_(True) if not x.requires_grad else x
            G, g = value(x, create)
            finite = torch.isfinite(G) & torch.isfinite(g).all(-1)
            if k == 0:
                status |= torch.where(finite, 0, NONFINITE_INIT)
            else:
                status |= torch.where(finite, 0, NONFINITE_STEP)
            track(x, G)
            r = residual_offset - torch.nan_to_num(G, nan=0.0, posinf=0.0, neginf=0.0)
            g = torch.where(finite.unsqueeze(-1), g, torch.zeros_like(g))
            step = step_size * r.unsqueeze(-1) * g / (damping + g.pow(2).sum(-1, keepdim=True))
            x = x + step if create else (x + step).detach()
        G_last, g_last = value(x, False)  # the last iterate is a candidate for the best too
    track(x, G_last)
    grad_norm = g_last.abs().amax(-1)
    out = box.project(best_x)
    if graph and x.requires_grad:
        out = out + (x - x.detach())  # value: the executed (best, in-box) iterate; derivative: the last's
    info = TrajOptInfo(iterations=torch.full((B,), max_iters, dtype=torch.long, device=x.device),
                       converged=torch.zeros(B, dtype=torch.bool, device=x.device),
                       objective=best_G,
                       grad_norm=grad_norm, status=status | NOT_CONVERGED, solver=solver_name,
                       backward=backward if graph else "none")
    return out.reshape(shape), info
