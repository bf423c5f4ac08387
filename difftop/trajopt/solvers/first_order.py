"""Cheap solvers that need only gradients: projected gradient ascent and projected L-BFGS.

These are the fast path: one value+gradient evaluation per iteration (lbfgs always; pgd when
its first trial step is accepted), so at batch 1 (where each evaluation costs per-op overhead)
and at batch 256 (where it costs FLOPs) they do far less work per iteration than a dense Hessian.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from ..box import Box
from ..evaluate import Problem
from .base import Solver, State, all_finite, plain, rounding_accept, where_rows


def _initial_alpha(gF: Tensor, box: Box, g_floor: Tensor) -> Tensor:
    """First step without curvature information: move at most half a box width (or 1).
    g_floor: (B,) the smallest gradient norm divided by, 1e-12 units of J (see _floors)."""
    reach = (0.5 * box.width.amax(-1)).clamp(max=1.0)
    return reach / torch.maximum(plain(gF).abs().amax(-1), g_floor)


def _floors(unit: Tensor) -> dict:
    """The solvers' absolute thresholds in J's unit (solvers.base.objective_scale), computed once per
    solve: a gradient is in units of J, a curvature s.y too, y.y in units of J^2, a step length
    alpha = s/g in 1/J. For unit 1 they are exactly the former constants (1e-12, 1e-10, 1e-30, ...)."""
    return {"unit": unit, "g_floor": 1e-12 * unit, "pair": 1e-10 / unit, "yy_floor": 1e-30 * unit * unit,
            "curv": 1e-12 * unit, "bb_lo": 1e-10 / unit, "bb_hi": 1e10 / unit}


def _forced(force: Tensor | None, active: Tensor) -> Tensor:
    return active & force if force is not None else torch.zeros_like(active)


class ProjectedGradient(Solver):
    """Projected gradient ascent with Barzilai-Borwein step lengths and backtracking."""

    name = "pgd"

    def init_memory(self, st: State, box: Box, unit: Tensor) -> dict:
        return {"alpha": torch.full_like(st.J.detach(), float("nan")), "floors": _floors(unit)}

    def step(self, prob: Problem, box: Box, st: State, active: Tensor, create_graph: bool,
             force: Tensor | None = None, fixed: Tensor | None = None):
        fixed = box.fixed_mask(st.x.detach(), st.g.detach()) if fixed is None else fixed
        d = torch.where(fixed, torch.zeros_like(st.g), st.g)
        prev = st.extra["alpha"]
        forced = _forced(force, active)
        # A forced (differentiated, truncated-mode) step at a solution keeps the step length of the
        # solve, or takes a unit step: 1/|g| scaling there would blow its derivative up like 1/|g|.
        fl = st.extra["floors"]
        first = torch.where(forced, torch.ones_like(prev), _initial_alpha(d, box, fl["g_floor"]))
        alpha0 = torch.where(torch.isnan(prev), first, prev)
        new, acc, stall, nonfin, _ = self.line_search(prob, box, st, d, alpha0, active, create_graph, force)
        # Barzilai-Borwein (BB1) for the next step, on the curvature of -J along the step.
        s = (new.x - st.x).detach()
        y = -(new.g - st.g).detach()
        sy = (s * y).sum(-1)
        ss = (s * s).sum(-1)
        # Step lengths are in (action units)^2 per unit of J: the curvature floor and the step range
        # scale with J's unit (exactly the absolute ones for unit 1).
        bb = ss / sy.clamp(min=1e-30)
        nxt = torch.where(sy > fl["curv"] * ss.clamp(min=1e-30), bb, alpha0 * 2.0)
        nxt = torch.clamp(nxt, min=fl["bb_lo"], max=fl["bb_hi"])
        alpha = torch.where(acc & ~forced, nxt, prev)
        new = replace(new, extra={"alpha": alpha, "floors": fl})
        return new, acc, stall, nonfin, torch.zeros_like(acc)


class LBFGS(Solver):
    """Projected L-BFGS on the free variables, started with a few sign steps; one evaluation per iteration.

    Why the sign (Rprop) start: latent planning objectives are badly scaled across the horizon
    (the terminal value's gradient is ~100x the first reward's) and their maxima sit mostly on
    the bounds. A step of D_i * sign(g_i) per coordinate, with D_i grown by 1.2 while g_i keeps
    its sign and halved when it flips, moves every coordinate at its own pace: on the TD-MPC-size
    benchmark it passes Theseus' final objective in 3-4 evaluations where gradient-scaled L-BFGS
    needs 10-20. After `sign_iters` iterations quasi-Newton steps take over for fast convergence;
    the sign steps' curvature pairs seed the memory.

    Why one evaluation per iteration: a rejected trial is retried at the next iteration with a
    shorter step (quadratic interpolation, per sample) instead of backtracking inside the
    iteration, which evaluated the whole batch again for the few samples that needed it.

    The memory is applied in the compact form of Byrd, Nocedal and Schnabel (a handful of
    batched small matrix products instead of the two-loop recursion's ~10 ops per pair), and is
    kept after the solve: it preconditions the conjugate-gradient implicit backward.
    sign_step: first sign step as a fraction of the box width (0.125: 0.25 for [-1, 1]).
    """

    name = "lbfgs"

    def __init__(self, memory: int = 8, reduced: bool = True, sign_iters: int = 4, sign_step: float = 0.125,
                 **kw):
        super().__init__(**kw)
        if memory < 1 or sign_iters < 0 or not sign_step > 0:
            raise ValueError("lbfgs: memory must be >= 1, sign_iters >= 0 and sign_step > 0")
        self.memory = int(memory)
        self.reduced = bool(reduced)
        self.sign_iters = int(sign_iters)
        self.sign_step = float(sign_step)

    @property
    def warmup_iters(self) -> int:
        return self.sign_iters

    def init_memory(self, st: State, box: Box, unit: Tensor) -> dict:
        B, n = st.x.shape
        M = self.memory
        x = st.x.detach()
        width = box.width.clamp(max=2.0)  # unbounded coordinates step as in a [-1, 1] box
        return {
            "S": x.new_zeros(B, M, n), "Y": x.new_zeros(B, M, n),  # pairs, oldest first
            "valid": torch.zeros(B, M, dtype=torch.bool, device=x.device), "gamma": x.new_ones(B),
            "D": self.sign_step * width, "D_max": 0.5 * width,  # sign-step lengths per coordinate
            "hold": torch.zeros_like(x, dtype=torch.bool),  # coordinates whose gradient just flipped
            "k": 0,  # iterations taken: the first sign_iters are sign steps
            "d": torch.zeros_like(x), "alpha": x.new_ones(B),  # quasi-Newton trial being shortened
            "retry": torch.zeros(B, dtype=torch.bool, device=x.device),
            "nrej": torch.zeros(B, dtype=torch.long, device=x.device),
            **_floors(unit),  # thresholds in J's unit: the curvature-pair tests are relative to it
        }

    @staticmethod
    def apply_inverse(mem: dict, q: Tensor, free: Tensor | None = None) -> Tensor:
        """Approximately (-Hessian)^-1 q per sample, from the valid pairs (compact L-BFGS form).

        H q = gamma q + S R^-T ((D + gamma Y'Y) u - gamma Y'q) - gamma Y u,  u = R^-1 S'q, with
        R = triu(S'Y), D = diag(S'Y) over the pairs in chronological order. Invalid pairs are
        zeroed with a unit diagonal in R, which decouples them exactly.
        free: (B, n) 0/1 mask; the pairs are then restricted to the free variables (reduced
        space), so curvature seen while a variable moved does not leak into a step where it is
        held at a bound.
        """
        S, Y, valid, gamma = mem["S"], mem["Y"], mem["valid"], mem["gamma"]
        if free is not None:
            S = S * free.unsqueeze(1)
            Y = Y * free.unsqueeze(1)
            sy = (S * Y).sum(-1)
            yy = (Y * Y).sum(-1)
            if "pair" in mem:  # s.y is in units of J, y.y in units of J^2 (see _floors)
                yy = torch.maximum(yy, mem["yy_floor"].unsqueeze(-1))
                valid = valid & (sy > mem["pair"].unsqueeze(-1) * yy)
            else:
                valid = valid & (sy > 1e-10 * yy.clamp(min=1e-30))
        v = valid.to(q.dtype).unsqueeze(-1)
        S, Y = S * v, Y * v
        # torch.bmm, not @: the same kernel on the same operands (bit for bit), without matmul's expand and
        # reshape dispatches around it (per-op overhead is what a batch-1 iteration costs)
        bmm = torch.bmm
        St, Yt = S.transpose(1, 2), Y.transpose(1, 2)
        SY = bmm(S, Yt)
        R = torch.triu(SY) + torch.diag_embed(1.0 - v.squeeze(-1))
        g = gamma.view(-1, 1, 1)
        qc = q.unsqueeze(-1)
        u = torch.linalg.solve_triangular(R, bmm(S, qc), upper=True)
        Ytu = bmm(Yt, u)
        w = SY.diagonal(dim1=1, dim2=2).unsqueeze(-1) * u + g * (bmm(Y, Ytu) - bmm(Y, qc))
        t = torch.linalg.solve_triangular(R.transpose(1, 2), w, upper=False)
        return (g * qc + bmm(St, t) - g * Ytu).squeeze(-1)

    def _quasi_newton_trial(self, mem: dict, box: Box, gF: Tensor, fixed: Tensor, forced: Tensor | None,
                            new_dir: Tensor):
        """New direction and first step length for the samples in new_dir; others keep theirs."""
        d = self.apply_inverse(mem, gF, (~fixed).to(gF.dtype) if self.reduced else None)
        d = d.masked_fill(fixed, 0.0)
        has_pairs = mem["valid"].any(-1)
        ascent = (plain(gF) * plain(d)).sum(-1) > 0
        # Forced (differentiated, truncated-mode) steps at a solution use the memory as it is: its
        # ascent test is on rounding noise there, and 1/|g| step scaling (below) would blow the
        # derivative of the step up like 1/|g|; without pairs they take the step gamma * g.
        use_grad = ~(has_pairs & (ascent if forced is None else ascent | forced))
        d = where_rows(use_grad, gF, d)
        first = _initial_alpha(gF, box, mem["g_floor"])
        if forced is not None:
            first = torch.where(forced, mem["gamma"], first)
        alpha0 = torch.where(use_grad, first, torch.ones_like(first))
        d = self.cap_step(d, box)
        stale = new_dir & has_pairs & ~ascent  # not an ascent direction: drop the memory
        if forced is not None:
            stale = stale & ~forced
        return where_rows(new_dir, d, mem["d"]), torch.where(new_dir, alpha0, mem["alpha"]), stale

    def step(self, prob: Problem, box: Box, st: State, active: Tensor, create_graph: bool,
             force: Tensor | None = None, fixed: Tensor | None = None):
        mem = dict(st.extra)
        xd, gd = plain(st.x), plain(st.g)
        if fixed is None:
            fixed = box.fixed_mask(xd, gd)
        forced = None if force is None else active & force
        # Samples iterate in lockstep (an inactive sample never becomes active again outside the
        # forced steps), so the phase is the iteration count: no per-sample bookkeeping needed.
        # Differentiated iterations (unroll, truncated) take no sign step: its derivative is 0.
        sign_phase = mem["k"] < self.sign_iters and not create_graph
        mem["k"] += 1
        sign = quasi = None
        if sign_phase:
            sign = active if forced is None else active & ~forced
            quasi = forced
        else:
            quasi = active
        stale = None
        if quasi is not None:
            new_dir = quasi & ~mem["retry"] if forced is None else quasi & (~mem["retry"] | forced)
            d, alpha = mem["d"], mem["alpha"]
            if self.branchless or bool(new_dir.any()):
                gF = st.g.masked_fill(fixed, 0.0)
                d, alpha, stale = self._quasi_newton_trial(mem, box, gF, fixed, forced, new_dir)
            step = alpha.unsqueeze(-1) * d
        if sign is not None:
            # Coordinates whose gradient flipped sign wait one step (iRprop-), unless all would.
            still = fixed | mem["hold"]
            still = torch.where(still.all(-1, keepdim=True), fixed, still)
            sign_step = (mem["D"] * torch.sign(gd)).masked_fill(still, 0.0)
            step = sign_step if quasi is None else where_rows(sign, sign_step, step)
        xt = box.project(st.x + step * active.unsqueeze(-1))
        Jt, gt, _ = self.evaluate(prob, xt, create_graph)
        Jt_d, J0, gt_d = plain(Jt), plain(st.J), plain(gt)
        fin = all_finite(Jt_d, gt_d)
        s_g = xt - st.x
        s = plain(s_g)
        gs = (gd * s).sum(-1)
        ok = active & fin & (Jt_d >= J0 + self.armijo * gs.clamp(min=0)) & ((gs > 0) | (Jt_d > J0))
        maybe = active & fin & ~ok
        if self.branchless or bool(maybe.any()):
            ok = ok | (maybe & rounding_accept(J0, Jt_d, gs, (gt_d * s).sum(-1), mem["unit"]))
        if forced is not None:
            ok = ok | (forced & fin)
        rejected = active & ~ok
        shrink = None  # (B,) factor of a rejected trial's step; only computed when some trial was rejected
        if self.branchless or bool(rejected.any()):
            # A rejected trial is retried next iteration from the same point, shortened to the maximiser of
            # the quadratic through J0, the slope g.s and Jt, kept in [0.1, 0.5] (Nocedal & Wright 3.5).
            curv = J0 + gs - Jt_d
            shrink = torch.where(fin & (curv > 0), gs / (2 * curv.clamp(min=1e-300)), 0.5)
            shrink = torch.nan_to_num(shrink, nan=0.5).clamp(0.1, 0.5)
        if quasi is not None:
            mem["retry"] = quasi & ~ok
            mem["alpha"] = alpha if shrink is None else torch.where(mem["retry"], alpha * shrink, alpha)
            mem["d"] = d
        mem["nrej"] = (mem["nrej"] + rejected).masked_fill(ok, 0)
        stall = rejected & (mem["nrej"] >= self.max_backtracks)
        if sign is not None:
            self._update_sign_state(mem, sign & ok, sign & rejected, gd, gt_d, shrink)
        # No pair from a forced step: s and y are rounding noise there and 1/s.y would carry a
        # derivative ~ 1/(s.y)^2 into the next differentiated step (gradients off by 1e6 and more).
        self._update_pairs(mem, ok if forced is None else ok & ~forced, stale, s_g, st.g, gt, create_graph,
                           self.branchless)
        new = State(x=where_rows(ok, xt, st.x), J=torch.where(ok, Jt, st.J), g=where_rows(ok, gt, st.g),
                    H=st.H, extra=mem)
        return new, ok, stall, active & ~fin, None

    def step_single(self, prob: Problem, box: Box, st: State, fixed: Tensor):
        """step() for a batch of one running sample, graph-free, not forced (run_solver's single-sample loop).

        Why: at batch 1 an iteration of step() issued ~190 tensor ops, about half of them per-sample masks
        and selects (where, &, ~, any) that cost per-op overhead (~5 us each) and compute nothing for a
        single sample. Here each such mask is one host read and a Python branch; every value is computed by
        the same ops, in the same order, on the same (1, n) tensors as in step(), so the iterates, memory
        and flags are step()'s bit for bit (tests/trajopt/test_fast_single.py compares them).
        Returns (state, accepted, stalled, nonfinite) with Python bools."""
        mem = dict(st.extra)
        gd = plain(st.g)
        sign_phase = mem["k"] < self.sign_iters
        mem["k"] += 1
        stale = False
        if sign_phase:
            # Coordinates whose gradient flipped sign wait one step (iRprop-), unless all would.
            still = fixed | mem["hold"]
            if bool(still.all()):
                still = fixed
            step = (mem["D"] * torch.sign(gd)).masked_fill(still, 0.0)
        else:
            if bool(mem["retry"]):  # the rejected trial again, shortened
                d, alpha = mem["d"], mem["alpha"]
            else:
                d, alpha, stale = self._quasi_newton_single(mem, box, st.g.masked_fill(fixed, 0.0), fixed)
            step = alpha.unsqueeze(-1) * d
        xt = box.project(st.x + step)
        Jt, gt, _ = self.evaluate(prob, xt, False)
        Jt_d, J0, gt_d = plain(Jt), plain(st.J), plain(gt)
        fin = bool(all_finite(Jt_d, gt_d))
        s = plain(xt - st.x)
        gs = (gd * s).sum(-1)
        ok = fin and bool((Jt_d >= J0 + self.armijo * gs.clamp(min=0)) & ((gs > 0) | (Jt_d > J0)))
        if fin and not ok:
            ok = bool(rounding_accept(J0, Jt_d, gs, (gt_d * s).sum(-1), mem["unit"]))
        shrink = None
        if not ok:
            # as in step(): the rejected trial is retried next iteration, shortened (Nocedal & Wright 3.5)
            curv = J0 + gs - Jt_d
            shrink = torch.where(curv > 0, gs / (2 * curv.clamp(min=1e-300)), 0.5) if fin \
                else torch.full_like(gs, 0.5)
            shrink = torch.nan_to_num(shrink, nan=0.5).clamp(0.1, 0.5)
            mem["nrej"] = mem["nrej"] + 1
        else:
            mem["nrej"] = torch.zeros_like(mem["nrej"])
        stall = not ok and bool(mem["nrej"] >= self.max_backtracks)
        if sign_phase:
            D = mem["D"]
            if ok:  # Rprop: lengthen D_i while g_i keeps its sign, halve it on a flip
                prod = gd * gt_d
                flip = prod < 0
                mem["D"] = torch.where(prod > 0, torch.minimum(D * 1.2, mem["D_max"]),
                                       torch.where(flip, D * 0.5, D))
                mem["hold"] = flip
            else:
                mem["D"] = D * shrink.unsqueeze(-1)
        else:
            mem["retry"] = torch.full_like(mem["retry"], not ok)
            mem["alpha"] = alpha if ok else alpha * shrink
            mem["d"] = d
        if stale:  # not an ascent direction: the memory is dropped
            mem["valid"] = torch.zeros_like(mem["valid"])
        if ok:
            y = st.g - gt
            sy, yy = (s * y).sum(-1), (y * y).sum(-1)
            if bool(sy > mem["pair"] * yy):  # a positive-curvature pair (see _update_pairs)
                mem["S"] = torch.cat([mem["S"][:, 1:], s.unsqueeze(1)], 1)
                mem["Y"] = torch.cat([mem["Y"][:, 1:], plain(y).unsqueeze(1)], 1)
                mem["valid"] = torch.cat([mem["valid"][:, 1:], torch.ones_like(mem["valid"][:, :1])], 1)
                mem["gamma"] = sy / torch.maximum(yy, mem["yy_floor"])
            return State(x=xt, J=Jt, g=gt, H=st.H, extra=mem), True, False, False
        return State(x=st.x, J=st.J, g=st.g, H=st.H, extra=mem), False, stall, not fin

    def _quasi_newton_single(self, mem: dict, box: Box, gF: Tensor, fixed: Tensor):
        """_quasi_newton_trial for one sample taking a new direction: (d, alpha, stale as a bool)."""
        d = self.apply_inverse(mem, gF, (~fixed).to(gF.dtype) if self.reduced else None)
        d = d.masked_fill(fixed, 0.0)
        has_pairs = bool(mem["valid"].any())
        ascent = bool((plain(gF) * plain(d)).sum(-1) > 0)
        if has_pairs and ascent:
            alpha0 = torch.ones_like(mem["alpha"])
        else:  # no usable memory: a gradient step
            d = gF
            alpha0 = _initial_alpha(gF, box, mem["g_floor"])
        # cap_step: the step's inf-norm at most the box width (or max_step)
        cap = box.width.amax(-1) if self.max_step is None else torch.full_like(d[:, 0], self.max_step)
        cap = cap.clamp(min=1e-12)
        norm = plain(d).abs().amax(-1)
        if bool(norm > cap):
            d = d * (cap / norm.clamp(min=1e-30)).unsqueeze(-1)
        return d, alpha0, has_pairs and not ascent

    @staticmethod
    def _update_sign_state(mem: dict, acc: Tensor, rej: Tensor, g: Tensor, gt: Tensor, shrink: Tensor | None):
        """Rprop: lengthen D_i while g_i keeps its sign, halve it on a flip; shorten a rejected step
        (shrink None: no trial was rejected)."""
        D = mem["D"]
        prod = g * gt
        flip = prod < 0
        grown = torch.where(prod > 0, torch.minimum(D * 1.2, mem["D_max"]), torch.where(flip, D * 0.5, D))
        kept = D if shrink is None else where_rows(rej, D * shrink.unsqueeze(-1), D)
        mem["D"] = where_rows(acc, grown, kept)
        mem["hold"] = where_rows(acc, flip, mem["hold"])

    @staticmethod
    def _update_pairs(mem: dict, accepted: Tensor, stale: Tensor | None, s: Tensor, g: Tensor, gt: Tensor,
                      create_graph: bool, branchless: bool = False):
        """Append the curvature pair of f = -J where it is positive (f locally convex), oldest dropped.

        The test s.y > (1e-10 / unit) y.y is relative to J's unit: the absolute s.y > 1e-10 y.y rejected
        every pair of an objective scaled by 1e10 (s.y grows like the scale, y.y like its square), and
        L-BFGS fell back to gradient steps that never converged."""
        valid = mem["valid"] if stale is None else mem["valid"] & ~stale.unsqueeze(-1)
        y = g - gt
        sy_g = (s * y).sum(-1)  # keeps the graph when unrolling (the memory then depends on theta)
        yy_g = (y * y).sum(-1)
        sy, yy = plain(sy_g), plain(yy_g)
        good = accepted & (sy > mem["pair"] * yy)  # false where y = 0 (then s.y = 0)
        if not branchless and not bool(good.any()):
            mem["valid"] = valid
            return
        if not create_graph:
            s, y, sy_g, yy_g = plain(s), plain(y), sy, yy
        mem["S"] = where_rows(good, torch.cat([mem["S"][:, 1:], s.unsqueeze(1)], 1), mem["S"])
        mem["Y"] = where_rows(good, torch.cat([mem["Y"][:, 1:], y.unsqueeze(1)], 1), mem["Y"])
        mem["valid"] = where_rows(good, torch.cat([valid[:, 1:], good.unsqueeze(1)], 1), valid)
        mem["gamma"] = torch.where(good, sy_g / torch.maximum(yy_g, mem["yy_floor"]), mem["gamma"])
