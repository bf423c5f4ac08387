"""Fuzz: 1,000 random box-constrained problems (10 batches of 100, a mix of kinds per batch).

Kinds: indefinite quadratics with quartic terms, NaN always, NaN / +inf / -inf on a region of
the box, a NaN gradient with a finite value (at a point, and on a region), and objectives scaled
by 1e8 and 1e-8. Every solver and every differentiating backward mode is run; the checks are the
layer's contract: no exception (forward or backward), actions finite and within the bounds,
samples whose objective is NaN at the init left there exactly and flagged, every sample either
converged or flagged, iteration counts within budget, finite gradients for the healthy samples.
"""

from __future__ import annotations

import pytest
import torch

from difftop.trajopt import optimize
from difftop.trajopt.info import NONFINITE_INIT, NONFINITE_STEP, NOT_CONVERGED

DT = torch.float64
N_BATCHES, PER_BATCH = 10, 100
H, M = 3, 2
N = H * M
MAX_ITERS, BACKWARD_ITERS = 30, 5
SOLVERS = ["lbfgs", "pgd", "newton", "lm"]
KINDS = ["indefinite", "nan_always", "nan_region", "pos_inf_region", "neg_inf_region", "nan_grad_point",
         "nan_grad_region", "huge", "tiny"]


def _config(k: int):
    """Batch k: its solver, backward mode and implicit linear solver."""
    backward = "implicit" if k < 7 else ("truncated" if k < 9 else "unroll")
    return SOLVERS[k % 4], backward, ["auto", "dense", "cg"][k % 3]


def _problem(k: int):
    gen = torch.Generator().manual_seed(1000 + k)
    B = PER_BATCH
    kind = torch.arange(B) % len(KINDS)
    kind = kind[torch.randperm(B, generator=gen)]
    # Indefinite quadratic forms: random eigenvectors, eigenvalues of both signs and mixed scales.
    Qr, _ = torch.linalg.qr(torch.randn(B, N, N, generator=gen, dtype=DT))
    lam = torch.randn(B, N, generator=gen, dtype=DT) * torch.logspace(-2, 1, N, dtype=DT)
    Q = (Qr * lam.unsqueeze(-2)) @ Qr.transpose(-1, -2)
    Q = (0.5 * (Q + Q.transpose(-1, -2))).requires_grad_(True)
    b = torch.randn(B, N, generator=gen, dtype=DT).requires_grad_(True)
    quartic = (0.1 + torch.rand(B, generator=gen, dtype=DT)).requires_grad_(True)
    scale = torch.ones(B, dtype=DT)
    scale[kind == KINDS.index("huge")] = 1e8
    scale[kind == KINDS.index("tiny")] = 1e-8
    r = 0.6 * torch.rand(B, generator=gen, dtype=DT) - 0.3  # where the bad regions start

    if k % 2 == 0:
        low, high = -1.0, 1.0
        lo = torch.full((B, H, M), -1.0, dtype=DT)
        hi = torch.full((B, H, M), 1.0, dtype=DT)
    else:  # per-sample tensor bounds
        lo = -0.2 - 1.3 * torch.rand(B, H, M, generator=gen, dtype=DT)
        hi = 0.2 + 1.3 * torch.rand(B, H, M, generator=gen, dtype=DT)
        low, high = lo, hi
    init = lo + (hi - lo) * torch.rand(B, H, M, generator=gen, dtype=DT)
    # Some inits start on a bound, some outside the box (the layer projects them).
    on_bound = torch.rand(B, H, M, generator=gen) < 0.1
    init = torch.where(on_bound, hi, init)
    outside = (torch.rand(B, generator=gen) < 0.1) & (kind != KINDS.index("nan_always"))
    init[outside] = init[outside] * 3.0
    init[kind == KINDS.index("nan_grad_point"), 0, :] = 0.0  # sqrt(|a_0|^2) at 0: value 0, grad NaN

    def base(x, idx):
        quad = -0.5 * torch.einsum("bi,bij,bj->b", x, Q[idx], x) + (b[idx] * x).sum(-1)
        return quad - quartic[idx] * (x ** 4).sum(-1)

    def objective(A):
        x = A.reshape(B, N)
        J = torch.zeros(B, dtype=A.dtype)
        for c, name in enumerate(KINDS):
            idx = (kind == c).nonzero().squeeze(-1)
            xi = x[idx]
            f = base(xi, idx)
            if name == "nan_always":
                f = f * float("nan")
            elif name == "nan_region":
                f = torch.where(xi[:, 0] > r[idx], torch.full_like(f, float("nan")), f)
            elif name == "pos_inf_region":
                f = torch.where(xi[:, 1] < r[idx], torch.full_like(f, float("inf")), f)
            elif name == "neg_inf_region":
                f = torch.where(xi[:, 0] + xi[:, 1] > r[idx] + 0.5, torch.full_like(f, -float("inf")), f)
            elif name == "nan_grad_point":
                f = f - torch.sqrt((xi[:, :M] ** 2).sum(-1))
            elif name == "nan_grad_region":  # finite value everywhere, NaN gradient where x_0 <= r
                f = f + 0.1 * torch.sqrt(torch.relu(xi[:, 0] - r[idx]))
            J = J.index_put((idx,), f * scale[idx])
        return J

    params = {"Q": Q, "b": b, "quartic": quartic}
    return objective, init, low, high, lo, hi, kind, params


@pytest.mark.parametrize("k", range(N_BATCHES))
def test_fuzz_batch(k):
    solver, backward, implicit_solver = _config(k)
    objective, init, low, high, lo, hi, kind, params = _problem(k)
    a, info = optimize(objective, init, low=low, high=high, solver=solver, backward=backward,
                       implicit_solver=implicit_solver, max_iters=MAX_ITERS, backward_iters=BACKWARD_ITERS)
    w = torch.randn(a.shape, generator=torch.Generator().manual_seed(k), dtype=DT)
    (a * w).sum().backward()  # must not raise

    x0 = torch.maximum(torch.minimum(init, hi), lo)
    assert a.shape == init.shape and torch.isfinite(a).all()
    assert ((a >= lo) & (a <= hi)).all()

    budget = MAX_ITERS + (BACKWARD_ITERS if backward == "truncated" else 0)
    assert (info.iterations >= 0).all() and (info.iterations <= budget).all()

    flagged = info.flagged(NOT_CONVERGED | NONFINITE_INIT | NONFINITE_STEP)
    assert (info.converged | flagged).all(), [info.describe(i) for i in range(len(kind))]

    at_init = info.flagged(NONFINITE_INIT)
    nan_always = kind == KINDS.index("nan_always")
    nan_grad_point = kind == KINDS.index("nan_grad_point")
    assert at_init[nan_always].all() and at_init[nan_grad_point].all()
    # Samples with a non-finite value or gradient at the init stay exactly there, do not iterate,
    # and report NaN objective / grad_norm; they are never "converged".
    assert torch.equal(a[at_init].detach(), x0[at_init])
    assert (info.iterations[at_init] == 0).all() and not info.converged[at_init].any()
    assert torch.isnan(info.objective[at_init]).all() and torch.isnan(info.grad_norm[at_init]).all()
    assert info.failed[at_init].all()
    # Everything else has a finite objective (+inf is never accepted as an improvement).
    assert torch.isfinite(info.objective[~at_init]).all()
    assert torch.isfinite(info.grad_norm[~at_init]).all()
    # Smooth, finite kinds are not flagged as failures.
    healthy = sum(kind == KINDS.index(n) for n in ("indefinite", "huge", "tiny")).bool()
    assert not info.flagged(NONFINITE_INIT | NONFINITE_STEP)[healthy].any()
    # Objectives scaled by 1e-8 are solved in their own unit (issue 28), not "converged" at once because
    # |grad| ~ 1e-8 < tol * max(1, |J|): every one of them iterates.
    assert (info.iterations[kind == KINDS.index("tiny")] > 0).all()

    # Gradients reach the per-sample parameters and are finite for every sample whose objective
    # is finite around its result (a NaN sample's own rows may carry 0 * NaN).
    for name, p in params.items():
        assert p.grad is not None, name
        rows = p.grad.reshape(len(kind), -1)[~info.failed & healthy]
        assert torch.isfinite(rows).all(), name
