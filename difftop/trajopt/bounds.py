"""How the action box enters the problem: ``TrajOpt(bounds=...)``.

Why options: the default (``project``) solves max J over the box by projection and an active set, and
differentiates implicitly on the free variables. A variable held at a bound is a constant of the problem,
so its derivative is exactly 0; when every component of the executed action a*_0 is at a bound, the
policy-gradient loss -Q_s(s, a*_0) has no gradient at all (issue 31 measured 31% of reacher and 42% of
cartpole states so). The other options change the problem so that its solution is interior and moves
with theta:

- ``tanh`` / ``sigmoid``: a smooth reparameterisation of the box. The solver works on unconstrained
  u, the actions are ``a = c + r tanh(u)`` (``low + w sigmoid(u)``), and the objective gets a small
  ``-weight/2 ||u||^2`` so that a maximiser exists even when J pushes an action out of the box (without
  it u would run off to infinity, where float32 tanh saturates and the derivative is exactly 0 again).
  u lives in a wide box (|u| <= U, tanh'(U) ~ 5e-7) only so that the solvers' box-relative steps stay
  finite; the regulariser's pull (``weight * U``) keeps u off that box.
- ``barrier``: the log-barrier ``weight * sum log((a - low) / w) + log((high - a) / w)`` added to J,
  solved in the box shrunk by ``1e-6 w``. Its maximiser is interior (about ``weight / |dJ/da|`` from a
  bound that J pushes against), so the implicit derivative is that of an interior optimum.

All three move the solution by about ``weight`` (in the box's units: 1e-3 of the width by default) from
the projected one when J pushes against a bound, and not at all when J's optimum is inside the box
(beyond the regulariser's/barrier's own small pull). The release's alternative, a short Levenberg-
Marquardt refinement with a clamp inside the cost and a backward through its last iterations, is the
solver ``lm_refine`` (:mod:`difftop.trajopt.refine`), which any of these bounds options may be combined
with but need not be.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .box import Box

__all__ = ["BOUNDS", "BoundsWrap", "wrap_bounds"]

BOUNDS = ("project", "tanh", "sigmoid", "barrier")
#: the u-box half-width of the squashing maps (tanh'(8) ~ 4.5e-7, still non-zero in float32)
U_MAX = {"tanh": 8.0, "sigmoid": 16.0}
#: the barrier's box is shrunk by this fraction of the width on each side (log stays finite there)
BARRIER_MARGIN = 1e-6
#: initial actions are moved at least this fraction of the width inside the box for the barrier
BARRIER_INIT_MARGIN = 1e-3

Objective = Callable[[Tensor], Tensor]


class BoundsWrap:
    """One solve's transformed problem: ``objective``, ``init``, ``low``, ``high`` in the solver's
    variables, and ``finish(x)`` mapping the solver's result back to actions (differentiably)."""

    def __init__(self, objective: Objective, init: Tensor, low, high, finish: Callable[[Tensor], Tensor]):
        self.objective, self.init, self.low, self.high, self.finish = objective, init, low, high, finish


def _box(low, high, init: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """(low, high) broadcast to init's (B, H, m), checked finite (a squashing map or a barrier needs both)."""
    box = Box(low, high, init.shape, init.dtype, init.device)  # the layer's own shape and NaN checks
    lo, hi = box.low.reshape(init.shape), box.high.reshape(init.shape)
    if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ValueError(f"trajopt: bounds={kind!r} needs finite low and high bounds")
    return lo, hi


def wrap_bounds(kind: str, objective: Objective, init: Tensor, low, high, weight: float) -> BoundsWrap:
    """The problem of ``bounds=kind`` (not ``project``, which needs no wrapping); see the module docstring.

    weight: the tanh/sigmoid regulariser on u, or the barrier's coefficient (>= 0)."""
    if kind == "barrier":
        return _barrier(objective, init, low, high, weight)
    if kind in U_MAX:
        return _squash(kind, objective, init, low, high, weight)
    raise ValueError(f"trajopt: unknown bounds {kind!r}; choose one of {list(BOUNDS)}")


def _squash(kind: str, objective: Objective, init: Tensor, low, high, weight: float) -> BoundsWrap:
    lo, hi = _box(low, high, init, kind)
    U = U_MAX[kind]
    centre, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
    flat = half <= 0  # a zero-width dimension: the action is the bound, u is irrelevant (kept at 0)
    y = torch.where(flat, torch.zeros_like(init), (init.detach() - centre) / torch.where(flat, 1.0, half))
    y = y.clamp(-1.0, 1.0)
    lim = math.tanh(U if kind == "tanh" else U / 2)
    u0 = torch.atanh(y.clamp(-lim, lim))
    if kind == "sigmoid":
        u0 = 2.0 * u0  # sigmoid(u) = (1 + tanh(u / 2)) / 2

    def to_action_of(centre: Tensor, half: Tensor) -> Callable[[Tensor], Tensor]:
        def to_action(u: Tensor) -> Tensor:
            s = torch.tanh(u) if kind == "tanh" else 2.0 * torch.sigmoid(u) - 1.0
            return centre + half * s

        return to_action

    to_action = to_action_of(centre, half)
    objective_u = _rowwise(lambda f, c, h: _squashed(f, to_action_of(c, h), weight, kind, h), objective,
                           centre, half)
    return BoundsWrap(objective_u, u0, -U, U, to_action)


def _barrier(objective: Objective, init: Tensor, low, high, weight: float) -> BoundsWrap:
    lo, hi = _box(low, high, init, "barrier")
    width = hi - lo
    flat = width <= 0
    safe_w = torch.where(flat, torch.ones_like(width), width)
    inner_lo, inner_hi = lo + BARRIER_MARGIN * width, hi - BARRIER_MARGIN * width
    m = BARRIER_INIT_MARGIN * width
    x0 = torch.minimum(torch.maximum(init.detach(), lo + m), hi - m)

    objective_b = _rowwise(lambda f, lo, hi, w, fl: _barriered(f, lo, hi, w, fl, weight), objective, lo, hi,
                           safe_w, flat)
    return BoundsWrap(objective_b, x0, inner_lo, inner_hi, lambda a: a)


def _squashed(objective: Objective, to_action: Callable[[Tensor], Tensor], weight: float, kind: str,
              half: Tensor) -> Objective:
    def objective_u(u: Tensor) -> Tensor:
        J = objective(to_action(u))
        if weight > 0:
            J = J - 0.5 * weight * u.pow(2).flatten(1).sum(-1)
        return J

    inner = getattr(objective, "value_grad", None)
    if callable(inner):
        def value_grad(u: Tensor) -> tuple[Tensor, Tensor]:
            """The objective's own graph-free (J, dJ/da) chained through a = centre + half * s(u), in
            autograd's order (difftop/nn/vjp.py; the solver's evaluations take it)."""
            with torch.no_grad():
                t = torch.tanh(u) if kind == "tanh" else torch.sigmoid(u)
                a = to_action(u)
                J, g = inner(a)
                g = g * half
                g = torch.ops.aten.tanh_backward(g, t) if kind == "tanh" \
                    else torch.ops.aten.sigmoid_backward(g * 2.0, t)
                if weight > 0:
                    J = J - 0.5 * weight * u.pow(2).flatten(1).sum(-1)
                    g = g + (-(0.5 * weight)) * (2 * u.pow(1))
                return J, g

        objective_u.value_grad = value_grad
    return objective_u


def _barriered(objective: Objective, lo: Tensor, hi: Tensor, safe_w: Tensor, flat: Tensor, weight: float
               ) -> Objective:
    def objective_b(a: Tensor) -> Tensor:
        J = objective(a)
        if weight > 0:
            # zero-width dimensions contribute nothing (log 1); elsewhere a is strictly inside
            up = torch.where(flat, safe_w, a - lo) / safe_w
            dn = torch.where(flat, safe_w, hi - a) / safe_w
            J = J + weight * (torch.log(up) + torch.log(dn)).flatten(1).sum(-1)
        return J

    return objective_b


def _rowwise(make: Callable[..., Objective], objective: Objective, *per_sample: Tensor) -> Objective:
    """make(objective, *per_sample), with a rows(idx) method when the objective has one: the wrapped
    problem of the samples idx (the per-sample (B, ...) tensors' rows), so that the solvers' compaction
    of stopped samples (solver option compact) also works through the bounds' transformation."""
    wrapped = make(objective, *per_sample)
    rows = getattr(objective, "rows", None)
    if callable(rows):
        wrapped.rows = lambda idx: _rowwise(make, rows(idx), *(t.index_select(0, idx) for t in per_sample))
    return wrapped
