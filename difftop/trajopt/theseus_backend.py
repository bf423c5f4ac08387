"""Optional Theseus backend: the official DiffTOP formulation of trajectory optimization.

The official release (github.com/wkwan7/DiffTORI, ``mbrl/src/algorithm/tdmpc.py``,
``plan_theseus`` / ``plan_theseus_update``; defaults in ``mbrl/cfgs/default.yaml``) turns the
maximisation of a scalar return ``G(a)`` into a one-residual nonlinear least-squares problem
for Theseus:

* residual ``r(a) = 1000 - nan_to_num(G(clamp(a, -1, 1)))`` (one scalar per problem), so that
  minimising ``r^2`` pushes ``G`` up while ``G < 1000``; bounds are only enforced by the clamp
  inside the cost (the iterate itself is never projected);
* ``th.LevenbergMarquardt`` with ``th.CholeskyDenseSolver``, ``max_iterations=50``,
  ``step_size=1e-3``, ``damping=1e-3`` (plain ``lambda * I`` damping, not adaptive), float32;
* ``backward_mode="truncated"`` with ``backward_num_iterations=5``: the first 45 iterations
  run without autograd, the last 5 are differentiated through;
* the layer's last iterate ``updated_inputs["actions"]`` carries the gradient (used in the
  actor loss), while ``info.best_solution`` (detached) is what is executed.

This module reproduces that formulation with three deliberate differences, all of which leave
the iterates of well-behaved samples unchanged:

1. Theseus objects are built once per (batch size, horizon, action dim, dtype, device,
   max_iters, step_size) and cached; the official code rebuilt them on every call.
2. The Jacobian of the single residual is computed with one reverse-mode pass over the whole
   batch (problems are independent, so ``d(sum_b r_b)/d a_b = d r_b / d a_b``), instead of
   Theseus' per-sample ``vmap(jacrev)`` which cannot see tensors the objective closes over.
   The graph is kept (``create_graph``) whenever autograd is on, as ``AutoDiffCostFunction``
   does by default, so second-order terms are differentiated like in the official code.
3. The dense Cholesky solve never raises. ``J^T J + lambda I`` is rank one plus ``1e-3 I``;
   in float32 with large gradients rounding makes it numerically indefinite and Theseus
   raises ``linalg.cholesky: ... not positive-definite`` for the whole batch. Here the samples
   whose factorisation fails get an extra diagonal shift (escalating from
   ``n * eps * max|diag|``) and are flagged ``DAMPED``; samples whose Jacobian or residual is
   not finite get a zero step (they stay at their last finite iterate) and are flagged
   ``NONFINITE_STEP`` (``NONFINITE_INIT`` if it happened at the initial actions). Any other
   error raised by Theseus is caught: a ``RuntimeWarning`` is issued and the initial actions
   are returned with ``NONFINITE_STEP`` set for every sample.

Behaviour worth knowing (it follows from the formulation, and is reproduced, not fixed): by
Sherman-Morrison the LM step is ``step_size * r * grad G / (damping + |grad G|^2)``. With the
official 1e-3/1e-3 it aims to raise G by about ``1e-3 * r ~ 1`` per iteration, so it overshoots an
interior maximum that is less than ~1 above the current value and hovers around it; where
``|grad G|^2 << damping`` it is gradient ascent with rate ``~1e3``, which typically throws the
iterate out of the box, where the clamp zeroes the gradient and the sample stops. Theseus'
relative stopping test on ``r^2 ~ 1e6`` also stops early once G changes by less than ~5e-6.
``backward="implicit"``: the final Gauss-Newton system ``J^T J`` of a single residual is rank one,
so Theseus falls back to the damped step (flagged ``IMPLICIT_DAMPED``) and the gradient is that of
one damped LM step, not the implicit-function-theorem gradient.

Theseus is optional. Install it (``theseus-ai``'s setup imports torch, so build isolation must
be off, and its ``scikit-sparse`` requirement is not needed for the dense solver)::

    pip install --no-build-isolation --no-deps theseus-ai==0.2.3
    pip install semantic-version==2.10.0 torchlie==0.1.0 torchkin==0.1.1 scipy
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable

import torch

from difftop.trajopt.info import (
    DAMPED,
    IMPLICIT_DAMPED,
    NO_ACTION_GRADIENT,
    NONFINITE_INIT,
    NONFINITE_STEP,
    NOT_CONVERGED,
    OK,
    TrajOptInfo,
)

__all__ = ["INSTALL_HINT", "TheseusSolver", "clear_cache", "is_available", "solve_theseus"]

INSTALL_HINT = (
    "The Theseus backend needs theseus-ai, which must be installed in two steps "
    "(a plain `pip install theseus-ai` fails):\n"
    "    pip install --no-build-isolation --no-deps theseus-ai==0.2.3\n"
    "    pip install semantic-version==2.10.0 torchlie==0.1.0 torchkin==0.1.1 scipy\n"
    "(scikit-sparse is not needed: only the dense Cholesky solver is used)."
)

Objective = Callable[[torch.Tensor], torch.Tensor]

_BACKWARD_MODES = {"truncated": "TRUNCATED", "unroll": "UNROLL", "implicit": "IMPLICIT", "none": None}

_th = None
_import_error: BaseException | None = None


def _import_theseus():
    """Import theseus lazily (it is slow and warns about the missing cholmod at import)."""
    global _th, _import_error
    if _th is not None:
        return _th
    if _import_error is not None:
        raise ImportError(INSTALL_HINT) from _import_error
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*skparse.*")
            warnings.filterwarnings("ignore", message=".*[Cc]holmod.*")
            import theseus as th
    except Exception as e:  # ImportError, or a broken install raising something else
        _import_error = e
        raise ImportError(INSTALL_HINT) from e
    _th = th
    return th


def is_available() -> bool:
    """True if theseus can be imported."""
    try:
        _import_theseus()
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------------------------
# Theseus pieces (classes are created on first use, because their bases come from theseus)
# ----------------------------------------------------------------------------------------------

_classes: dict[str, type] = {}


def _solver_classes() -> tuple[type, type]:
    if _classes:
        return _classes["cost"], _classes["linear"]
    th = _import_theseus()

    class _BatchGradCost(th.AutoDiffCostFunction):
        """AutoDiffCostFunction whose Jacobian is one reverse pass over the (separable) batch."""

        def __init__(self, optim_vars, err_fn, dim, *, jac_fn, cost_weight=None, name=None):
            super().__init__(optim_vars, err_fn, dim, cost_weight=cost_weight, name=name)
            self._jac_fn = jac_fn

        def jacobians(self):
            x = next(iter(self.optim_vars)).tensor
            jac, err = self._jac_fn(x)
            return [jac], err

        def _copy_impl(self, new_name=None):
            return _BatchGradCost(
                [v.copy() for v in self.optim_vars],
                self._err_fn,
                self._dim,
                jac_fn=self._jac_fn,
                cost_weight=self.weight.copy(),
                name=new_name,
            )

    class _SafeCholeskySolver(th.CholeskyDenseSolver):
        """CholeskyDenseSolver that shifts (per sample) instead of raising on a failed factorisation."""

        max_shift_tries = 8

        def reset_flags(self, batch_size: int, device) -> None:
            self.damped = torch.zeros(batch_size, dtype=torch.bool, device=device)
            self.failed = torch.zeros(batch_size, dtype=torch.bool, device=device)
            self.gn_fallback = False

        def solve(self, damping=None, ellipsoidal_damping=True, damping_eps=1e-8, **kwargs):
            self._undamped = damping is None
            return super().solve(
                damping=damping, ellipsoidal_damping=ellipsoidal_damping, damping_eps=damping_eps, **kwargs
            )

        def _solve_sytem(self, Atb: torch.Tensor, AtA: torch.Tensor) -> torch.Tensor:
            B, n, _ = AtA.shape
            finite = torch.isfinite(AtA).flatten(1).all(1) & torch.isfinite(Atb).flatten(1).all(1)
            eye = torch.eye(n, dtype=AtA.dtype, device=AtA.device).expand(B, n, n)
            A = torch.where(finite.view(B, 1, 1), AtA, eye)
            b = torch.where(finite.view(B, 1, 1), Atb, torch.zeros_like(Atb))
            L, info = torch.linalg.cholesky_ex(A)
            bad = info != 0
            if getattr(self, "_undamped", False) and bool(bad.any()):
                # The Gauss-Newton step of Theseus' implicit backward: keep Theseus' own fallback
                # (it catches this and takes the damped LM step instead).
                self.gn_fallback = True
                raise RuntimeError("Gauss-Newton system not positive-definite (implicit step)")
            if bool(bad.any()):
                with torch.no_grad():
                    scale = A.diagonal(dim1=1, dim2=2).abs().amax(1).clamp_min(1.0)
                    shift = torch.zeros(B, dtype=A.dtype, device=A.device)
                    shift0 = n * torch.finfo(A.dtype).eps * scale
                for _ in range(self.max_shift_tries):
                    with torch.no_grad():
                        shift = torch.where(bad, torch.where(shift > 0, shift * 10.0, shift0), shift)
                    L, info = torch.linalg.cholesky_ex(A + shift.view(B, 1, 1) * eye)
                    bad = info != 0
                    if not bool(bad.any()):
                        break
                self.damped |= (shift > 0) & ~bad
                if bool(bad.any()):  # give up on these samples: zero step
                    A = torch.where(bad.view(B, 1, 1), eye, A + shift.view(B, 1, 1) * eye)
                    b = torch.where(bad.view(B, 1, 1), torch.zeros_like(b), b)
                    L, _ = torch.linalg.cholesky_ex(A)
                    finite = finite & ~bad
            self.failed |= ~finite
            return torch.cholesky_solve(b, L).squeeze(2)

    _classes["cost"] = _BatchGradCost
    _classes["linear"] = _SafeCholeskySolver
    return _BatchGradCost, _SafeCholeskySolver


# ----------------------------------------------------------------------------------------------
# Solver
# ----------------------------------------------------------------------------------------------


class TheseusSolver:
    """One Theseus LM layer for a fixed (batch size, horizon, action dim, dtype, device).

    Built once and reused: the objective, bounds and runtime options are handed over per call.
    ``last_best_actions`` holds, after each call, Theseus' detached best iterate (the one the
    official code executes), shape (B, H, m).
    """

    def __init__(
        self,
        batch_size: int,
        horizon: int,
        action_dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        max_iters: int = 50,
        step_size: float = 1e-3,
    ):
        th = _import_theseus()
        cost_cls, linear_cls = _solver_classes()
        self.batch_size, self.horizon, self.action_dim = int(batch_size), int(horizon), int(action_dim)
        self.dtype, self.device = dtype, torch.device(device)
        self.max_iters, self.step_size = int(max_iters), float(step_size)
        n = self.horizon * self.action_dim

        # per-call state, read by the residual function
        self._objective: Objective | None = None
        self._low: torch.Tensor | float = -1.0
        self._high: torch.Tensor | float = 1.0
        self._offset = 1000.0
        self._clamp = True
        self._n_jac_calls = 0
        self._n_iters = 0
        self._no_action_grad = False
        self._nonfinite = torch.zeros(self.batch_size, dtype=torch.bool)
        self._nonfinite_init = torch.zeros(self.batch_size, dtype=torch.bool)
        self.last_best_actions: torch.Tensor | None = None
        self.broken = False  # set when Theseus raised during a call
        self._user_error = False
        # the DAMPED warning, once per layer: Python's own once-per-location dedup does not hold here
        # (every call's catch_warnings() resets it), so a run acting with Theseus warned on every step
        self._warned_damped = False

        # every variable in the requested dtype before the optimizer copies them
        actions = th.Vector(dof=n, name="actions", dtype=dtype)
        weight = th.ScaleCostWeight(torch.ones(1, 1, dtype=dtype))
        cost = cost_cls(
            [actions], self._err_fn, 1, cost_weight=weight, jac_fn=self._jac_fn, name="value_cost_fn"
        )
        objective = th.Objective(dtype=dtype)
        objective.to(device=self.device, dtype=dtype)
        objective.add(cost)
        optimizer = th.LevenbergMarquardt(
            objective,
            linear_cls,
            max_iterations=self.max_iters,
            step_size=self.step_size,
        )
        self.layer = th.TheseusLayer(optimizer)
        self.layer.to(device=self.device, dtype=dtype)
        self.optimizer = optimizer
        self.linear_solver = optimizer.linear_solver
        self._BackwardMode = th.BackwardMode

    # -- residual and its Jacobian ------------------------------------------------------------

    def _value(self, x: torch.Tensor) -> torch.Tensor:
        """G(a): the objective at the (clamped) actions, x flat (B, H*m) -> (B,)."""
        a = x.reshape(x.shape[0], self.horizon, self.action_dim)
        if self._clamp:
            a = _clamp(a, self._low, self._high)
        assert self._objective is not None, "TheseusSolver used outside a call"
        try:
            g = self._objective(a)
            return g.reshape(x.shape[0])
        except Exception:
            self._user_error = True  # a bug in the objective is re-raised, never swallowed
            raise

    def _err_fn(self, optim_vars, aux_vars) -> torch.Tensor:
        g = self._value(optim_vars[0].tensor)
        return (self._offset - torch.nan_to_num(g, nan=0.0)).unsqueeze(1)

    def _jac_fn(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            g = self._value(xg)
            grad = None
            if g.requires_grad:  # else J does not depend on the actions (detached, or numpy)
                (grad,) = torch.autograd.grad(g.sum(), xg, create_graph=create_graph, allow_unused=True)
        if grad is None:
            self._no_action_grad = True
            grad = torch.zeros_like(xg)
        ok = torch.isfinite(g) & torch.isfinite(grad).all(1)
        bad = (~ok).detach().cpu()
        if self._n_jac_calls == 0:
            self._nonfinite_init |= bad
        else:
            self._nonfinite |= bad
        self._n_jac_calls += 1
        if not bool(ok.all()):
            grad = torch.where(ok.unsqueeze(1), grad, torch.zeros_like(grad))
        err = (self._offset - torch.nan_to_num(g, nan=0.0)).unsqueeze(1)
        if not create_graph:
            err, grad = err.detach(), grad.detach()
        return -grad.unsqueeze(1), err  # d r / d a = -dG/da, shape (B, 1, n)

    def _count_iter(self, *args) -> None:
        self._n_iters += 1

    # -- call -------------------------------------------------------------------------------

    def __call__(
        self,
        objective: Objective,
        init: torch.Tensor,
        *,
        low: float | torch.Tensor = -1.0,
        high: float | torch.Tensor = 1.0,
        damping: float = 1e-3,
        backward: str = "truncated",
        backward_iters: int = 5,
        residual_offset: float = 1000.0,
        clamp_in_cost: bool = True,
        tol: float = 1e-4,
        abs_err_tolerance: float = 1e-10,
        rel_err_tolerance: float = 1e-8,
    ) -> tuple[torch.Tensor, TrajOptInfo]:
        B, H, m = init.shape
        if (B, H, m) != (self.batch_size, self.horizon, self.action_dim):
            raise ValueError(f"init has shape {tuple(init.shape)}, solver built for {self._shape()}")
        if init.dtype != self.dtype:
            raise ValueError(f"init has dtype {init.dtype}, solver built for {self.dtype}")
        if backward not in _BACKWARD_MODES:
            raise ValueError(f"backward must be one of {sorted(_BACKWARD_MODES)}, got {backward!r}")

        self._objective = objective
        self._low, self._high = low, high
        self._offset, self._clamp = float(residual_offset), bool(clamp_in_cost)
        self._n_jac_calls = 0
        self._n_iters = 0
        self._no_action_grad = False
        self._user_error = False
        self._nonfinite = torch.zeros(B, dtype=torch.bool)
        self._nonfinite_init = torch.zeros(B, dtype=torch.bool)
        self.linear_solver.reset_flags(B, init.device)
        self.optimizer.set_params(abs_err_tolerance=abs_err_tolerance, rel_err_tolerance=rel_err_tolerance)
        self.last_best_actions = None

        x0 = init.reshape(B, H * m)
        kwargs = {
            "track_best_solution": True,
            "verbose": False,
            "damping": float(damping),
            "end_iter_callback": self._count_iter,
        }
        mode = _BACKWARD_MODES[backward]
        if mode is None:
            x0 = x0.detach()
            kwargs["backward_mode"] = self._BackwardMode.UNROLL
        else:
            kwargs["backward_mode"] = getattr(self._BackwardMode, mode)
            if mode == "TRUNCATED":
                kwargs["backward_num_iterations"] = min(int(backward_iters), self.max_iters)

        status = torch.zeros(B, dtype=torch.int64)
        th_info = None
        try:
            with (
                warnings.catch_warnings(),
                torch.set_grad_enabled(mode is not None and torch.is_grad_enabled()),
            ):
                warnings.filterwarnings("ignore", message=".*backward_num_iterations.*")
                # Theseus indexes numpy arrays with torch tensors (numpy>=2 deprecation noise)
                warnings.filterwarnings("ignore", message=".*__array__ implementation.*")
                out, th_info = self.layer.forward({"actions": x0}, optimizer_kwargs=kwargs)
            x = out["actions"]
        except RuntimeError as e:  # includes torch.linalg.LinAlgError
            self.broken = True
            if self._user_error:
                raise
            warnings.warn(
                f"Theseus solve failed ({e}); returning the initial actions for the whole batch "
                "(status NONFINITE_STEP).",
                RuntimeWarning,
                stacklevel=3,
            )
            x = x0
            status |= NONFINITE_STEP
        finally:
            self._objective = None

        actions = x.reshape(B, H, m)
        if mode is None:
            actions = actions.detach()

        # ---- diagnostics ----
        ls = self.linear_solver
        iterations = torch.full((B,), self._n_iters, dtype=torch.int64)
        if th_info is not None:
            best = th_info.best_solution["actions"] if th_info.best_solution is not None else None
            if best is not None:
                self.last_best_actions = best.to(init.device).reshape(B, H, m)
            conv_it = th_info.converged_iter.detach().cpu().long()
            iterations = torch.where(conv_it >= 0, torch.minimum(conv_it, iterations), iterations)
            status |= torch.where(ls.damped.cpu(), DAMPED, OK)
            status |= torch.where(ls.failed.cpu() | self._nonfinite, NONFINITE_STEP, OK)
            status |= torch.where(self._nonfinite_init, NONFINITE_INIT, OK)
            if ls.gn_fallback:  # implicit mode: GN system singular, Theseus used the damped LM step
                status |= IMPLICIT_DAMPED
        value, gnorm = _value_and_grad_norm(objective, actions.detach(), low, high, clamp_in_cost=self._clamp)
        converged = torch.isfinite(gnorm) & (gnorm <= tol)
        if self._no_action_grad:  # nothing was optimised: not "converged" (the zero step kept the init)
            converged = torch.zeros_like(converged)
            status |= NO_ACTION_GRADIENT
        status |= torch.where(converged.cpu() | self._no_action_grad, OK, NOT_CONVERGED)
        if bool((status & DAMPED).any()) and th_info is not None and not self._warned_damped:
            self._warned_damped = True
            warnings.warn(
                f"Theseus LM: {(status & DAMPED).ne(0).sum().item()}/{B} samples had a non positive-"
                "definite system (float rounding); they were solved with an extra diagonal shift "
                "(status DAMPED; later solves of this shape flag it in info.status without a warning).",
                RuntimeWarning,
                stacklevel=3,
            )
        info = TrajOptInfo(
            iterations=iterations.to(init.device),
            converged=converged.to(init.device),
            objective=value.to(init.device),
            grad_norm=gnorm.to(init.device),
            status=status.to(init.device),
            solver="theseus-lm",
            backward=backward,
        )
        return actions, info

    def _shape(self) -> tuple[int, int, int]:
        return (self.batch_size, self.horizon, self.action_dim)


def _clamp(a: torch.Tensor, low, high) -> torch.Tensor:
    if isinstance(low, torch.Tensor) or isinstance(high, torch.Tensor):
        lo = torch.as_tensor(low, dtype=a.dtype, device=a.device)
        hi = torch.as_tensor(high, dtype=a.dtype, device=a.device)
        return torch.maximum(torch.minimum(a, hi), lo)
    return a.clamp(float(low), float(high))


def _value_and_grad_norm(objective: Objective, a: torch.Tensor, low, high, *, clamp_in_cost: bool):
    """Objective and projected-gradient inf-norm at the returned actions (detached).

    With ``clamp_in_cost`` the solved problem is max J over the box, evaluated at x = clamp(a);
    gradient components at an active bound that push outward are dropped (the convention of
    ``difftop.trajopt.box.Box.projected_grad``). Without it the problem is unconstrained and the
    plain gradient inf-norm is reported.
    """
    x = _clamp(a, low, high) if clamp_in_cost else a
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        v = objective(xg).reshape(a.shape[0])
        g = torch.autograd.grad(v.sum(), xg, allow_unused=True)[0] if v.requires_grad else None
    if g is None:
        g = torch.zeros_like(xg)
    g = g.detach()
    if clamp_in_cost:
        lo = torch.as_tensor(low, dtype=x.dtype, device=x.device)
        hi = torch.as_tensor(high, dtype=x.dtype, device=x.device)
        fixed = ((x <= lo) & (g <= 0)) | ((x >= hi) & (g >= 0))
        g = torch.where(fixed, torch.zeros_like(g), g)
    gnorm = g.flatten(1).abs().amax(1)
    gnorm = torch.where(torch.isfinite(gnorm), gnorm, torch.full_like(gnorm, float("inf")))
    return v.detach(), gnorm


# ----------------------------------------------------------------------------------------------
# Functional entry point with a small cache of built layers
# ----------------------------------------------------------------------------------------------

_CACHE: OrderedDict[tuple, TheseusSolver] = OrderedDict()
_CACHE_SIZE = 8


def clear_cache() -> None:
    """Forget all cached Theseus layers."""
    _CACHE.clear()


def _get_solver(B: int, H: int, m: int, dtype, device, max_iters: int, step_size: float) -> TheseusSolver:
    key = (B, H, m, dtype, str(device), int(max_iters), float(step_size))
    solver = _CACHE.get(key)
    if solver is None:
        solver = TheseusSolver(B, H, m, dtype=dtype, device=device, max_iters=max_iters, step_size=step_size)
        _CACHE[key] = solver
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    return solver


def solve_theseus(
    objective: Objective,
    init: torch.Tensor,
    *,
    low: float | torch.Tensor = -1.0,
    high: float | torch.Tensor = 1.0,
    max_iters: int = 50,
    step_size: float = 1e-3,
    damping: float = 1e-3,
    backward: str = "truncated",
    backward_iters: int = 5,
    residual_offset: float = 1000.0,
    clamp_in_cost: bool = True,
    tol: float = 1e-4,
    abs_err_tolerance: float = 1e-10,
    rel_err_tolerance: float = 1e-8,
) -> tuple[torch.Tensor, TrajOptInfo]:
    """Maximise ``objective`` over action sequences with Theseus LM, as the official DiffTOP code.

    Args:
        objective: maps actions (B, H, m) to (B,) values to maximise; sample b's value must depend
            only on sample b's actions. It may close over tensors that require grad.
        init: (B, H, m) initial actions (float32 or float64; defines dtype and device).
        low, high: action bounds (floats, or tensors broadcastable to (B, H, m)); with
            ``clamp_in_cost`` the actions are clamped inside the cost only, as in the official
            code, so the returned iterate may lie outside the box (its clamp is what was scored).
        max_iters, step_size, damping: LM settings (official: 50, 1e-3, 1e-3).
        backward: "truncated" (grad through the last ``backward_iters`` iterations, official),
            "unroll" (through all), "implicit" (Theseus' implicit mode: one final Gauss-Newton
            step, which is rank-deficient for a single residual, so Theseus usually falls back to
            the damped step for the whole batch: flagged IMPLICIT_DAMPED), "none" (no graph).
        residual_offset: the constant c of the residual ``c - G`` (official 1000).
        clamp_in_cost: clamp the actions to [low, high] inside the cost (official True).
        tol: projected-gradient inf-norm below which a sample is reported converged (diagnostic
            only; Theseus stops on its own criteria below).
        abs_err_tolerance, rel_err_tolerance: Theseus' stopping test on the squared residual
            (defaults are Theseus', as in the official code). Because ``r ~ residual_offset``, the
            relative test fires once ``|J change| < ~rel_err_tolerance * residual_offset / 2`` per
            iteration; pass 0 to always run ``max_iters`` iterations.

    Returns:
        actions (B, H, m): Theseus' last iterate (differentiable unless ``backward="none"``);
        info: per-sample TrajOptInfo; ``objective``/``grad_norm`` are computed here at the
        returned actions (at their clamp when ``clamp_in_cost``).
    """
    if init.ndim != 3:
        raise ValueError(f"init must be (B, H, m), got shape {tuple(init.shape)}")
    B, H, m = init.shape
    solver = _get_solver(B, H, m, init.dtype, init.device, max_iters, step_size)
    try:
        return solver(
            objective,
            init,
            low=low,
            high=high,
            damping=damping,
            backward=backward,
            backward_iters=backward_iters,
            residual_offset=residual_offset,
            clamp_in_cost=clamp_in_cost,
            tol=tol,
            abs_err_tolerance=abs_err_tolerance,
            rel_err_tolerance=rel_err_tolerance,
        )
    finally:
        if solver.broken:  # an exception went through Theseus: do not reuse its state
            for k, v in list(_CACHE.items()):
                if v is solver:
                    del _CACHE[k]
