"""The fast path of the layer: lbfgs' sign-step start, its compact memory, the implicit backward at
non-converged points (the forward's memory as inverse Hessian, no re-evaluation of the objective),
the ftol stopping rule and latent_objective(batch_rewards=True)."""

from __future__ import annotations

import pytest
import torch
from test_gradients import HIGH, LOW, LatentProblem, _compare
from torch import nn

from difftop.trajopt import TrajOpt, latent_objective, optimize
from difftop.trajopt.info import IMPLICIT_INEXACT, NOT_CONVERGED
from difftop.trajopt.solvers.first_order import LBFGS

DT = torch.float64


def _two_loop(S, Y, valid, gamma, q):
    """Textbook two-loop recursion over the valid pairs, oldest first in S/Y (reference)."""
    B, M, _ = S.shape
    out = torch.empty_like(q)
    for b in range(B):
        pairs = [(S[b, i], Y[b, i]) for i in range(M) if valid[b, i]]
        r = q[b].clone()
        alphas = []
        for s, y in reversed(pairs):
            a = (s @ r) / (s @ y)
            r = r - a * y
            alphas.append(a)
        r = gamma[b] * r
        for (s, y), a in zip(pairs, reversed(alphas)):
            r = r + (a - (y @ r) / (s @ y)) * s
        out[b] = r
    return out


def test_compact_memory_equals_two_loop_recursion():
    gen = torch.Generator().manual_seed(0)
    B, M, n = 4, 6, 9
    A = torch.randn(B, n, n, generator=gen, dtype=DT)
    A = A @ A.transpose(1, 2) + torch.eye(n, dtype=DT)
    S = torch.randn(B, M, n, generator=gen, dtype=DT)
    Y = S @ A  # y = A s: positive curvature
    valid = torch.rand(B, M, generator=gen) < 0.7
    gamma = torch.rand(B, generator=gen, dtype=DT) + 0.5
    q = torch.randn(B, n, generator=gen, dtype=DT)
    mem = {"S": S, "Y": Y, "valid": valid, "gamma": gamma}
    ref = _two_loop(S, Y, valid, gamma, q)
    torch.testing.assert_close(LBFGS.apply_inverse(mem, q), ref, atol=0, rtol=1e-12)
    # Reduced space: the pairs restricted to the free variables.
    free = (torch.rand(B, n, generator=gen) < 0.6).to(DT)
    ref = _two_loop(S * free.unsqueeze(1), Y * free.unsqueeze(1), valid, gamma, q)
    torch.testing.assert_close(LBFGS.apply_inverse(mem, q, free), ref, atol=0, rtol=1e-12)


def _scales(A):
    """Linear coefficients from 0.1 to 100 in magnitude, alternating in sign."""
    n = A.shape[1] * A.shape[2]
    c = torch.logspace(-1, 2, n, dtype=A.dtype) * (-1.0) ** torch.arange(n)
    return c.view(1, A.shape[1], A.shape[2])


def _badly_scaled(A):
    """A weak concave term on top: the maximum is the corner sign(c) (c / 0.02 >= 5 > 1), and a
    gradient-scaled step barely moves the small-|c| coordinates."""
    return (_scales(A) * A).sum((1, 2)) - 0.01 * (A ** 2).sum((1, 2))


def test_sign_start_makes_fast_progress_on_a_badly_scaled_box():
    init = torch.zeros(2, 4, 2, dtype=DT)
    J_max = _badly_scaled(torch.sign(_scales(init)).expand_as(init))
    with torch.no_grad():
        _, fast = optimize(_badly_scaled, init, max_iters=4, backward="none")
        _, slow = optimize(_badly_scaled, init, max_iters=4, backward="none", sign_iters=0)
        _, done = optimize(_badly_scaled, init, max_iters=100, backward="none", tol=1e-10)
    assert done.converged.all()
    torch.testing.assert_close(done.objective, J_max, atol=1e-9, rtol=0)
    gap_fast = (J_max - fast.objective).max().item()
    gap_slow = (J_max - slow.objective).max().item()
    assert gap_fast < 0.25 * gap_slow, (gap_fast, gap_slow)


def test_unroll_through_lbfgs_takes_no_sign_step():
    # A sign step's derivative is 0: unrolled through sign steps only, the actions would carry no
    # gradient at all. Differentiated iterations therefore take quasi-Newton steps.
    c = torch.tensor([0.3, -0.2], dtype=DT, requires_grad=True)

    def J(A):
        return -((A - c) ** 2).sum((1, 2))

    a, info = optimize(J, torch.zeros(1, 2, 2, dtype=DT), backward="unroll", max_iters=3)
    assert a.grad_fn is not None
    a.sum().backward()
    assert torch.isfinite(c.grad).all() and c.grad.abs().min() > 0.1


def _counting(J):
    calls = {"n": 0}

    def f(A):
        calls["n"] += 1
        return J(A)

    return f, calls


def test_unconverged_implicit_uses_the_memory_without_reevaluating():
    # Nearly linear: every sign step is accepted and nothing converges in 3 iterations (0.25, 0.55,
    # 0.91 from 0). The backward reuses the graph of the last evaluation (max_iters + 1 objective
    # calls in all, none in backward) and needs no Hessian product.
    target = torch.tensor([0.6, -0.4], dtype=DT, requires_grad=True)

    def J(A):
        return (A * target).sum((1, 2)) - 1e-3 * (A ** 2).sum((1, 2))

    f, calls = _counting(J)
    a, info = optimize(f, torch.zeros(3, 2, 2, dtype=DT), max_iters=3)
    assert not info.converged.any() and info.flagged(IMPLICIT_INEXACT).all()
    assert info.flagged(NOT_CONVERGED).all()
    assert calls["n"] == 3 + 1
    a.sum().backward()
    assert calls["n"] == 3 + 1
    assert torch.isfinite(target.grad).all() and (target.grad > 0).all()


def _sample_grads(P, b, **kw):
    """Gradients of sample b's loss, and the info of the batch solve."""
    for p in P.parameters():
        p.grad = None
    a, info = optimize(P.objective(), P.init, low=LOW, high=HIGH, tol=1e-10, **kw)
    (a[b] * P.weights[b]).sum().backward()
    return {k: p.grad.clone() for k, p in P.checked().items()}, info


@pytest.mark.parametrize("unconverged", ["memory", "exact"])
def test_converged_samples_stay_exact_next_to_unconverged_ones(unconverged):
    # A batch cut short where some samples have converged and others not: the converged ones get
    # the exact implicit gradient (that of the fully converged solve, 1e-5) whatever the others do.
    P = LatentProblem(seed=0)
    for K in range(4, 30):
        _, info = _sample_grads(P, 0, max_iters=K)
        if 0 < info.converged.sum() < len(info.converged):
            break
    else:
        raise AssertionError("no iteration count leaves the batch partly converged")
    b = int(info.converged.nonzero()[0])
    got, info = _sample_grads(P, b, max_iters=K, implicit_unconverged=unconverged)
    inexact = ~info.converged if unconverged == "memory" else torch.zeros_like(info.converged)
    assert torch.equal(info.flagged(IMPLICIT_INEXACT), inexact)
    ref, full = _sample_grads(P, b, max_iters=500)
    assert full.converged.all()
    rel, _ = _compare(got, ref)
    assert rel < 1e-5, rel


def test_unconverged_gradient_of_a_sample_does_not_depend_on_the_batch():
    P = LatentProblem(seed=2)
    z0 = P.z0.detach()

    def grad_of(rows):
        z = z0[rows].clone().requires_grad_(True)
        J = latent_objective(z, P.dynamics, P.reward, gamma=0.9)
        a, info = optimize(J, P.init[rows], low=LOW, high=HIGH, max_iters=3)
        assert not info.converged.any()
        (a * P.weights[rows]).sum().backward()
        return z.grad

    both = grad_of([0, 1, 2])
    alone = grad_of([1])
    torch.testing.assert_close(both[1:2], alone, atol=1e-10, rtol=0)


def test_ftol_stops_once_the_objective_stops_improving():
    P = LatentProblem(seed=3)
    with torch.no_grad():
        _, full = optimize(P.objective(), P.init, low=LOW, high=HIGH, tol=1e-12, max_iters=200, ftol=0.0)
        # the plain rule (improvement over one iteration, no gradient test): it stops converging solves too
        _, early = optimize(P.objective(), P.init, low=LOW, high=HIGH, tol=1e-12, max_iters=200, ftol=1e-6,
                            ftol_window=1, ftol_grad=0.0)
    assert (early.iterations < full.iterations).all()
    assert (early.objective >= full.objective - 1e-5 * full.objective.abs().clamp(min=1)).all()
    assert early.flagged(NOT_CONVERGED).all()
    with pytest.raises(ValueError, match="ftol"):
        TrajOpt(ftol=-1.0)


def test_batch_rewards_same_values_and_gradients():
    gen = torch.Generator().manual_seed(4)
    dyn = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4)).to(DT)
    rew = nn.Sequential(nn.Linear(6, 8), nn.ELU(), nn.Linear(8, 1)).to(DT)
    z0 = torch.randn(3, 4, generator=gen, dtype=DT, requires_grad=True)
    A = torch.randn(3, 4, 2, generator=gen, dtype=DT)

    def dynamics(z, a):
        return dyn(torch.cat([z, a], -1))

    def reward(z, a):
        return rew(torch.cat([z, a], -1))

    for terminal in (None, reward):
        outs = []
        for batch in (False, True):
            J = latent_objective(z0, dynamics, reward, terminal, gamma=0.8, batch_rewards=batch)(A)
            outs.append((J, torch.autograd.grad(J.sum(), [z0, *rew.parameters()])))
        torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-13, rtol=0)
        for g0, g1 in zip(outs[0][1], outs[1][1]):
            torch.testing.assert_close(g0, g1, atol=1e-13, rtol=0)


@pytest.mark.parametrize("tensor", [False, True])
def test_bad_bounds_are_refused(tensor):
    def J(A):
        return -(A ** 2).sum((1, 2))

    def b(v):
        return torch.tensor(v, dtype=DT) if tensor else v

    init = torch.zeros(2, 1, 1, dtype=DT)
    with pytest.raises(ValueError, match="NaN"):
        optimize(J, init, low=b(float("nan")), high=b(1.0))
    with pytest.raises(ValueError, match="above"):
        optimize(J, init, low=b(1.0), high=b(-1.0))


@pytest.mark.parametrize("solver", ["newton", "lm"])
def test_second_order_solvers_use_their_hessian_when_unconverged(solver):
    # newton/lm end with the true Hessian: nothing cheaper to fall back on, so no IMPLICIT_INEXACT.
    P = LatentProblem(seed=0)
    a, info = optimize(P.objective(), P.init, low=LOW, high=HIGH, solver=solver, max_iters=1, tol=1e-12)
    assert not info.converged.any()
    assert not info.flagged(IMPLICIT_INEXACT).any()
    (a * P.weights).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in P.checked().values())
