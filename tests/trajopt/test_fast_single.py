"""The single-sample L-BFGS path (batch 1, solver option fast_single, the default) is the batched path,
bit for bit.

run_solver's single-sample loop and LBFGS.step_single replace the per-sample masks of the batched
iteration by Python branches; every value is meant to come from the same ops on the same tensors. So the
comparison here is exact (torch.equal), not to a tolerance: actions, the gradient reaching every model
parameter (through the implicit backward, which reads the L-BFGS memory of unconverged solves), iteration
counts, flags, and the solver's memory. Problems: difftop.bench.family specs at small network sizes (its
shapes, warm starts, gains, hard/smooth min), plus objectives that force rejected trials, stalls and
non-finite trials, the branches the family rarely takes.
"""

from __future__ import annotations

import pytest
import torch

from difftop.bench.family import build, draw
from difftop.trajopt import TrajOpt
from difftop.trajopt.box import Box
from difftop.trajopt.evaluate import Problem
from difftop.trajopt.solvers import LBFGS, run_solver

FAMILY = draw("single", 6, seed=17, horizons=(1, 8), action_dims=(2, 14), head_gains=[0.3, 1.0, 3.0],
              q_taus=[0.0, 0.05])


def _solve_and_grad(P, layer):
    P.model.zero_grad(set_to_none=True)
    z0 = P.model.h(P.obs)
    actions, info = layer(P.objective(z0), P.init(z0))
    w = torch.linspace(-1, 1, actions.shape[-1], dtype=actions.dtype)
    (actions[:, 0] * w).sum().backward()
    grads = torch.cat([p.grad.flatten() for p in P.model.parameters() if p.grad is not None])
    return actions.detach(), info, grads


def _assert_same(a, b):
    (a_x, a_info, a_g), (b_x, b_info, b_g) = a, b
    assert torch.equal(a_x, b_x)
    assert torch.equal(a_g, b_g)
    for field in ("iterations", "status", "converged", "objective"):
        assert torch.equal(getattr(a_info, field), getattr(b_info, field)), field


@pytest.fixture
def single_calls(monkeypatch):
    """Records the (accepted, stalled, nonfinite) outcome of every LBFGS.step_single call, so that a
    comparison cannot silently be batched vs batched and a test can check which branches it took."""
    calls: list = []
    inner = LBFGS.step_single

    def counted(self, *a, **k):
        out = inner(self, *a, **k)
        calls.append(out[1:])
        return out

    monkeypatch.setattr(LBFGS, "step_single", counted)
    return calls


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("spec", FAMILY, ids=lambda s: f"{s.name}-H{s.horizon}m{s.action_dim}-{s.init}")
def test_single_path_is_batched_path_bit_for_bit(spec, dtype, single_calls):
    P = build(spec, 1, latent_dim=12, mlp_dim=24, dtype=dtype)
    ref = _solve_and_grad(P, TrajOpt(fast_single=False))
    assert not single_calls
    fast = _solve_and_grad(P, TrajOpt())
    assert len(single_calls) == int(fast[1].iterations.max()) > 0
    _assert_same(fast, ref)


@pytest.mark.parametrize("options", [{"backward": "truncated"}, {"ftol": 0.0, "max_iters": 7},
                                     {"sign_iters": 0, "memory": 2}, {"implicit_unconverged": "exact"}],
                         ids=["truncated", "max_iters", "no-sign-memory2", "exact"])
def test_single_path_other_settings(options, single_calls):
    P = build(FAMILY[2], 1, latent_dim=12, mlp_dim=24, dtype=torch.float64)
    ref = _solve_and_grad(P, TrajOpt(fast_single=False, **options))
    fast = _solve_and_grad(P, TrajOpt(**options))
    assert single_calls
    _assert_same(fast, ref)


def _run(objective, x0, fast: bool, **kw):
    """run_solver on a (1, n) problem: the result, the solver memory and the objective trace."""
    solver = LBFGS(fast_single=fast, **kw.pop("solver", {}))
    shape = (1, 1, x0.shape[1])
    prob = Problem(objective, torch.Size(shape))
    rows: list = []
    res = run_solver(solver, prob, Box(-1.0, 1.0, shape, x0.dtype, x0.device), x0, trace=rows, **kw)
    return res, rows


def _assert_same_run(a, b):
    (ra, ta), (rb, tb) = a, b
    for f in ("x", "J", "g", "iterations", "converged", "status", "grad_norm"):
        assert torch.equal(getattr(ra, f), getattr(rb, f)), f
    for k in ("S", "Y", "valid", "gamma", "D", "hold", "d", "alpha", "retry", "nrej"):
        assert torch.equal(ra.extra[k], rb.extra[k]), k
    assert ra.extra["k"] == rb.extra["k"]
    assert len(ta) == len(tb) and all(torch.equal(x, y) for x, y in zip(ta[:-1], tb[:-1]))
    assert all(torch.equal(x, y) for x, y in zip(ta[-1], tb[-1]))


def test_rejections_stalls_and_nonfinite_trials_match(single_calls):
    """An oscillating objective rejects many trials (quadratic shortening, nrej), a NaN region makes trials
    non-finite (NONFINITE_STEP), and a tiny max_backtracks turns repeated rejections into a stall."""
    n = 6
    c = torch.linspace(0.9, -0.7, n, dtype=torch.float64)  # c[0] in the NaN region: trials run into it

    def wavy(a):
        x = a.reshape(1, n)
        J = -((x - c) ** 2).sum(-1) + 0.1 * torch.sin(9 * x).sum(-1)
        return torch.where(x[:, 0] > 0.35, torch.full_like(J, float("nan")), J)

    x0 = torch.full((1, n), 0.2, dtype=torch.float64)
    for kw in ({"max_iters": 40, "tol": 1e-10}, {"max_iters": 30, "tol": 1e-10, "ftol": 3e-2},
               {"max_iters": 40, "tol": 1e-10, "solver": {"max_backtracks": 2}}):
        fast = _run(wavy, x0, True, **kw)
        ref = _run(wavy, x0, False, **kw)
        _assert_same_run(fast, ref)
    # the branches this test is for were taken on the single-sample path: a rejected trial, a stall, a NaN
    accepted, stalled, nonfinite = (any(c[i] for c in single_calls) for i in range(3))
    assert not all(c[0] for c in single_calls) and stalled and nonfinite
