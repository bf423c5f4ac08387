"""What every solver shares: the iterate state, the per-sample loop, and a projected line search.

Every solver is monotone (an iterate is accepted only if the objective does not decrease),
so the last iterate is also the best one: the action that is executed is the action that
is differentiated (the official release executed the best and differentiated the last).
Decisions (accept/reject, step lengths, damping) are per sample: a sample's result never
depends on the other samples of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from ..box import Box
from ..evaluate import Problem
from ..info import DAMPED, NO_ACTION_GRADIENT, NONFINITE_INIT, NONFINITE_STEP, NOT_CONVERGED

#: initial objective scales (max(|J|, projected-gradient inf-norm) at the initial actions) within which
#: J is taken to be in natural units (unit 1, the thresholds as they always were); outside, J's unit is
#: that initial scale. Measured: the solves of the golden RL and IL runs (tests/golden) start at scales
#: 3e-4 to 2 (or exactly 0: zero-initialised heads), trained critics' returns stay far below 1e5, and the
#: degenerate objectives of issue 28 are off by 1e6 or more.
SCALE_BAND = (1e-5, 1e5)


def objective_scale(J0: Tensor, pgn0: Tensor) -> Tensor:
    """(B,) the unit in which sample b's objective is measured: 1, or its initial scale when that is
    outside SCALE_BAND.

    Why: every threshold of the solvers (convergence tol * max(1, |J|), the rounding noise of J, the
    curvature-pair tests, the LM damping floor) was absolute in J's units, so c * J did not solve like J:
    a J scaled by 1e-12 "converged" at its initial point, one scaled by 1e10 rejected every L-BFGS pair.
    Measuring J in units of its initial scale makes the solve of c * J that of J for any c outside the
    band, while a problem whose scale is within it (every well-scaled one) keeps the unit 1 exactly: its
    iterations are bit-for-bit those of the absolute rule. A scale of 0 (flat and zero) keeps unit 1.
    """
    lo, hi = SCALE_BAND
    s0 = torch.maximum(J0.detach().abs(), pgn0.detach())
    out = ((s0 < lo) & (s0 > 0)) | (s0 > hi)
    return torch.where(out & torch.isfinite(s0), s0, torch.ones_like(s0))


@dataclass
class State:
    x: Tensor  # (B, n) current iterate (best so far)
    J: Tensor  # (B,)
    g: Tensor  # (B, n) ascent gradient at x
    H: Tensor | None = None  # (B, n, n) Hessian at x, second-order solvers only
    extra: dict = field(default_factory=dict)  # solver memory (L-BFGS pairs, damping, ...)


def where_rows(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Per-sample select: rows of a where mask (B,), else rows of b."""
    return torch.where(mask.view(-1, *([1] * (a.dim() - 1))), a, b)


def all_finite(*ts: Tensor) -> Tensor:
    ok = None
    for t in ts:
        f = torch.isfinite(t)
        if t.dim() > 1:
            f = (f if t.dim() == 2 else f.reshape(t.shape[0], -1)).all(-1)
        ok = f if ok is None else ok & f
    return ok


class Solver:
    """Base class: subclasses implement `step`, returning the new state and event masks."""

    name = "base"
    needs_hessian = False

    def __init__(self, max_backtracks: int = 12, armijo: float = 1e-4, max_step: float | None = None):
        self.max_backtracks = int(max_backtracks)
        self.armijo = float(armijo)
        self.max_step = max_step  # cap on the inf-norm of a step; default: the box width

    # --- evaluation -----------------------------------------------------------------------
    def evaluate(self, prob: Problem, x: Tensor, create_graph: bool):
        if self.needs_hessian:
            return prob.value_grad_hess(x, create_graph=create_graph)
        J, g = prob.value_grad(x, create_graph=create_graph)
        return J, g, None

    def init_state(self, prob: Problem, box: Box, x0: Tensor, create_graph: bool) -> tuple[State, Tensor]:
        J, g, H = self.evaluate(prob, x0, create_graph)
        parts = (J, g) if H is None else (J, g, H)
        ok = all_finite(*(t.detach() for t in parts))
        st = State(x=x0, J=J, g=g, H=H)
        st = self.sanitize(st, ok, x0)
        _, pgn, _ = converged_mask(box, st, 0.0)
        prob.scale = objective_scale(st.J, pgn).to(x0.dtype)  # J may come in another dtype than x
        st.extra = self.init_memory(st, box, prob.scale)
        return st, ok

    def sanitize(self, st: State, ok: Tensor, x0: Tensor) -> State:
        """Keep NaN/inf of failed samples out of the linear algebra (a NaN matrix can make a
        batched eigendecomposition raise for the whole batch)."""
        if bool(ok.all()):
            return st
        x = where_rows(ok, st.x, x0)
        J = torch.where(ok, st.J, torch.zeros_like(st.J))
        g = where_rows(ok, st.g, torch.zeros_like(st.g))
        H = st.H
        if H is not None:
            eye = torch.eye(H.shape[-1], dtype=H.dtype, device=H.device).expand_as(H)
            H = where_rows(ok, H, -eye)
        return replace(st, x=x, J=J, g=g, H=H)

    def init_memory(self, st: State, box: Box, unit: Tensor) -> dict:
        """Solver memory at the initial state; unit: (B,) J's unit (objective_scale)."""
        return {}

    def step(self, prob: Problem, box: Box, st: State, active: Tensor, create_graph: bool,
             force: Tensor | None = None, fixed: Tensor | None = None):
        """One iteration for the `active` samples. Returns (state, moved, stalled, nonfinite, damped);
        damped may be None (never damped). fixed: box.fixed_mask at st, when the caller has it.

        force: samples whose first finite trial is accepted without the ascent test (the
        differentiated iterations of backward="truncated" at an already converged solution,
        where a monotonicity test would reject the zero-length step and cut the graph)."""
        raise NotImplementedError

    # --- helpers --------------------------------------------------------------------------
    def cap_step(self, d: Tensor, box: Box) -> Tensor:
        cap = box.width.amax(-1) if self.max_step is None else torch.full_like(d[:, 0], self.max_step)
        cap = cap.clamp(min=1e-12)
        norm = d.detach().abs().amax(-1)
        scale = torch.where(norm > cap, cap / norm.clamp(min=1e-30), torch.ones_like(norm))
        return d * scale.unsqueeze(-1)

    def line_search(self, prob: Problem, box: Box, st: State, d: Tensor, alpha0: Tensor, active: Tensor,
                    create_graph: bool, force: Tensor | None = None):
        """Projected backtracking (Armijo along the projection arc), per sample.

        Each trial evaluates value and gradient (and Hessian for Newton) so that an accepted
        trial needs no second evaluation. Returns (new state, accepted, stalled, saw_nonfinite, alpha).
        """
        alpha = alpha0.detach().clone()
        pending = active.clone()
        x, J, g, H = st.x, st.J, st.g, st.H
        saw_nonfinite = torch.zeros_like(active)
        c1 = self.armijo
        for _ in range(self.max_backtracks):
            xt = box.project(st.x + alpha.unsqueeze(-1) * d)
            xt = where_rows(pending, xt, x)
            Jt, gt, Ht = self.evaluate(prob, xt, create_graph)
            fin = all_finite(Jt.detach(), gt.detach()) if Ht is None else all_finite(
                Jt.detach(), gt.detach(), Ht.detach())
            saw_nonfinite |= pending & ~fin
            s = (xt - st.x).detach()
            gs = (st.g.detach() * s).sum(-1)
            Jt_d = Jt.detach()
            J0 = st.J.detach()
            ok = pending & fin & (Jt_d >= J0 + c1 * gs.clamp(min=0)) & ((gs > 0) | (Jt_d > J0))
            ok = ok | (pending & fin & rounding_accept(J0, Jt_d, gs, (gt.detach() * s).sum(-1), prob.scale))
            if force is not None:
                ok = ok | (pending & fin & force)
            if bool(ok.any()):
                x = where_rows(ok, xt, x)
                J = torch.where(ok, Jt, J)
                g = where_rows(ok, gt, g)
                if H is not None:
                    H = where_rows(ok, Ht, H)
            pending = pending & ~ok
            if not bool(pending.any()):
                break
            # Next trial: the maximiser of the quadratic through J0, the slope g.s and Jt along the
            # step, kept in [0.1, 0.5] x alpha (Nocedal & Wright, sec. 3.5). Plain halving could not
            # shrink a curvature-free first step (half a box width) below ~1e-4 in 12 trials, so a
            # warm start closer than that to the maximum stalled (NOT_CONVERGED).
            curv = J0 + gs - Jt_d
            shrink = torch.where(fin & (curv > 0), gs / (2 * curv.clamp(min=1e-300)),
                                 torch.full_like(gs, 0.5))
            shrink = torch.nan_to_num(shrink, nan=0.5).clamp(0.1, 0.5)
            alpha = torch.where(pending, alpha * shrink, alpha)
        accepted = active & ~pending
        new = replace(st, x=x, J=J, g=g, H=H)
        return new, accepted, pending, saw_nonfinite, alpha


def rounding_accept(J0: Tensor, Jt: Tensor, gs: Tensor, gts: Tensor, unit: Tensor | None = None) -> Tensor:
    """Hager and Zhang's approximate Wolfe test, for a step whose change of J is within rounding.

    Near a maximum J changes by about |g|^2 / |H|, which is below the rounding error of J once
    |g| ~ sqrt(eps |J| |H|) (~3e-4 in float32, ~1e-8 in float64 for |J|, |H| ~ 1): a value test
    then rejects every step on noise and the solver stalls short of tol. Such a step is accepted
    when J did not drop by more than rounding and the slope along the step s fell,
    -0.9 g.s <= g_t.s <= 0.8 g.s (progress measured on the gradient, which is still accurate).
    J0, Jt: values before and at the trial; gs = g.s, gts = g_t.s (B,); unit: J's unit (objective_scale),
    the floor of the magnitude the noise is relative to (None: 1).
    """
    mag = torch.maximum(J0.abs(), Jt.abs())
    mag = mag.clamp(min=1.0) if unit is None else torch.maximum(mag, unit)
    noise = 64 * torch.finfo(J0.dtype).eps * mag
    return (gs > 0) & (Jt >= J0 - noise) & (gts <= 0.8 * gs) & (gts >= -0.9 * gs)


@dataclass
class Result:
    x: Tensor
    J: Tensor
    g: Tensor
    H: Tensor | None
    iterations: Tensor
    converged: Tensor
    grad_norm: Tensor
    status: Tensor
    extra: dict
    scale: Tensor | None = None  # (B,) J's unit (objective_scale), for the implicit backward's thresholds


def converged_mask(box: Box, st: State, tol: float, unit: Tensor | None = None
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """(converged, projected-gradient inf-norm, fixed mask) of every sample: converged when
    ||proj g||_inf <= tol * max(unit, |J|), unit the sample's objective_scale (None: 1)."""
    g = st.g.detach()
    fixed = box.fixed_mask(st.x.detach(), g)
    pgn = g.masked_fill(fixed, 0.0).abs().amax(-1)
    mag = st.J.detach().abs()
    mag = mag.clamp(min=1.0) if unit is None else torch.maximum(mag, unit)
    return pgn <= tol * mag, pgn, fixed


def run_solver(solver: Solver, prob: Problem, box: Box, x0: Tensor, *, max_iters: int, tol: float,
               graph_iters: int = 0, unroll: bool = False, record_last: bool = False,
               ftol: float = 0.0) -> Result:
    """Iterate until every sample has converged, stalled or failed, or max_iters.

    unroll: every iteration builds a graph (backward="unroll").
    graph_iters: after the graph-free solve, that many more iterations with a graph for every
    healthy sample, converged or not (backward="truncated").
    record_last: the evaluations of iteration max_iters keep their graph in prob.recorded (for the
    implicit backward, which needs the graph of the gradient at the solution).
    ftol: a sample also stops (not converged) once an accepted step raised J by at most
    ftol * max(1, |J|): the objective no longer improves meaningfully. 0 disables it.
    """
    B = x0.shape[0]
    dev = x0.device
    status = torch.zeros(B, dtype=torch.long, device=dev)
    iters = torch.zeros(B, dtype=torch.long, device=dev)
    # A failed sample is left at its projected init (the point that was evaluated): the returned
    # actions are within the bounds even for an init outside the box.
    x_start = box.project(x0 if unroll else x0.detach())
    st, ok = solver.init_state(prob, box, x_start, create_graph=unroll)
    status |= torch.where(ok, 0, NONFINITE_INIT)
    ok_init = ok
    unit = prob.scale
    nograd = prob.no_action_grad
    if nograd:  # J does not depend on the actions: nothing to solve; not "converged" at the init
        status |= NO_ACTION_GRADIENT
        ok = torch.zeros_like(ok)
    failed = ~ok
    live = ok.clone()  # neither failed nor stalled
    # Flags as tensors: a Python scalar in torch.where costs a tensor construction per call.
    flag_damped = torch.tensor(DAMPED, device=dev)
    flag_nonfinite = torch.tensor(NONFINITE_STEP, device=dev)
    zero = torch.zeros((), dtype=torch.long, device=dev)

    def loop(st, n_iters, create_graph, force_active):
        nonlocal live, status
        force = None
        for i in range(n_iters):
            conv, _, fixed = converged_mask(box, st, tol, unit)
            active = ok if force_active else live & ~conv
            if not bool(active.any()):
                break
            if force_active and force is None:
                force = conv
            prob.record = record_last and not force_active and i == n_iters - 1
            J_before = st.J.detach()
            st, moved, stall, nonfin, damped = solver.step(prob, box, st, active, create_graph, force,
                                                           fixed=fixed)
            if ftol > 0 and not force_active:
                small = st.J.detach() - J_before <= ftol * torch.maximum(J_before.abs(), unit)
                stall = stall | (moved & small)
            iters.add_(active)
            if damped is not None:
                status |= torch.where(damped & active, flag_damped, zero)
            status |= torch.where(nonfin, flag_nonfinite, zero)  # solvers flag active samples only
            if not force_active:
                live = live & ~(stall & active)
        return st

    st = loop(st, max_iters, unroll, False)
    prob.record = False
    if prob.no_action_grad and not nograd:  # lost its dependence on the actions mid-solve
        status |= NO_ACTION_GRADIENT
    if graph_iters > 0 and not unroll:
        # Re-evaluate at the solution with a graph so the first differentiated step depends on theta.
        J, g, H = solver.evaluate(prob, st.x.detach(), True)
        st = solver.sanitize(replace(st, J=J, g=g, H=H), ~failed, x_start.detach())
        st = loop(st, graph_iters, True, True)
    conv, pgn, _ = converged_mask(box, st, tol, unit)
    conv = conv & ~failed
    status |= torch.where(~conv & ~failed, NOT_CONVERGED, 0)
    # A J that does not depend on the actions was evaluated fine: report its value, not NaN.
    lost = failed & ~ok_init if nograd else failed
    J = torch.where(lost, torch.full_like(st.J, float("nan")), st.J.detach())
    return Result(x=st.x, J=J, g=st.g, H=st.H, iterations=iters, converged=conv,
                  grad_norm=torch.where(lost, torch.full_like(pgn, float("nan")), pgn), status=status,
                  extra=st.extra, scale=unit)
