"""Tests of the optional Theseus backend (official DiffTOP formulation).

Skipped as a whole when theseus-ai is not installed.
"""

from __future__ import annotations

import warnings

import pytest
import torch

th = pytest.importorskip("theseus")

from difftop.trajopt import theseus_backend as tb  # noqa: E402
from difftop.trajopt.info import (  # noqa: E402
    DAMPED,
    NONFINITE_INIT,
    NONFINITE_STEP,
    NOT_CONVERGED,
    TrajOptInfo,
)
from difftop.trajopt.theseus_backend import TheseusSolver, solve_theseus  # noqa: E402

H, M = 5, 6




def _mlp(i, h, o, dtype):
    return torch.nn.Sequential(
        torch.nn.Linear(i, h), torch.nn.ELU(), torch.nn.Linear(h, h), torch.nn.ELU(), torch.nn.Linear(h, o)
    ).to(dtype)


class LatentModel(torch.nn.Module):
    """TD-MPC-like latent rollout value: sum_t gamma^t R(z_t, a_t) + gamma^H Q(z_H, pi(z_H))."""

    def __init__(self, latent=50, hidden=32, m=M, dtype=torch.float32, scale=1.0):
        super().__init__()
        self.dyn = _mlp(latent + m, hidden, latent, dtype)
        self.rew = _mlp(latent + m, hidden, 1, dtype)
        self.q = _mlp(latent + m, hidden, 1, dtype)
        self.pi = _mlp(latent, hidden, m, dtype)
        self.scale = scale

    def value(self, z, a):
        G, disc = 0.0, 1.0
        for t in range(a.shape[1]):
            x = torch.cat([z, a[:, t]], -1)
            z, r = self.dyn(x), self.rew(x)
            G = G + disc * r
            disc *= 0.99
        G = G + disc * self.q(torch.cat([z, torch.tanh(self.pi(z))], -1))
        return self.scale * G.squeeze(-1)


def _problem(B, dtype, seed=0, scale=100.0, hidden=32):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = LatentModel(hidden=hidden, dtype=dtype, scale=scale)
    z = torch.randn(B, 50, dtype=dtype, generator=g).requires_grad_(True)
    init = (0.3 * torch.randn(B, H, M, dtype=dtype, generator=g)).clamp(-1, 1)
    return model, z, init


def _official_reference(model, z, init, backward="truncated"):
    """The official construction (plain AutoDiffCostFunction with z as aux var, stock Cholesky solver)."""
    B, Hh, m = init.shape
    dtype = init.dtype
    actions = th.Vector(tensor=init.reshape(B, -1).clone(), name="actions")
    zv = th.Variable(z, name="z")

    def err_fn(optim_vars, aux_vars):
        a = torch.clamp(optim_vars[0].tensor.view(-1, Hh, m), -1, 1)
        G = model.value(aux_vars[0].tensor, a).unsqueeze(1)
        return -G.nan_to_num_(0) + 1000

    cost = th.AutoDiffCostFunction(
        [actions], err_fn, 1, cost_weight=th.ScaleCostWeight(torch.ones(1, 1, dtype=dtype)), aux_vars=[zv]
    )
    objective = th.Objective()
    objective.to(dtype=dtype)
    objective.add(cost)
    opt = th.LevenbergMarquardt(objective, th.CholeskyDenseSolver, max_iterations=50, step_size=1e-3)
    layer = th.TheseusLayer(opt)
    layer.to(dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, _ = layer.forward(
            {"actions": init.reshape(B, -1), "z": z},
            optimizer_kwargs={
                "track_best_solution": True,
                "damping": 1e-3,
                "backward_mode": backward,
                "backward_num_iterations": 5,
            },
        )
    return out["actions"].view(B, Hh, m)


# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("B", [1, 4])
def test_shapes_and_info(B):
    model, z, init = _problem(B, torch.float32)
    a, info = solve_theseus(lambda A: model.value(z, A), init)
    assert a.shape == (B, H, M) and a.dtype == torch.float32
    assert isinstance(info, TrajOptInfo)
    for t in (info.iterations, info.converged, info.objective, info.grad_norm, info.status):
        assert t.shape == (B,)
    assert info.iterations.dtype == torch.int64 and info.status.dtype == torch.int64
    assert info.converged.dtype == torch.bool
    assert torch.isfinite(info.objective).all() and torch.isfinite(info.grad_norm).all()
    assert ((info.iterations >= 0) & (info.iterations <= 50)).all()
    assert info.solver == "theseus-lm" and info.backward == "truncated"
    assert torch.equal(info.converged, ~info.flagged(NOT_CONVERGED))


@pytest.mark.parametrize("backward", ["truncated", "unroll"])
def test_gradients_reach_closed_over_tensors(backward):
    model, z, init = _problem(3, torch.float64)
    a, _ = solve_theseus(lambda A: model.value(z, A), init, backward=backward)
    assert a.requires_grad
    loss = (a**2).sum()
    gz, gw = torch.autograd.grad(loss, [z, model.rew[0].weight])
    assert torch.isfinite(gz).all() and torch.isfinite(gw).all()
    assert gz.abs().sum() > 0 and gw.abs().sum() > 0


def test_implicit_mode_gives_finite_gradient():
    """Theseus' implicit mode: the final Gauss-Newton system of a single residual is singular, so
    Theseus falls back to one damped LM step (flagged IMPLICIT_DAMPED); its gradient is finite."""
    objective, c = _quadratic(3, torch.float64)
    a, info = solve_theseus(
        objective, torch.zeros(3, H, M, dtype=torch.float64), backward="implicit", **CONVERGING
    )
    assert (a - c).abs().max() < 1e-6
    (gc,) = torch.autograd.grad(a.sum(), c)
    assert torch.isfinite(gc).all() and gc.abs().sum() > 0


def test_backward_none_has_no_graph():
    model, z, init = _problem(2, torch.float32)
    a, info = solve_theseus(lambda A: model.value(z, A), init, backward="none")
    assert not a.requires_grad and a.grad_fn is None
    assert info.backward == "none"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_official_config_runs_on_mlp_latent_problem(dtype, scale):
    model, z, init = _problem(8, dtype, scale=scale)
    a, info = solve_theseus(lambda A: model.value(z, A), init)  # all official defaults
    assert a.dtype == dtype and torch.isfinite(a).all()
    assert not info.failed.any()
    assert torch.isfinite(info.objective).all()
    (a.sum()).backward()
    assert torch.isfinite(z.grad).all()


@pytest.mark.parametrize("B", [1, 3])
def test_matches_official_construction_exactly(B):
    """Same iterates and gradients as the official Theseus construction (float64)."""
    model, z, init = _problem(B, torch.float64, scale=100.0)
    a_ref = _official_reference(model, z, init)
    g_ref = torch.autograd.grad((a_ref**2).sum(), [z, *model.parameters()])
    a, _ = solve_theseus(lambda A: model.value(z, A), init)
    g = torch.autograd.grad((a**2).sum(), [z, *model.parameters()])
    assert (a - a_ref).abs().max() < 1e-9
    for x, y in zip(g, g_ref):
        assert torch.allclose(x, y, rtol=1e-6, atol=1e-9)


def test_official_reference_raises_where_backend_damps():
    """float32, batch 256, official settings, large value gradients: stock Theseus raises
    'not positive-definite'; the backend warns, flags DAMPED and returns finite actions."""
    B = 256
    g = torch.Generator().manual_seed(1)
    v = torch.randn(B, H, M, generator=g)
    w = torch.nn.Parameter(torch.tensor(300.0))

    def objective(A):  # |grad G| ~ 1e3: J^T J + 1e-3 I is indefinite after float32 rounding
        return w * (v * A).sum((1, 2)) - 0.5 * (A**2).sum((1, 2))

    init = torch.zeros(B, H, M)
    with pytest.raises(RuntimeError, match="positive-definite"):
        _official_reference(
            type("M", (), {"value": staticmethod(lambda z, A: objective(A))})(), init[:, 0], init
        )
    with pytest.warns(RuntimeWarning, match="DAMPED"):
        a, info = solve_theseus(objective, init)
    assert torch.isfinite(a).all()
    assert info.flagged(DAMPED).any()
    assert not info.failed.any()
    a.sum().backward()
    assert torch.isfinite(w.grad)
    with warnings.catch_warnings():  # the warning comes once per layer; the flag every time
        warnings.simplefilter("error")
        _, info = solve_theseus(objective, init)
    assert info.flagged(DAMPED).any()


def test_official_config_batch256_float32_mlp_does_not_raise():
    model, z, init = _problem(256, torch.float32, scale=3000.0, hidden=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no exception; a DAMPED warning is allowed
        warnings.filterwarnings("ignore", message=".*DAMPED.*", category=RuntimeWarning)
        a, info = solve_theseus(lambda A: model.value(z, A), init)
    assert a.shape == (256, H, M) and torch.isfinite(a).all()
    assert torch.isfinite(info.objective).all()
    a.mean().backward()
    assert torch.isfinite(z.grad).all()


def _quadratic(B, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = (torch.rand(B, H, M, generator=g, dtype=dtype) * 1.6 - 0.8).requires_grad_(True)  # inside the box
    w = torch.rand(B, H, M, generator=g, dtype=dtype) * 0.6 + 0.2  # curvature 2w in [0.4, 1.6]

    def objective(A):
        return -(w * (A - c) ** 2).sum((1, 2))

    return objective, c


# Converging configuration: with residual r = 1000 - J, the LM step is ~ step_size * r * grad /
# (damping + |grad|^2), i.e. gradient ascent with rate ~1 when damping = 1000 and step_size = 1.
# (The official step_size=1e-3/damping=1e-3 aims at raising J by ~1 per iteration and so hovers
# around an interior maximum instead of converging to it.)
# Theseus' relative stopping test on r^2 ~ 1e6 would stop ~1e-3 away from the optimum: disabled.
CONVERGING = dict(
    step_size=1.0,
    damping=1000.0,
    max_iters=100,
    clamp_in_cost=False,
    tol=1e-8,
    abs_err_tolerance=0.0,
    rel_err_tolerance=0.0,
)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_parity_with_analytic_solution(dtype):
    B = 4
    objective, c = _quadratic(B, dtype)
    init = torch.zeros(B, H, M, dtype=dtype)
    a, info = solve_theseus(objective, init, backward="unroll", **CONVERGING)
    tol = 1e-8 if dtype == torch.float64 else 1e-4
    assert (a - c).abs().max() < tol
    if dtype == torch.float64:
        assert info.converged.all()
        # unrolled derivative of the solution A* = c w.r.t. c is the identity
        (gc,) = torch.autograd.grad(a.sum(), c)
        assert torch.allclose(gc, torch.ones_like(gc), atol=1e-6)


@pytest.mark.parametrize("solver", ["newton", "lm"])
def test_parity_with_trajopt_optimize(solver):
    """Parity against the lead's ``difftop.trajopt.optimize`` (skipped while it is not exported)."""
    try:
        from difftop.trajopt import optimize
    except ImportError:
        pytest.skip("difftop.trajopt.optimize not available yet; analytic parity is tested above")
    B = 4
    objective, c = _quadratic(B, torch.float64, seed=3)
    init = torch.zeros(B, H, M, dtype=torch.float64)
    a_th, _ = solve_theseus(objective, init, backward="unroll", **CONVERGING)
    a_ref, _ = optimize(
        objective, init, low=-1.0, high=1.0, solver=solver, backward="implicit", max_iters=100
    )
    assert (a_th - a_ref).abs().max() < 1e-4
    assert (a_th - c).abs().max() < 1e-6
    # same derivative of the solution w.r.t. what the objective closes over (here: identity)
    g_th = torch.autograd.grad(a_th.sum(), c)[0]
    g_ref = torch.autograd.grad(a_ref.sum(), c)[0]
    assert (g_th - g_ref).abs().max() < 1e-4


def test_layer_is_built_once_and_reused(monkeypatch):
    monkeypatch.setattr(tb, "_CACHE", type(tb._CACHE)())
    built = []
    orig = TheseusSolver.__init__

    def counting_init(self, *args, **kwargs):
        built.append(args)
        orig(self, *args, **kwargs)

    monkeypatch.setattr(TheseusSolver, "__init__", counting_init)

    def objective(A):
        return -((A - 0.1) ** 2).sum((1, 2))

    init = torch.zeros(2, H, M)
    for _ in range(3):
        solve_theseus(objective, init, backward="none", max_iters=3)
    assert len(built) == 1
    solve_theseus(objective, init.double(), backward="none", max_iters=3)
    solve_theseus(objective, torch.zeros(3, H, M), backward="none", max_iters=3)
    assert len(built) == 3


def test_solver_class_direct_use():
    objective, c = _quadratic(2, torch.float64)
    solver = TheseusSolver(2, H, M, dtype=torch.float64, max_iters=100, step_size=1.0)
    kw = {k: v for k, v in CONVERGING.items() if k not in ("step_size", "max_iters")}
    kw["backward"] = "none"
    a1, _ = solver(objective, torch.zeros(2, H, M, dtype=torch.float64), **kw)
    a2, _ = solver(objective, torch.full((2, H, M), 0.5, dtype=torch.float64), **kw)
    assert (a1 - c).abs().max() < 1e-8 and (a2 - c).abs().max() < 1e-8
    assert solver.last_best_actions is not None and solver.last_best_actions.shape == (2, H, M)
    with pytest.raises(ValueError):
        solver(objective, torch.zeros(3, H, M, dtype=torch.float64))
    with pytest.raises(ValueError):
        solver(objective, torch.zeros(2, H, M))  # wrong dtype


def test_nonfinite_sample_is_flagged_and_left_at_init():
    B = 3
    objective, _ = _quadratic(B, torch.float64)

    nan_for_1 = torch.tensor([0.0, float("nan"), 0.0], dtype=torch.float64)

    def bad_objective(A):  # sample 1 evaluates to NaN (its gradient stays finite)
        return objective(A) + nan_for_1

    init = torch.full((B, H, M), 0.1, dtype=torch.float64)
    a, info = solve_theseus(bad_objective, init, backward="none", **CONVERGING)
    assert info.flagged(NONFINITE_INIT)[1] and not info.flagged(NONFINITE_INIT)[[0, 2]].any()
    assert not info.flagged(NONFINITE_STEP)[[0, 2]].any()
    assert torch.equal(a[1], init[1])
    assert torch.isfinite(a).all()


def test_objective_errors_are_not_swallowed():
    def broken(A):
        raise RuntimeError("bug in the objective")

    with pytest.raises(RuntimeError, match="bug in the objective"):
        solve_theseus(broken, torch.zeros(1, H, M))


def test_missing_theseus_gives_install_instructions(monkeypatch):
    monkeypatch.setattr(tb, "_th", None)
    monkeypatch.setattr(tb, "_import_error", ImportError("No module named 'theseus'"))
    monkeypatch.setattr(tb, "_CACHE", type(tb._CACHE)())
    with pytest.raises(ImportError, match="--no-build-isolation --no-deps theseus-ai==0.2.3"):
        solve_theseus(lambda A: -(A**2).sum((1, 2)), torch.zeros(1, H, M))
    assert tb.is_available() is False
