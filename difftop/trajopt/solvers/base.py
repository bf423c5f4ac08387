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


def plain(t: Tensor) -> Tensor:
    """t without its graph: t.detach(), skipped (one dispatcher call less) when t has none, as in the
    graph-free iterations, where the bookkeeping would otherwise detach ~15 tensors per iteration."""
    return t.detach() if t.requires_grad else t


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

    def __init__(self, max_backtracks: int = 12, armijo: float = 1e-4, max_step: float | None = None,
                 ftol_window: int = 3, ftol_grad: float = 0.8, sync_every: int = 1, fast_single: bool = True,
                 compact: int = 8):
        if int(ftol_window) < 1 or int(sync_every) < 1:
            raise ValueError("ftol_window and sync_every must be >= 1")
        if int(compact) < 0:
            raise ValueError("compact must be >= 0")
        if not ftol_grad >= 0:
            raise ValueError("ftol_grad must be >= 0")
        self.max_backtracks = int(max_backtracks)
        self.armijo = float(armijo)
        self.max_step = max_step  # cap on the inf-norm of a step; default: the box width
        # the layer's ftol rule (run_solver): iterations over which the objective's improvement is
        # measured, and the factor by which the projected gradient must have fallen over them for a
        # sample with a small improvement to go on (a converging solve) rather than stop (a stalled one)
        self.ftol_window = int(ftol_window)
        self.ftol_grad = float(ftol_grad)
        # 1: the reference path, which skips work no sample needs (a device sync per test). k > 1: the
        # fixed-shape path for accelerators: every iteration runs the same ops on the whole batch, with
        # per-sample masks instead of data-dependent branches (no host sync inside an iteration, so a
        # block of k iterations can be captured as one CUDA graph or compiled), and run_solver looks for
        # samples still running only every k iterations. Same iterates as the reference path.
        self.sync_every = int(sync_every)
        # Batch of one: the graph-free iterations take the solver's step_single (when it has one) in
        # run_solver's single-sample loop: the same value ops on the same (1, n) tensors, with per-sample
        # masks and selects replaced by Python branches (one host read each). Same iterates bit for bit,
        # ~40% fewer ops per iteration (results/trajopt/README.md, round 3). False: the batched path.
        self.fast_single = bool(fast_single)
        # Compaction: once at least `compact` samples of a batch have stopped (converged, stalled or failed),
        # the graph-free iterations evaluate and update only the running ones (gathered into a smaller batch,
        # scattered back), when the objective can be restricted to rows (an `objective.rows(idx)` method, as
        # latent_objective has). Why: a batch runs until its slowest sample stops; on the held-out family at
        # batch 256 the median sample stops at 13-20 iterations and the last at 36-37, so without compaction
        # half the evaluations are of samples that no longer move. 0: never (every iteration is full-batch).
        self.compact = int(compact)

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

    @property
    def warmup_iters(self) -> int:
        """First iterations the ftol rule does not measure from (lbfgs: its sign steps, which make
        progress at a fixed pace that says nothing about whether the solve has stalled)."""
        return 0

    @property
    def branchless(self) -> bool:
        """True on the fixed-shape path (sync_every > 1): compute for every sample, select by mask."""
        return self.sync_every > 1

    def sanitize(self, st: State, ok: Tensor, x0: Tensor) -> State:
        """Keep NaN/inf of failed samples out of the linear algebra (a NaN matrix can make a
        batched eigendecomposition raise for the whole batch)."""
        if not self.branchless and bool(ok.all()):
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

    #: (prob, box, st, fixed) -> (state, accepted, stalled, nonfinite) as Python bools: step() for a batch of
    #: one running sample, graph-free (run_solver's single-sample loop); None: the solver has none.
    step_single = None

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
    g = plain(st.g)
    fixed = box.fixed_mask(plain(st.x), g)
    pgn = g.masked_fill(fixed, 0.0).abs().amax(-1)
    mag = plain(st.J).abs()
    mag = mag.clamp(min=1.0) if unit is None else torch.maximum(mag, unit)
    return pgn <= tol * mag, pgn, fixed


def take_rows(value, idx: Tensor, B: int):
    """The rows idx of a per-sample value: tensors whose first dimension is the batch (solver memory holds
    only per-sample tensors, batch first), recursively through dicts; anything else (an iteration count)
    as it is."""
    if isinstance(value, Tensor):
        return value.index_select(0, idx) if value.dim() > 0 and value.shape[0] == B else value
    if isinstance(value, dict):
        return {k: take_rows(v, idx, B) for k, v in value.items()}
    return value


def put_rows(full, part, idx: Tensor, B: int):
    """full with its rows idx replaced by part (take_rows' inverse); non-batch values are part's."""
    if isinstance(full, Tensor):
        if full.dim() > 0 and full.shape[0] == B:
            return full.index_copy(0, idx, part.to(full.dtype))
        return part
    if isinstance(full, dict):
        return {k: put_rows(full[k], part[k], idx, B) for k in full}
    return part


def result_rows(res: Result, idx: Tensor) -> Result:
    """The result of the samples idx alone (the implicit backward of the samples that did not fail)."""
    B = res.x.shape[0]

    def pick(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.index_select(0, idx)

    return Result(x=pick(res.x), J=pick(res.J), g=pick(res.g), H=pick(res.H), iterations=pick(res.iterations),
                  converged=pick(res.converged), grad_norm=pick(res.grad_norm), status=pick(res.status),
                  extra=take_rows(res.extra, idx, B), scale=pick(res.scale))


def compact_step(solver: Solver, prob: Problem, box: Box, st: State, active: Tensor, fixed: Tensor):
    """solver.step on the active samples only, gathered into a batch of their own (graph-free iterations,
    Solver.compact). Returns step()'s (state, moved, stalled, nonfinite, damped) at the full batch size;
    the stopped samples are left as they are and report no event, as in the batched path."""
    B = active.shape[0]
    idx = active.nonzero().squeeze(1)
    sub_prob = prob.select(idx)
    sub = State(x=st.x.index_select(0, idx), J=st.J.index_select(0, idx), g=st.g.index_select(0, idx),
                H=None if st.H is None else st.H.index_select(0, idx), extra=take_rows(st.extra, idx, B))
    every = torch.ones(idx.shape[0], dtype=torch.bool, device=idx.device)
    new, moved, stall, nonfin, damped = solver.step(sub_prob, box.select(idx), sub, every, False, None,
                                                    fixed=fixed.index_select(0, idx))
    prob.absorb(sub_prob)
    none = torch.zeros_like(active)
    out = State(x=st.x.index_copy(0, idx, new.x), J=st.J.index_copy(0, idx, new.J.to(st.J.dtype)),
                g=st.g.index_copy(0, idx, new.g), H=None if st.H is None else st.H.index_copy(0, idx, new.H),
                extra=put_rows(st.extra, new.extra, idx, B))
    events = [none.index_copy(0, idx, m) for m in (moved, stall, nonfin)]
    return out, *events, None if damped is None else none.index_copy(0, idx, damped)


def run_solver(solver: Solver, prob: Problem, box: Box, x0: Tensor, *, max_iters: int, tol: float,
               graph_iters: int = 0, unroll: bool = False, record_last: bool = False,
               ftol: float = 0.0, trace: list | None = None) -> Result:
    """Iterate until every sample has converged, stalled or failed, or max_iters.

    unroll: every iteration builds a graph (backward="unroll").
    graph_iters: after the graph-free solve, that many more iterations with a graph for every
    healthy sample, converged or not (backward="truncated").
    record_last: every evaluation of the graph-free solve keeps its graph in prob.recorded, each
    replacing the one before (for the implicit backward, which needs the graph of the gradient at the
    solution). Why every one and not only iteration max_iters': a solve stopped early by tol or ftol
    ends on an accepted step (and inactive samples are evaluated where they stand), so the last
    evaluation is usually at the solution and the backward need not evaluate the objective again
    (one evaluation less of the fixed cost); keeping the graph costs no more than discarding it.
    ftol: a sample also stops (not converged) after an accepted step at iteration k >= w +
    solver.warmup_iters that left J
    at most ftol * max(unit, |J_{k-w}|) above its value w = solver.ftol_window iterations earlier while
    its projected gradient's inf-norm stayed above solver.ftol_grad times its value then: the objective
    has stopped improving and the solve is not converging (a solve that is, its gradient falling
    fast, goes on to tol; ftol_grad=0 drops that test). Rejected trials count as iterations, so a
    window > 1 lets a step shortened after a rejection make up for it. 0 disables the rule.
    trace: a list that receives each sample's objective (B,) at the start and after every iteration
    of the graph-free solve, then, as its last item, the list of the projected gradients' inf-norms at
    the same points (the benchmark's time-to-objective curves and stopping-rule replay; None, the
    default, costs nothing).
    """
    B = x0.shape[0]
    dev = x0.device
    status = torch.zeros(B, dtype=torch.long, device=dev)
    iters = torch.zeros(B, dtype=torch.long, device=dev)
    # A failed sample is left at its projected init (the point that was evaluated): the returned
    # actions are within the bounds even for an init outside the box.
    x_start = box.project(x0 if unroll else x0.detach())
    prob.record = record_last and not unroll
    st, ok = solver.init_state(prob, box, x_start, create_graph=unroll)
    status |= torch.where(ok, 0, NONFINITE_INIT)
    ok_init = ok
    unit = prob.scale
    trace_pgn: list[Tensor] = []
    if trace is not None:
        trace.append(st.J.detach().clone())
        trace_pgn.append(converged_mask(box, st, 0.0, unit)[1])
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

    window, grad_ratio = solver.ftol_window, solver.ftol_grad
    history: list[tuple[Tensor, Tensor]] = []  # (J, proj. grad norm) at the last window+1 iterates
    moved = torch.zeros_like(ok)  # accepted at the last iteration

    single = (B == 1 and solver.fast_single and solver.step_single is not None and not solver.branchless)
    # compaction (Solver.compact) in the graph-free solve; not before truncated iterations, whose forced
    # steps read the memory the batched path leaves in stopped samples (a retried trial's flag)
    compact = solver.compact if (B > solver.compact > 0 and not unroll and graph_iters == 0
                                 and not solver.branchless and prob.can_select) else 0

    def loop(st, n_iters, create_graph, force_active):
        nonlocal live, status, moved
        if single and not create_graph and not force_active:
            return loop_single(st, n_iters)
        force = None
        for i in range(n_iters):
            conv, pgn, fixed = converged_mask(box, st, tol, unit)
            if ftol > 0 and not force_active:
                history.append((plain(st.J), pgn))
                if len(history) > window:  # the samples iterate in lockstep: index = iterations ago
                    J_ref, pgn_ref = history.pop(0)
                    if i - window >= solver.warmup_iters:
                        small = moved & (plain(st.J) - J_ref <= ftol * torch.maximum(J_ref.abs(), unit))
                        if grad_ratio > 0:
                            small = small & (pgn > grad_ratio * pgn_ref)
                        live = live & ~small
            active = ok if force_active else live & ~conv
            if compact and not force_active:
                n_active = int(active.sum())  # one host read serves the stop test and compaction
                if n_active == 0:
                    break
            else:
                n_active = B
                if i % solver.sync_every == 0 and not bool(active.any()):
                    break
            if force_active and force is None:
                force = conv
            prob.record = record_last and not force_active
            if B - n_active >= compact > 0:
                st, moved, stall, nonfin, damped = compact_step(solver, prob, box, st, active, fixed)
            else:
                st, moved, stall, nonfin, damped = solver.step(prob, box, st, active, create_graph, force,
                                                               fixed=fixed)
            iters.add_(active)
            if trace is not None and not force_active:
                trace.append(st.J.detach().clone())
                trace_pgn.append(converged_mask(box, st, tol, unit)[1])
            if damped is not None:
                status |= torch.where(damped & active, flag_damped, zero)
            status |= torch.where(nonfin, flag_nonfinite, zero)  # solvers flag active samples only
            if not force_active:
                live = live & ~(stall & active)
        return st

    def loop_single(st, n_iters):
        """loop() for a batch of one, graph-free: its masks are Python bools (one host read per test
        instead of a chain of mask ops). Same tests in the same order, on the same tensors."""
        nonlocal live, status, moved
        run, mv = bool(live), bool(moved)
        k = 0
        for i in range(n_iters):
            conv, pgn, fixed = converged_mask(box, st, tol, unit)
            if ftol > 0:
                history.append((plain(st.J), pgn))
                if len(history) > window:
                    J_ref, pgn_ref = history.pop(0)
                    if i - window >= solver.warmup_iters and mv and run:
                        small = plain(st.J) - J_ref <= ftol * torch.maximum(J_ref.abs(), unit)
                        if grad_ratio > 0:
                            small = small & (pgn > grad_ratio * pgn_ref)
                        run = not bool(small)
            if not run or bool(conv):
                break
            prob.record = record_last
            st, mv, stall, nonfin = solver.step_single(prob, box, st, fixed)
            k += 1
            if trace is not None:
                trace.append(st.J.detach().clone())
                trace_pgn.append(converged_mask(box, st, tol, unit)[1])
            if nonfin:
                status |= NONFINITE_STEP
            run = run and not stall
        iters.add_(k)
        live = torch.full_like(live, run)
        moved = torch.full_like(moved, mv)
        return st

    st = loop(st, max_iters, unroll, False)
    if trace is not None:
        trace.append(trace_pgn)
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
