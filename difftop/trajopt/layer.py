"""The public entry points: `optimize(objective, init, ...)` and the `TrajOpt` module.

a*(theta) = argmax_{A in [low, high]^(H x m)} J_theta(A), batched over B problems, with a*
differentiable with respect to every tensor J closes over (backward modes below).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .bounds import BOUNDS, wrap_bounds
from .box import Box
from .evaluate import CompiledValueGrad, Problem
from .implicit import cg_solver, dense_solver, free_hessian, implicit_output, memory_solver
from .info import IMPLICIT_INEXACT, INIT_REPLACED, NONFINITE_INIT, TrajOptInfo
from .refine import REFINE_OPTIONS, lm_refine
from .solvers import Solver, make_solver, run_solver
from .solvers.base import result_rows

BACKWARD_MODES = ("implicit", "unroll", "truncated", "none")
UNCONVERGED_MODES = ("memory", "exact")
#: action dtypes solved in float32 internally (TrajOpt._low_precision)
LOW_PRECISION = (torch.float16, torch.bfloat16)
#: solver options the theseus backend takes (difftop.trajopt.theseus_backend.solve_theseus); max_iters,
#: backward_iters and tol are TrajOpt's own arguments and reach it too
THESEUS_OPTIONS = ("step_size", "damping", "residual_offset", "clamp_in_cost", "abs_err_tolerance",
                   "rel_err_tolerance")


class TrajOpt(nn.Module):
    """A configured trajectory optimizer, built once and reused at every call (hot paths).

    solver: "lbfgs" (default, fastest), "pgd", "newton", "lm", or "theseus" (the official
      release's formulation, needs the optional theseus-ai install).
    backward: "implicit" (implicit function theorem at the solution, on the free variables),
      "unroll" (through every iteration), "truncated" (through `backward_iters` extra
      iterations from the solution), "none" (actions are constants).
    implicit_solver: "dense" (eigendecomposition of the Hessian at the solution; free for
      lm/newton which end with it), "cg" (conjugate gradients on Hessian-vector products,
      preconditioned by the L-BFGS memory; no n x n Hessian ever formed), or "auto" (dense when
      the solver has the Hessian or the batch is at most `dense_max_batch`, else cg).
    implicit_unconverged: what the implicit backward does for a sample whose solve did not converge
      (there is no implicit derivative to be exact about): "memory" (default) uses the L-BFGS
      inverse-Hessian estimate of the forward solve, no Hessian product (SHINE; pgd: one gradient
      step's gradient; newton/lm: their final Hessian, as "exact"), flagged IMPLICIT_INEXACT;
      "exact" solves with the true Hessian as for converged samples (damped where indefinite).
      Converged samples are always exact. Measured on a trained RL model whose solves mostly
      stopped at max_iters (results/rl/README.md): "memory" gradients summed over 48 states had
      cosine 0.06 to the converged ones, "exact" 0.59, and "exact" with enough iterations to
      converge 0.90. Prefer "exact" (and a max_iters that lets solves converge) when solves are
      often cut short; "memory" suits mostly-converged solves and fixed small budgets.
    tol: a sample has converged when its projected gradient's inf-norm <= tol * max(u, |J|), u the
      sample's unit of J: 1 when its initial scale max(|J|, |proj grad|_inf) is within [1e-5, 1e5]
      (every well-scaled problem: the absolute rule, iteration for iteration), else that initial scale,
      so that c * J solves to the argmax of J for any c (solvers.base.objective_scale).
    ftol: a sample also stops, not converged, once J rose by at most ftol * max(u, |J|) over the last
      `ftol_window` iterations (solver option, 3) while its projected gradient stayed above `ftol_grad`
      (solver option, 0.8) times its value then: a stalled solve stops, a converging one goes on to tol
      (solvers.base.run_solver). 0 disables it. Default 3e-2, chosen on a tuning family of problems and
      reported on a held-out one (difftop bench trajopt-family, results/trajopt/README.md).
      Solver option sync_every=k > 1: the fixed-shape (GPU-friendly) iteration path, same results.
      Solver option fast_single (True): lbfgs at batch 1 iterates without per-sample masks
      (LBFGS.step_single), the batched path's iterates bit for bit with ~40% fewer ops; False: batched path.
      Solver option compact (8): once that many samples of a batch have stopped, the graph-free iterations
      evaluate only the running ones, when the objective has a rows(idx) method (latent_objective does);
      0: never. Same iterates (to the rounding of matrix products at another batch size).
    solver_options: of the solver, e.g. lbfgs: memory (8), sign_iters (4: the first iterations are
      per-coordinate sign steps, see solvers.first_order.LBFGS), sign_step (0.125 of the box width);
      theseus: step_size, damping, residual_offset, clamp_in_cost, abs_err_tolerance, rel_err_tolerance
      (its max_iters and backward_iters are this layer's); lm_refine (the release's short LM refinement in
      plain torch, difftop.trajopt.refine): step_size, damping, residual_offset, clamp_in_cost.
    bounds: how the box enters the problem (difftop.trajopt.bounds): "project" (default; projection and an
      active set: a variable held at a bound has derivative 0), "tanh" / "sigmoid" (a smooth
      reparameterisation with a -bounds_weight/2 ||u||^2 regulariser), "barrier" (J + bounds_weight * log
      barrier): interior solutions whose derivative survives at the bounds.
    compile_objective: evaluate the objective's value and gradient in the graph-free iterations of
      lbfgs/pgd through torch.compile (evaluate.CompiledValueGrad): same iterates to float rounding,
      fewer per-op overheads at small batch, but ~20 s of compilation at the first call for each new
      objective code, model or shape; falls back to eager evaluation (one warning) when compiling fails.
    objective_vjp: when the objective has its own graph-free `value_grad(actions) -> (J, dJ/dA)` (the
      latent objective over a model's taped functions, difftop/nn/vjp.py), the graph-free iterations call
      it instead of autograd: the same values, bit for bit on TD-MPC's networks, ~1.2x faster solves at
      batch 1 (results/trajopt/README.md, round 6); false evaluates every iterate with autograd.

    Degenerate inputs have a defined outcome: float16/bfloat16 actions are solved in float32 (see
    _low_precision); an empty batch (B = 0) returns empty actions and an empty info without calling the
    objective; bounds that do not broadcast to (B, H, m) are a ValueError naming both shapes; samples
    whose init holds NaN/inf start from the box centre (INIT_REPLACED); an objective with no autograd
    path to the actions returns the init, not converged (NO_ACTION_GRADIENT).
    """

    def __init__(self, solver: str = "lbfgs", backward: str = "implicit", max_iters: int = 50,
                 tol: float = 1e-5, backward_iters: int = 5, implicit_solver: str = "auto",
                 implicit_fallback: float = 1.0, implicit_eig_floor: float = 1e-8,
                 cg_tol: float | None = None, cg_max_iters: int | None = None,
                 low: float | Tensor = -1.0, high: float | Tensor = 1.0, dense_max_batch: int = 16,
                 implicit_unconverged: str = "memory", ftol: float = 3e-2, bounds: str = "project",
                 bounds_weight: float = 1e-3, compile_objective: bool = False, objective_vjp: bool = True,
                 **solver_options):
        settings = {k: v for k, v in locals().items() if k not in ("self", "__class__", "solver_options")}
        super().__init__()
        self._settings = {**settings, **solver_options}  # what replace() starts from
        if backward not in BACKWARD_MODES:
            raise ValueError(
                f"unknown trajopt backward mode {backward!r}; choose one of {list(BACKWARD_MODES)}")
        if implicit_solver not in ("auto", "dense", "cg"):
            raise ValueError(f"implicit_solver must be auto, dense or cg, got {implicit_solver!r}")
        if implicit_unconverged not in UNCONVERGED_MODES:
            raise ValueError(f"implicit_unconverged must be one of {list(UNCONVERGED_MODES)}, "
                             f"got {implicit_unconverged!r}")
        if bounds not in BOUNDS:
            raise ValueError(f"trajopt: unknown bounds {bounds!r}; choose one of {list(BOUNDS)}")
        if not bounds_weight >= 0:
            raise ValueError("trajopt: bounds_weight must be >= 0")
        self.bounds, self.bounds_weight = bounds, float(bounds_weight)  # see difftop.trajopt.bounds
        if max_iters < 0 or backward_iters < 0 or not ftol >= 0:
            raise ValueError("max_iters, backward_iters and ftol must be >= 0")
        self.solver_name = solver
        self.backward = backward
        self.max_iters = int(max_iters)
        self.tol = float(tol)
        self.ftol = float(ftol)
        self.backward_iters = int(backward_iters)
        self.implicit_solver = implicit_solver
        self.implicit_fallback = float(implicit_fallback)
        self.implicit_eig_floor = float(implicit_eig_floor)
        self.cg_tol = cg_tol
        self.cg_max_iters = cg_max_iters
        self.dense_max_batch = int(dense_max_batch)
        self.implicit_unconverged = implicit_unconverged
        self.low, self.high = low, high
        self.solver_options = dict(solver_options)
        # graph-free evaluations of the solve through torch.compile (evaluate.CompiledValueGrad)
        self._compiled = CompiledValueGrad() if compile_objective else None
        self.objective_vjp = bool(objective_vjp)  # the objective's own value_grad, when it has one
        if solver == "theseus":
            from . import theseus_backend

            unknown = sorted(set(solver_options) - set(THESEUS_OPTIONS))
            if unknown:
                raise ValueError(f"trajopt: solver 'theseus' has no option {unknown[0]!r}; its options are "
                                 f"{', '.join(THESEUS_OPTIONS)} (and max_iters, backward_iters, tol)")
            theseus_backend._import_theseus()  # fail now, with the install instructions
            self.solver: Solver | None = None
        elif solver == "lm_refine":  # the release's LM refinement (difftop.trajopt.refine), no Solver object
            unknown = sorted(set(solver_options) - set(REFINE_OPTIONS))
            if backward == "implicit":
                raise ValueError("trajopt: solver 'lm_refine' never converges: no implicit gradient; "
                                 "use backward=truncated (the release's), unroll or none")
            if unknown:
                raise ValueError(f"trajopt: solver 'lm_refine' has no option {unknown[0]!r}; its options are "
                                 f"{', '.join(REFINE_OPTIONS)} (and max_iters, backward_iters)")
            self.solver = None
        else:
            self.solver = make_solver(solver, **solver_options)

    def replace(self, **changes) -> TrajOpt:
        """A new layer with these settings changed and every other one as here (diagnostics that
        re-solve with, say, more iterations or no backward)."""
        return TrajOpt(**{**self._settings, **changes})

    def extra_repr(self) -> str:
        return (f"solver={self.solver_name}, backward={self.backward}, max_iters={self.max_iters}, "
                f"tol={self.tol}, bounds={self.bounds}")

    def forward(self, objective: Callable[[Tensor], Tensor], init: Tensor, low=None, high=None
                ) -> tuple[Tensor, TrajOptInfo]:
        low = self.low if low is None else low
        high = self.high if high is None else high
        if init.dim() != 3:
            raise ValueError(f"trajopt: init must have shape (B, H, m), got {tuple(init.shape)}")
        if not init.is_floating_point():
            raise ValueError("trajopt: init must be a floating-point tensor")
        if torch.is_inference_mode_enabled():
            # Autograd records nothing under inference mode, not even inside enable_grad(): every
            # gradient with respect to the actions would read as 0 and the init be returned as
            # "converged". Refuse rather than return a silently wrong answer.
            raise RuntimeError("trajopt: the solvers need autograd for gradients with respect to the "
                               "actions, which torch.inference_mode() disables; use torch.no_grad()")
        if self.bounds != "project":  # solve a transformed problem, map its solution back (bounds.py)
            w = wrap_bounds(self.bounds, objective, init, low, high, self.bounds_weight)
            objective, init, low, high = w.objective, w.init, w.low, w.high
        if init.dtype in LOW_PRECISION:
            x, info = self._low_precision(objective, init, low, high)
        else:
            x, info = self._solve(objective, init, low, high, self.tol)
        return (x, info) if self.bounds == "project" else (w.finish(x), info)

    def _solve(self, objective: Callable[[Tensor], Tensor], init: Tensor, low, high, tol: float
               ) -> tuple[Tensor, TrajOptInfo]:
        shape = init.shape
        B = shape[0]
        box = Box(low, high, shape, init.dtype, init.device)  # checks the bounds, also for B = 0
        grad_on = torch.is_grad_enabled() and self.backward != "none"
        mode = self.backward if grad_on else "none"
        if B == 0:  # an empty batch (say, no live environment): nothing to solve, nothing to call
            return init.detach().clone(), TrajOptInfo.empty(init.device, init.dtype, self.solver_name, mode)
        x0 = init.reshape(B, -1)
        replaced = None
        if not bool(torch.isfinite(x0.detach()).all()):
            # A NaN/inf warm start (a diverged policy's rollout) would be returned as NaN actions: such
            # samples start from the box centre instead and are flagged INIT_REPLACED.
            replaced = ~torch.isfinite(x0.detach()).all(-1)
            x0 = torch.where(replaced.unsqueeze(-1), box.centre(), x0)
        if self.solver_name == "lm_refine":
            x, info = lm_refine(objective, x0.reshape(shape), box, max_iters=self.max_iters,
                                backward_iters=self.max_iters if mode == "unroll" else self.backward_iters,
                                graph=mode != "none", backward=mode, fast=self.objective_vjp,
                                **self.solver_options)
            if replaced is not None:
                info.status |= torch.where(replaced, INIT_REPLACED, 0)
            return x, info
        if self.solver is None:  # theseus backend: layers cached per batch shape inside
            from .theseus_backend import solve_theseus

            mode = self.backward if torch.is_grad_enabled() else "none"
            x, info = solve_theseus(objective, x0.reshape(shape), low=low, high=high,
                                    max_iters=self.max_iters, backward=mode,
                                    backward_iters=self.backward_iters, tol=tol,
                                    **self.solver_options)
            if replaced is not None:
                info.status |= torch.where(replaced, INIT_REPLACED, 0).to(info.status.device)
            return x, info
        compiled = self._compiled if not self.solver.needs_hessian else None
        prob = Problem(objective, shape, compiled, fast=self.objective_vjp)
        # compiled evaluations keep no graph, nor do hand-written ones (prob.fast) after the first: unless
        # the solve ends at the last recorded point, the implicit backward evaluates once more there
        res = run_solver(self.solver, prob, box, x0, max_iters=self.max_iters, tol=tol,
                         graph_iters=self.backward_iters if mode == "truncated" else 0,
                         unroll=mode == "unroll", record_last=mode == "implicit" and compiled is None,
                         ftol=self.ftol)
        if replaced is not None:
            res.status |= torch.where(replaced, INIT_REPLACED, 0)
        x = res.x
        if mode == "implicit":
            x = self._implicit(prob, box, res)
        elif mode == "none":
            x = x.detach()
        info = TrajOptInfo(iterations=res.iterations, converged=res.converged, objective=res.J.detach(),
                           grad_norm=res.grad_norm.detach(), status=res.status, solver=self.solver_name,
                           backward=mode)
        return x.reshape(shape), info

    def _low_precision(self, objective: Callable[[Tensor], Tensor], init: Tensor, low, high
                       ) -> tuple[Tensor, TrajOptInfo]:
        """float16/bfloat16 actions: solved in float32, the objective still evaluated in the caller's dtype.

        Why solve rather than refuse: a half-precision model (bf16 weights, autocast) is a normal way to
        run a policy, and its user wants actions, not an error. Why float32 inside: the solvers' linear
        algebra (triangular solves, eigh, Cholesky) does not exist for half types on every device, and
        their thresholds (1e-10 curvature tests, 1e-30 floors) underflow there. The objective sees actions
        in its own dtype and its value is promoted to float32; the returned actions are cast back, and
        the cast is differentiable, so gradients reach everything the objective closes over as usual.
        The tolerance is raised to 16 eps of that dtype (about 1.6e-2 for float16, 1.3e-1 for bfloat16):
        a gradient computed in half precision resolves nothing finer, and asking for more only turns
        every solve into NOT_CONVERGED. The info is in float32.
        """
        dt = init.dtype

        def objective32(a: Tensor) -> Tensor:
            return objective(a.to(dt)).float()

        tol = max(self.tol, 16 * torch.finfo(dt).eps)
        x, info = self._solve(objective32, init.float(), low, high, tol)
        return x.to(dt), info

    @staticmethod
    def _failed(res, J: Tensor, g: Tensor) -> Tensor:
        """(B,) samples whose objective is not finite at the returned actions (left at init). A NaN met
        only by a rejected line-search trial (NONFINITE_STEP) does not matter: such a sample may well have
        converged at a finite point."""
        return ((res.status & NONFINITE_INIT) != 0) | ~torch.isfinite(J) | ~torch.isfinite(g).all(-1)

    def _fixed(self, box: Box, res, x_star: Tensor, J: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        """(fixed (B, n), failed (B,)): the variables the implicit backward holds fixed, those at a bound
        that g pushes against and every variable of a failed sample."""
        failed = self._failed(res, J, g)
        return box.fixed_mask(x_star, g) | failed.unsqueeze(-1), failed

    def _implicit(self, prob: Problem, box: Box, res) -> Tensor:
        failed = self._failed(res, res.J.detach(), res.g.detach())
        if bool(failed.any()) and not bool(failed.all()) and prob.can_select:
            # A failed sample's non-finite activations would make every parameter's gradient NaN through
            # the batched graph (its zero cotangent times NaN): the other samples' backward runs on their
            # rows alone (objective.rows), and the failed ones keep their exact zero.
            idx = (~failed).nonzero().squeeze(1)
            prob.recorded = None
            sub_prob, sub_res = prob.select(idx), result_rows(res, idx)
            x = self._implicit_all(sub_prob, box.select(idx), sub_res)
            prob.absorb(sub_prob)
            res.status.index_copy_(0, idx, sub_res.status)  # its IMPLICIT_* flags
            return res.x.detach().index_copy(0, idx, x)
        return self._implicit_all(prob, box, res)

    def _implicit_all(self, prob: Problem, box: Box, res) -> Tensor:
        x_star = res.x.detach()
        rec = prob.recorded
        prob.recorded = None
        if rec is not None and torch.equal(rec[0].detach(), x_star):
            x_leaf, J, g = rec  # the last evaluation was at the solution (every sample): reuse its graph
        elif rec is not None and rec[2].requires_grad \
                and bool(self._fixed(box, res, x_star, res.J.detach(), res.g.detach())[0].all()):
            # The solver's gradient at the solution (res.g) holds every action at a bound: d a*/d theta is
            # exactly zero, and an earlier evaluation's graph serves to connect the output (it is not walked)
            return implicit_output(x_star, rec[2], None)
        else:
            J, g, x_leaf = prob.grad_graph(x_star)
        if not g.requires_grad:  # nothing the objective closes over requires grad
            return x_star
        fixed, failed = self._fixed(box, res, x_star, J.detach(), g.detach())
        if bool(fixed.all()):  # every action held at a bound (or failed): d a*/d theta is exactly zero
            return implicit_output(x_star, g, None)
        memory = res.extra if "S" in res.extra else None
        # newton/lm end with the Hessian itself: their "memory" is exact (damped where indefinite).
        cheap = self.implicit_unconverged == "memory" and res.H is None
        exact = res.converged | failed if cheap else torch.ones_like(failed)
        res.status |= torch.where(exact, 0, IMPLICIT_INEXACT)
        unit = res.scale
        fallback = self.implicit_fallback if unit is None else self.implicit_fallback * unit
        approx = memory_solver(memory, fixed, fallback)
        kind = self.implicit_solver
        if kind == "auto":
            # Measured (bench trajopt): one dense Hessian costs ~10-15 gradient evaluations and is
            # overhead-bound at small batch, where it beats a sequence of CG products; at large
            # batch it is FLOP-bound and a few preconditioned CG products are cheaper. Either runs
            # only when some sample needs the exact solve (converged, or implicit_unconverged="exact").
            small = x_star.shape[0] <= self.dense_max_batch
            kind = "dense" if (res.H is not None or small) else "cg"
        if res.H is None and not bool((exact & ~failed).any()):
            solve = approx  # no sample needs the true Hessian: no Hessian product at all
        elif kind == "dense":
            solve = self._dense(g, x_leaf, res, fixed, failed, exact, approx)
        else:
            eps = torch.finfo(x_star.dtype).eps
            tol = self.cg_tol if self.cg_tol is not None else 10 * eps ** (2 / 3)
            max_it = self.cg_max_iters if self.cg_max_iters is not None else 2 * x_star.shape[1]
            solve = cg_solver(g, x_leaf, fixed, memory, tol=tol, max_iters=max_it,
                              fallback=self.implicit_fallback, status=res.status, exact=exact, approx=approx,
                              unit=unit)
        return implicit_output(x_star, g, solve)

    def _dense(self, g: Tensor, x_leaf: Tensor, res, fixed: Tensor, failed: Tensor, exact: Tensor, approx):
        H = res.H
        if H is None:  # only the variables an exact sample leaves free need rows (implicit.free_hessian)
            H = free_hessian(g, x_leaf, fixed | ~(exact & ~failed).unsqueeze(-1))
            # A NaN matrix makes the batched eigendecomposition raise for the whole batch:
            # failed samples (or a non-finite Hessian) get -I and all variables fixed.
            bad = failed | ~torch.isfinite(H).all(-1).all(-1)
            fixed = fixed | bad.unsqueeze(-1)
            eye = torch.eye(H.shape[-1], dtype=H.dtype, device=H.device).expand_as(H)
            H = torch.where(bad.view(-1, 1, 1), -eye, H)
        return dense_solver(H, fixed, self.implicit_eig_floor, self.implicit_fallback, res.status, exact,
                            approx, res.scale)


def optimize(objective: Callable[[Tensor], Tensor], init: Tensor, *, low=-1.0, high=1.0,
             solver: str = "lbfgs", backward: str = "implicit", max_iters: int = 50, tol: float = 1e-5,
             **options) -> tuple[Tensor, TrajOptInfo]:
    """Solve max_A objective(A) for a batch, A in [low, high]^(B, H, m), warm-started at init.

    objective: maps actions (B, H, m) to (B,) values to maximise; may close over tensors that
      require grad - gradients of a loss on the returned actions reach all of them.
    Returns (actions (B, H, m), TrajOptInfo). Works under torch.no_grad() (then no graph).
    Other options (backward_iters, implicit_solver, solver-specific keywords) as in TrajOpt.
    For repeated calls in a hot loop, build a `TrajOpt` once instead.
    """
    layer = TrajOpt(solver=solver, backward=backward, max_iters=max_iters, tol=tol, low=low, high=high,
                    **options)
    return layer(objective, init)
