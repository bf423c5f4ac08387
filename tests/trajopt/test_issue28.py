"""Issue 28, the layer part: degenerate inputs get a clear outcome instead of a cryptic error or a silent
wrong answer. One table-driven test per case: half-precision dtypes, an empty batch, bounds of the wrong
shape, NaN/inf initial actions, objectives that do not depend on the actions, and badly scaled
objectives (tolerance and L-BFGS curvature pairs relative to the objective's own unit)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from difftop.trajopt import FLAG_NAMES, TrajOpt, optimize
from difftop.trajopt.info import INIT_REPLACED, NO_ACTION_GRADIENT, NOT_CONVERGED
from difftop.trajopt.solvers.base import SCALE_BAND, objective_scale
from difftop.trajopt.theseus_backend import is_available

B, H, M = 4, 3, 2
SOLVERS = ["lbfgs", "pgd", "newton", "lm"]
WITH_THESEUS = SOLVERS + [pytest.param("theseus", marks=pytest.mark.skipif(
    not is_available(), reason="theseus-ai not installed"))]


def _quadratic(dtype, t=(0.3, -0.5)):
    """J(A) = -sum w (A - t)^2, maximum at t (inside [-1, 1]); t requires grad."""
    t = torch.tensor(t, dtype=dtype).requires_grad_(True)
    w = torch.tensor([1.0, 2.0], dtype=dtype)
    return (lambda A: -(w * (A - t) ** 2).sum((1, 2))), t


# -- 1. float16 / bfloat16 ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,atol,rtol", [(torch.float16, 2e-3, 0.05), (torch.bfloat16, 4e-2, 0.15)])
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("backward", ["implicit", "unroll", "truncated"])
def test_half_precision_is_solved_in_float32_and_differentiable(dtype, atol, rtol, solver, backward):
    J, t = _quadratic(dtype)
    a, info = optimize(J, torch.zeros(B, H, M, dtype=dtype), solver=solver, backward=backward)
    assert a.dtype == dtype and a.shape == (B, H, M)
    assert info.converged.all() and (info.status == 0).all(), info
    assert (a.float() - t.detach().float()).abs().max() <= atol
    # da*/dt = I: each t_j collects the B * H actions of its column (unrolled: the derivative of the
    # last iterate of a solve stopped at the dtype's tolerance, within rtol of it)
    a.sum().backward()
    assert t.grad is not None and t.grad.dtype == dtype
    assert torch.allclose(t.grad.float(), torch.full((M,), float(B * H)), rtol=rtol)


# -- 2. an empty batch -------------------------------------------------------------------------------

@pytest.mark.parametrize("solver", WITH_THESEUS)
@pytest.mark.parametrize("backward", ["implicit", "none"])
def test_empty_batch_returns_empty_actions_and_info(solver, backward):
    def never(A):
        raise AssertionError("the objective must not be called for an empty batch")

    init = torch.zeros(0, H, M)
    a, info = optimize(never, init, solver=solver, backward=backward)
    assert a.shape == (0, H, M) and a.dtype == init.dtype
    for name in ("iterations", "converged", "objective", "grad_norm", "status"):
        assert getattr(info, name).shape == (0,), name
    assert not info.failed.any() and set(info.summary()) >= set(FLAG_NAMES.values())
    with pytest.raises(ValueError, match=r"low has shape \(5,\)"):  # bounds are still checked
        optimize(never, init, low=-torch.ones(5), solver=solver)


# -- 3. bounds of the wrong shape ----------------------------------------------------------------------

@pytest.mark.parametrize("solver", ["lbfgs", "newton", pytest.param("theseus", marks=pytest.mark.skipif(
    not is_available(), reason="theseus-ai not installed"))])
@pytest.mark.parametrize("which,shape", [("low", (5,)), ("high", (H, 3)), ("low", (B + 1, 1, 1)),
                                         ("high", (2, B, H, M)), ("low", (B, H, M, 1))])
def test_bounds_of_the_wrong_shape_name_both_shapes(solver, which, shape):
    J, _ = _quadratic(torch.float32)
    bounds = {"low": -1.0, "high": 1.0, which: torch.full(shape, -1.0 if which == "low" else 1.0)}
    with pytest.raises(ValueError, match=rf"{which} has shape \({', '.join(map(str, shape))},?\).*"
                                         rf"\(B, H, m\) = \({B}, {H}, {M}\)"):
        optimize(J, torch.zeros(B, H, M), solver=solver, **bounds)


@pytest.mark.parametrize("shape", [(), (M,), (H, M), (B, 1, 1), (B, H, M), (1, H, 1)])
def test_bounds_that_broadcast_are_accepted(shape):
    J, t = _quadratic(torch.float64)
    one = torch.ones(shape, dtype=torch.float64)
    a, info = optimize(J, torch.zeros(B, H, M, dtype=torch.float64), low=-one, high=one, backward="none")
    assert info.converged.all() and torch.allclose(a, t.detach().expand_as(a), atol=1e-5)


# -- 4. NaN / inf in the initial actions ---------------------------------------------------------------

@pytest.mark.parametrize("solver", WITH_THESEUS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_init_starts_from_the_box_centre_and_is_flagged(solver, bad):
    J, t = _quadratic(torch.float32)
    init = torch.zeros(B, H, M)
    init[1, 2, 0] = bad
    init[3] = bad
    a, info = optimize(J, init, solver=solver, backward="none")
    replaced = torch.tensor([False, True, False, True])
    assert torch.equal(info.flagged(INIT_REPLACED), replaced)
    assert torch.isfinite(a).all()
    assert "init_replaced" in info.describe(1) and info.describe(0) == info.describe(2)
    if solver != "theseus":  # (the release's formulation is not solved to tolerance)
        assert info.converged.all() and torch.allclose(a, t.detach().expand_as(a), atol=1e-4)


@pytest.mark.parametrize("low,high,centre", [(-1.0, 1.0, 0.0), (0.0, 1.0, 0.5), (-3.0, -1.0, -2.0),
                                             (-float("inf"), float("inf"), 0.0), (0.5, float("inf"), 0.5),
                                             (-float("inf"), -2.0, -2.0)])
def test_the_box_centre_is_the_clamped_midpoint(low, high, centre):
    init = torch.full((2, H, M), float("nan"))
    init[0] = 0.25 * (max(low, -9.0) + min(high, 9.0))  # a finite sample is kept as given (projected)
    a, info = optimize(lambda A: -(A ** 2).sum((1, 2)), init, low=low, high=high, max_iters=0,
                       backward="none")
    assert torch.equal(a[1], torch.full((H, M), centre))
    assert torch.equal(a[0], init[0].clamp(low, high))
    assert info.flagged(INIT_REPLACED).tolist() == [False, True]


def test_nonfinite_init_with_unrolled_gradients_stays_finite():
    J, t = _quadratic(torch.float64)
    init = torch.zeros(B, H, M, dtype=torch.float64)
    init[0, 0, 0] = float("nan")
    a, info = optimize(J, init, backward="unroll")
    a.sum().backward()
    assert torch.isfinite(t.grad).all() and info.flagged(INIT_REPLACED)[0]


# -- 5. objectives that do not depend on the actions ---------------------------------------------------

_THETA = torch.tensor(0.7, requires_grad=True)
DETACHED = {
    "detached": lambda A: -((A.detach() - 0.3) ** 2).sum((1, 2)),
    "numpy": lambda A: torch.as_tensor(-((A.detach().numpy() - 0.3) ** 2).sum((1, 2))),
    "constant": lambda A: torch.zeros(A.shape[0], dtype=A.dtype),
    "parameter_only": lambda A: (_THETA * 2).expand(A.shape[0]).to(A.dtype),
}


@pytest.mark.parametrize("solver", WITH_THESEUS)
@pytest.mark.parametrize("kind", sorted(DETACHED))
def test_objective_without_action_gradient_is_flagged_not_converged(solver, kind):
    init = 0.1 * torch.arange(B * H * M, dtype=torch.float32).reshape(B, H, M) - 1.0  # partly outside
    a, info = optimize(DETACHED[kind], init, solver=solver)
    assert info.flagged(NO_ACTION_GRADIENT).all() and not info.converged.any()
    assert not info.flagged(NOT_CONVERGED).any() and info.failed.all()
    assert "no_action_gradient" in info.describe(0)
    # the initial actions (projected; the release's formulation never projects its iterate)
    assert torch.equal(a.detach(), init if solver == "theseus" else init.clamp(-1, 1))
    assert torch.isfinite(info.objective).all()  # J was evaluated fine: its value is reported
    if a.requires_grad:
        a.sum().backward()  # must not raise


# -- 6 and 7. badly scaled objectives --------------------------------------------------------------------

def _scaled_problem(dtype):
    g = torch.Generator().manual_seed(3)
    t = 1.6 * torch.rand(B, H, M, generator=g, dtype=torch.float64) - 0.8
    t[:, 0, 0] = 1.5  # that coordinate's optimum is outside the box: it ends held at its bound
    w = 0.5 + torch.rand(B, H, M, generator=g, dtype=torch.float64)
    init = torch.rand(B, H, M, generator=g, dtype=torch.float64) - 0.5
    t, w, init = t.to(dtype).requires_grad_(True), w.to(dtype), init.to(dtype)

    def J(A):  # not a quadratic: every solver iterates
        return -(w * (A - t) ** 2).sum((1, 2)) + 0.1 * torch.cos(3 * A).sum((1, 2))

    return J, init, t


SCALES = [1e-12, 1e-6, 1.0, 1e6, 1e10, 1e12]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("solver", SOLVERS)
def test_scaled_objective_has_the_same_argmax(dtype, solver):
    """optimize(c * J) = optimize(J) for c in 1e-12 .. 1e12: converged (not at the init for tiny c, not
    stuck for huge c), same actions, same implicit gradient, and one iteration count for every c
    outside the band where J keeps unit 1 (the solve of c * J there is the solve of J in J's unit)."""
    J, init, t = _scaled_problem(dtype)
    results = {}
    for c in SCALES:
        a, info = optimize(lambda A, c=c: c * J(A), init, solver=solver, max_iters=100)
        (a * torch.linspace(-1, 1, a.numel(), dtype=dtype).reshape(a.shape)).sum().backward()
        assert info.converged.all() and (info.status == 0).all(), (c, info)
        assert (info.iterations > 0).all(), c
        results[c] = a.detach(), info.iterations, t.grad.clone()
        t.grad = None
    a1, _, g1 = results[1.0]
    for c, (a, _, g) in results.items():
        assert (a - a1).abs().max() < 1e-4, c
        assert torch.allclose(g, g1, rtol=1e-3, atol=1e-3), c
    outside = [c for c in SCALES if not SCALE_BAND[0] <= c <= SCALE_BAND[1]]
    for c in outside:
        assert torch.equal(results[c][1], results[outside[0]][1]), c


def test_lbfgs_keeps_its_curvature_pairs_at_scale_1e10():
    # The absolute pair test s.y > 1e-10 y.y rejected every pair once J was scaled by 1e10: L-BFGS then
    # took gradient steps and stopped at max_iters 0.3 away from the maximum.
    J, init, _ = _scaled_problem(torch.float64)
    for c in (1e10, 1e12):
        layer = TrajOpt(backward="none", max_iters=100)
        a, info = layer(lambda A, c=c: c * J(A), init)
        assert info.converged.all() and info.iterations.max() <= 15, (c, info.iterations)


def test_objective_scale_is_one_within_the_band():
    """Well-scaled problems keep unit 1 exactly, so their iterations are those of the absolute rule."""
    lo, hi = SCALE_BAND
    J0 = torch.tensor([0.0, 1e-3, 0.5, 2.0, 1e4, 0.0, 0.0, 3e-6, 2e5, 0.0, float("nan")], dtype=torch.float64)
    g0 = torch.tensor([0.0, 0.0, 7e-4, 30.0, 1.0, lo, hi, 0.0, 0.0, 1e-9, 0.0], dtype=torch.float64)
    unit = objective_scale(J0, g0)
    want = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 3e-6, 2e5, 1e-9, 1.0]
    assert unit.tolist() == want
    assert np.all(np.isfinite(unit.numpy()))
