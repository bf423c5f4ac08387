"""Compaction (solver option `compact`): once enough samples of a batch have stopped, the graph-free
iterations evaluate and update only the running ones. A sample's iterations must not change.

Two kinds of check. On a row-wise objective without matrix products (every op elementwise or a per-row
reduction, so a row's arithmetic is the same at any batch size) compaction is exact: actions, flags,
iteration counts, objectives and the solver memory equal the full-batch path's bit for bit, for every
solver. On the family's latent objectives (matrix products, whose rounding depends on the batch size),
the results agree to float tolerance and the gradients reaching the model too. Each test also checks
that compaction happened (the objective was called on fewer rows), so none can pass by never compacting.
"""

from __future__ import annotations

import pytest
import torch

from difftop.bench.family import build, draw
from difftop.trajopt import TrajOpt
from difftop.trajopt.box import Box
from difftop.trajopt.evaluate import Problem
from difftop.trajopt.solvers import make_solver, run_solver


class RowObjective:
    """A non-concave row-wise objective with per-sample centres and scales (samples converge at very
    different iterations), restrictable to rows; records the batch size of every call."""

    def __init__(self, B: int, H: int, m: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.c = 1.6 * torch.rand(B, H, m, generator=g, dtype=torch.float64) - 0.8
        self.s = torch.exp(3 * torch.rand(B, 1, 1, generator=g, dtype=torch.float64) - 1.5)
        self.f = 1 + 4 * torch.rand(B, 1, 1, generator=g, dtype=torch.float64)
        self.calls: list[int] = []

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        return self._eval(a, self.c, self.s, self.f)

    def _eval(self, a, c, s, f):
        self.calls.append(a.shape[0])
        d = a - c
        val = -s * d.pow(2) + 0.05 * torch.cos(f * a) - 0.02 * d.pow(4)
        return val.sum((1, 2))

    def rows(self, idx: torch.Tensor):
        c, s, f = self.c[idx], self.s[idx], self.f[idx]
        return lambda a: self._eval(a, c, s, f)


def _run(solver_name: str, compact: int, B=40, H=3, m=4, **opts):
    obj = RowObjective(B, H, m)
    x0 = torch.zeros(B, H * m, dtype=torch.float64)
    solver = make_solver(solver_name, compact=compact, **opts)
    prob = Problem(obj, torch.Size((B, H, m)))
    box = Box(-1.0, 1.0, prob.shape, x0.dtype, x0.device)
    res = run_solver(solver, prob, box, x0, max_iters=60, tol=1e-7, ftol=3e-2)
    return res, obj.calls


def _flat(extra: dict) -> list:
    out = []
    for k in sorted(extra):
        v = extra[k]
        out += _flat(v) if isinstance(v, dict) else [(k, v)]
    return out


@pytest.mark.parametrize("solver", ["lbfgs", "pgd", "newton", "lm"])
def test_compaction_is_exact_on_a_rowwise_objective(solver):
    full, full_calls = _run(solver, compact=0)
    comp, comp_calls = _run(solver, compact=4)
    assert set(full_calls) == {40}
    assert min(comp_calls) < 40, "compaction never happened: the test would compare nothing"
    assert sum(comp_calls) < sum(full_calls)
    assert torch.equal(full.x, comp.x)
    for field in ("J", "g", "iterations", "status", "converged", "grad_norm"):
        assert torch.equal(getattr(full, field), getattr(comp, field)), field
    if full.H is not None:
        assert torch.equal(full.H, comp.H)
    for (ka, va), (kb, vb) in zip(_flat(full.extra), _flat(comp.extra)):
        assert ka == kb
        # the batched path clears a stopped sample's retry flag (it "tried" nothing); compaction leaves it
        if ka != "retry":
            assert torch.equal(va, vb) if isinstance(va, torch.Tensor) else va == vb, ka


def test_compaction_threshold():
    """compact=k compacts only once at least k samples have stopped; compact=0 never."""
    _, calls = _run("lbfgs", compact=39)
    assert all(c in (40, 1) for c in calls)
    _, calls = _run("lbfgs", compact=41)  # more than the batch: never
    assert set(calls) == {40}


def test_objective_without_rows_is_not_compacted():
    obj = RowObjective(40, 3, 4)
    calls = []

    def plain(a):
        calls.append(a.shape[0])
        return obj(a)

    x, info = TrajOpt(compact=1)(plain, torch.zeros(40, 3, 4, dtype=torch.float64))
    assert set(calls) == {40} and info.iterations.max() > 1


FAMILY = draw("compact", 3, seed=5, horizons=(2, 6), action_dims=(3, 9), head_gains=[0.5, 2.0],
              q_taus=[0.0, 0.05])


@pytest.mark.parametrize("spec", FAMILY, ids=lambda s: s.name)
def test_compaction_matches_full_batch_on_latent_objectives(spec):
    """Solve + implicit backward on a latent objective (matrix products): same actions, objectives and
    parameter gradients to float tolerance as the full-batch path, with the objective called on fewer rows."""
    P = build(spec, 48, latent_dim=16, mlp_dim=32, dtype=torch.float64)
    sizes: list[int] = []
    dyn = P.model.dynamics_fn  # what the objective calls: with autograd, and taped (graph-free)

    class Counted:
        def __call__(self, z, a):
            sizes.append(z.shape[0])
            return dyn(z, a)

        def taped(self, z, a):
            sizes.append(z.shape[0])
            return dyn.taped(z, a)

        vjp = staticmethod(dyn.vjp)

    P.model.dynamics_fn = Counted()
    w = torch.linspace(-1, 1, spec.action_dim, dtype=torch.float64)
    out = {}
    for compact in (0, 8):
        sizes.clear()
        P.model.zero_grad(set_to_none=True)
        z0 = P.model.h(P.obs)
        a, info = TrajOpt(compact=compact)(P.objective(z0), P.init(z0))
        (a[:, 0] * w).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in P.model.parameters() if p.grad is not None])
        out[compact] = (a.detach(), info, grads, min(sizes) if sizes else None)
    (a0, i0, g0, _), (a1, i1, g1, smallest) = out[0], out[8]
    if spec.horizon > 1:
        assert smallest is not None and smallest < 48, "compaction never happened"
    assert torch.allclose(a0, a1, atol=1e-9)
    assert torch.allclose(i0.objective, i1.objective, rtol=1e-10, atol=1e-10)
    assert torch.equal(i0.iterations, i1.iterations)
    assert torch.allclose(g0, g1, rtol=1e-7, atol=1e-9)


def test_truncated_backward_is_not_compacted():
    """Truncated iterations read the memory of stopped samples as the batched path left it: no compaction."""
    obj = RowObjective(40, 3, 4)
    theta = torch.zeros((), dtype=torch.float64, requires_grad=True)

    def f(a):
        return obj(a) + theta * a.sum((1, 2))

    def rows(idx):
        g = obj.rows(idx)
        return lambda a: g(a) + theta * a.sum((1, 2))

    f.rows = rows
    x, _ = TrajOpt(backward="truncated", compact=1)(f, torch.zeros(40, 3, 4, dtype=torch.float64))
    assert set(obj.calls) == {40}
    x.sum().backward()
    assert theta.grad is not None and torch.isfinite(theta.grad)


@pytest.mark.parametrize("bounds", ["tanh", "sigmoid", "barrier"])
def test_compaction_through_the_bounds_transformations(bounds):
    """The smooth bounds wrap the objective; their wrapper keeps rows(), and compaction stays exact."""
    out = {}
    for compact in (0, 4):
        obj = RowObjective(40, 3, 4)
        x, info = TrajOpt(bounds=bounds, compact=compact, backward="none")(obj, torch.zeros(40, 3, 4,
                                                                                      dtype=torch.float64))
        out[compact] = (x, info, obj.calls)
    (x0, i0, c0), (x1, i1, c1) = out[0], out[4]
    assert set(c0) == {40} and min(c1) < 40
    # not bit-equal on every CPU: with AVX-512, sigmoid of a 40-row and of a 13-row tensor round some
    # entries differently (the vectorised loop's tail), 1e-16 apart
    assert torch.allclose(x0, x1, rtol=0, atol=1e-12) and torch.equal(i0.iterations, i1.iterations)
