"""Properties of `optimize` that hold for every solver: bounds, per-sample independence,
determinism, grad modes, degenerate (flat / kinked) objectives, float32 batches, the module form."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from difftop.trajopt import TrajOpt, latent_objective, optimize, smooth_min
from difftop.trajopt.info import IMPLICIT_DAMPED, NONFINITE_INIT, NOT_CONVERGED

SOLVERS = ["lbfgs", "pgd", "newton", "lm"]
DT = torch.float64
LAT, M, T = 4, 2, 3


def _mlp(i, o, gen, dtype=DT, hidden=8, zero_last=False):
    net = nn.Sequential(nn.Linear(i, hidden), nn.ELU(), nn.Linear(hidden, o))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) / hidden ** 0.5)
        if zero_last:
            net[2].weight.zero_()
            net[2].bias.zero_()
    return net.to(dtype)


class Latent(nn.Module):
    """A batch of latent problems; sample b has its own z0[b] and objective scale[b]."""

    def __init__(self, z0, scale=None, seed=0, dtype=DT, hidden=8, zero_last=False, concave=1.0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.dyn = _mlp(LAT + M, LAT, gen, dtype, hidden)
        self.rew = _mlp(LAT + M, 1, gen, dtype, hidden, zero_last)
        self.z0 = z0.to(dtype)
        self.scale = torch.ones(z0.shape[0], dtype=dtype) if scale is None else scale.to(dtype)
        self.concave = concave

    def objective(self):
        def dynamics(z, a):
            return torch.tanh(z + self.dyn(torch.cat([z, a], -1)))

        def reward(z, a):
            return self.rew(torch.cat([z, a], -1)).squeeze(-1) - self.concave * (a ** 2).sum(-1)

        J = latent_objective(self.z0, dynamics, reward, gamma=0.9)
        return lambda A: self.scale * J(A)


def _z0(b, seed=1, dtype=DT):
    return torch.randn(b, LAT, generator=torch.Generator().manual_seed(seed)).to(dtype)


# --- bounds ------------------------------------------------------------------------------------

B_BOUNDS = 4


def _far_objective(A):
    """Coupled concave objective whose unconstrained maximum (~ +-5) is far outside every box."""
    target = torch.tensor([5.0, -5.0], dtype=A.dtype)
    coupling = (A[:, 1:] * A[:, :-1]).sum((1, 2))
    return -((A - target) ** 2).sum((1, 2)) + 0.3 * coupling + torch.sin(3 * A).sum((1, 2))


_BOUNDS = {
    "scalar": (-0.5, 0.75),
    "per_dim": (torch.tensor([-0.5, -0.25], dtype=DT), torch.tensor([0.25, 1.0], dtype=DT)),
    "per_sample": (-torch.rand(B_BOUNDS, T, M, generator=torch.Generator().manual_seed(3), dtype=DT),
                   torch.rand(B_BOUNDS, T, M, generator=torch.Generator().manual_seed(4), dtype=DT)),
}


@pytest.mark.parametrize("kind", list(_BOUNDS))
@pytest.mark.parametrize("solver", SOLVERS)
def test_bounds_always_respected(solver, kind):
    low, high = _BOUNDS[kind]
    lo = torch.broadcast_to(torch.as_tensor(low, dtype=DT), (B_BOUNDS, T, M))
    hi = torch.broadcast_to(torch.as_tensor(high, dtype=DT), (B_BOUNDS, T, M))
    init = 3.0 * torch.randn(B_BOUNDS, T, M, generator=torch.Generator().manual_seed(0), dtype=DT)
    for backward in ("implicit", "unroll", "none"):
        a, info = optimize(_far_objective, init, low=low, high=high, solver=solver, backward=backward,
                           max_iters=100)
        assert ((a >= lo) & (a <= hi)).all(), (backward, (a - hi).max(), (lo - a).max())
        assert info.converged.all(), (backward, info)
        # The pull towards (+5, -5) dominates: coordinate 0 ends at its upper, 1 at its lower bound.
        assert torch.equal(a[..., 0], hi[..., 0]) and torch.equal(a[..., 1], lo[..., 1])


# --- independence of samples -------------------------------------------------------------------

def _mixed_batch():
    """5 very different problems; sample 2 is the reference, sample 4 is NaN everywhere."""
    z0 = torch.cat([10 * _z0(1, 5), 0.01 * _z0(1, 6), _z0(1, 7), -3 * _z0(1, 8), _z0(1, 9)])
    z0[4] = float("nan")
    scale = torch.tensor([1e3, 1e-3, 1.0, 20.0, 1.0], dtype=DT)
    init = torch.randn(5, T, M, generator=torch.Generator().manual_seed(10), dtype=DT).clamp(-0.9, 0.9)
    init[0] = 0.0
    return z0, scale, init


@pytest.mark.parametrize("solver", SOLVERS)
def test_sample_result_does_not_depend_on_the_batch(solver):
    z0, scale, init = _mixed_batch()
    batch = Latent(z0, scale)
    a, info = optimize(batch.objective(), init, solver=solver, backward="none", tol=1e-9, max_iters=200)
    alone = Latent(z0[2:3], scale[2:3])
    a1, info1 = optimize(alone.objective(), init[2:3], solver=solver, backward="none", tol=1e-9,
                         max_iters=200)
    assert info1.converged.all()
    torch.testing.assert_close(a[2:3], a1, atol=1e-9, rtol=0)
    assert info.iterations[2] == info1.iterations[0]
    assert info.converged[2] and info.status[2] == info1.status[0]
    # The NaN sample is left exactly at its init and flagged; its neighbours are unaffected.
    assert torch.equal(a[4], init[4]) and info.flagged(NONFINITE_INIT)[4]
    assert info.flagged(NONFINITE_INIT).sum() == 1 and torch.isfinite(a).all()


# --- determinism, grad modes, info -------------------------------------------------------------

@pytest.mark.parametrize("backward", ["implicit", "unroll", "truncated"])
@pytest.mark.parametrize("solver", SOLVERS)
def test_same_seed_same_result_bitwise(solver, backward):
    def run():
        torch.manual_seed(123)
        P = Latent(torch.randn(6, LAT, dtype=DT), seed=2)
        z = P.z0.requires_grad_(True)
        init = 0.5 * torch.rand(6, T, M, dtype=DT)
        a, info = optimize(P.objective(), init, solver=solver, backward=backward, max_iters=30)
        a.square().sum().backward()
        return a.detach(), z.grad, info

    (a1, g1, i1), (a2, g2, i2) = run(), run()
    assert torch.equal(a1, a2) and torch.equal(g1, g2)
    for f in ("iterations", "converged", "status"):
        assert torch.equal(getattr(i1, f), getattr(i2, f))
    torch.testing.assert_close(i1.objective, i2.objective, atol=0, rtol=0)


@pytest.mark.parametrize("solver", SOLVERS)
def test_no_grad_mode(solver):
    P = Latent(_z0(5).requires_grad_(True))
    with torch.no_grad():
        a, info = optimize(P.objective(), torch.zeros(5, T, M, dtype=DT), solver=solver)
    assert a.grad_fn is None and not a.requires_grad
    assert info.converged.all(), info
    # Same actions as with a graph (the graph never changes the forward solve).
    a2, _ = optimize(P.objective(), torch.zeros(5, T, M, dtype=DT), solver=solver)
    assert a2.requires_grad and torch.equal(a, a2.detach())


def test_inference_mode_is_refused_clearly():
    # Autograd records nothing under inference mode, so the solvers cannot see the gradient of J
    # with respect to the actions; the layer raises instead of returning the init as "converged".
    P = Latent(_z0(3))
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        optimize(P.objective(), torch.zeros(3, T, M, dtype=DT))


@pytest.mark.parametrize("solver", SOLVERS)
def test_backward_none_and_info_shapes(solver):
    B = 5
    P = Latent(_z0(B).requires_grad_(True))
    a, info = optimize(P.objective(), torch.zeros(B, T, M, dtype=DT), solver=solver, backward="none")
    assert a.grad_fn is None and not a.requires_grad and a.shape == (B, T, M)
    for f in ("iterations", "converged", "objective", "grad_norm", "status"):
        assert getattr(info, f).shape == (B,), f
    assert info.iterations.dtype == torch.int64 and info.status.dtype == torch.int64
    assert info.converged.dtype == torch.bool
    assert info.backward == "none" and info.solver == solver
    assert set(info.summary()) >= {"iterations", "converged", "not_converged"}


@pytest.mark.parametrize("implicit_solver", ["dense", "cg"])
@pytest.mark.parametrize("solver", SOLVERS)
def test_flat_objective(solver, implicit_solver):
    # Zero-initialised last layer: J(A) is identically 0 but still depends on the parameters, its
    # Hessian is 0, and the implicit system is singular: it must be damped, not produce NaN.
    P = Latent(_z0(4), concave=0.0, zero_last=True)
    init = 0.5 * torch.rand(4, T, M, generator=torch.Generator().manual_seed(0), dtype=DT)
    a, info = optimize(P.objective(), init, solver=solver, implicit_solver=implicit_solver)
    assert torch.equal(a.detach(), init)
    assert info.converged.all() and (info.iterations == 0).all()
    assert (info.grad_norm == 0).all() and (info.objective == 0).all()
    (a * torch.randn(a.shape, generator=torch.Generator().manual_seed(1), dtype=DT)).sum().backward()
    grads = [p.grad for p in P.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # The damped system is (-H + 1 * I) = I: the gradient of one unit gradient step, flagged.
    assert info.flagged(IMPLICIT_DAMPED).all()
    assert P.rew[2].weight.grad.abs().max() > 0


def test_smooth_min_removes_the_kink():
    # max_a min(Q1, Q2) with linear Q's of opposite slopes sits on the kink Q1 = Q2, where the
    # gradient jumps and Newton cannot meet a gradient tolerance; the smooth minimum is smooth there.
    B = 8
    gen = torch.Generator().manual_seed(0)
    w1 = torch.randn(B, 1, M, generator=gen, dtype=DT)
    w2 = -w1 + 0.1 * torch.randn(B, 1, M, generator=gen, dtype=DT)

    def make(tau):
        def J(A):
            q1 = (w1 * A).sum((1, 2)) - 0.05 * (A ** 2).sum((1, 2))
            q2 = (w2 * A).sum((1, 2)) - 0.05 * (A ** 2).sum((1, 2))
            return smooth_min(q1, q2, tau=tau)
        return J

    init = 0.5 * torch.rand(B, T, M, generator=gen, dtype=DT)
    a, info = optimize(make(0.05), init, solver="newton", tol=1e-8, max_iters=100)
    assert info.converged.all(), info
    assert torch.isfinite(a).all()
    _, info_kink = optimize(make(0.0), init, solver="newton", tol=1e-8, max_iters=100)
    assert (info_kink.converged | info_kink.flagged(NOT_CONVERGED)).all()  # either way, reported


@pytest.mark.parametrize("solver", ["lbfgs", "lm"])
def test_float32_batch_256(solver):
    B = 256
    P = Latent(_z0(B, dtype=torch.float32), seed=3, dtype=torch.float32, hidden=32)
    z = P.z0.requires_grad_(True)
    a, info = optimize(P.objective(), torch.zeros(B, T, M), solver=solver, max_iters=100)
    assert a.dtype == torch.float32 and torch.isfinite(a).all() and (a.abs() <= 1).all()
    assert not info.failed.any()
    assert (info.converged | info.flagged(NOT_CONVERGED)).all()
    # The default tolerance is reachable in float32 (the line search accepts steps whose change of
    # J is within rounding when the slope falls): nearly every sample converges.
    assert info.converged.float().mean() >= 0.95, info.summary()
    a.square().sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("solver", SOLVERS)
def test_warm_start_next_to_the_maximum_converges(solver):
    # A warm start (the previous solution, as in receding-horizon control) 1e-5..1e-4 away from the
    # maximum: the first step of lbfgs/pgd (half a box width) must be shrunk by 1e4 or more.
    c = torch.tensor([0.3, -0.2], dtype=DT)

    def J(A):
        return -((A - c) ** 2).sum((1, 2))

    for dtype in (torch.float64, torch.float32):
        init = (c + torch.tensor([[1e-5], [3e-5], [1e-4]], dtype=DT).unsqueeze(-1)).expand(3, T, M)
        a, info = optimize(J, init.to(dtype), solver=solver, backward="none")
        assert info.converged.all(), (dtype, info)
        assert (a - c.to(dtype)).abs().max() < 1e-4


def test_module_form_equals_optimize_and_is_reusable():
    layer = TrajOpt(solver="lbfgs", backward="implicit", max_iters=40, tol=1e-8, low=-0.8, high=0.8)
    assert "lbfgs" in repr(layer)
    for B in (3, 1, 7, 3):
        z = _z0(B, seed=B).requires_grad_(True)
        P = Latent(z, seed=4)
        init = torch.zeros(B, T, M, dtype=DT)
        a, info = layer(P.objective(), init)
        (a.sum()).backward()
        g1 = z.grad.clone()
        z.grad = None
        a2, info2 = optimize(P.objective(), init, solver="lbfgs", backward="implicit", max_iters=40,
                             tol=1e-8, low=-0.8, high=0.8)
        a2.sum().backward()
        assert a.shape == (B, T, M) and info.iterations.shape == (B,)
        assert torch.equal(a.detach(), a2.detach()) and torch.equal(info.iterations, info2.iterations)
        torch.testing.assert_close(g1, z.grad, atol=0, rtol=0)


def test_replace_changes_only_the_named_settings():
    layer = TrajOpt(solver="lbfgs", backward="implicit", max_iters=3, tol=1e-8, low=-0.8, high=0.8,
                    implicit_unconverged="exact", memory=4, sign_iters=2)
    other = layer.replace(max_iters=40, backward="none")
    assert (other.max_iters, other.backward, layer.max_iters, layer.backward) == (40, "none", 3, "implicit")
    assert (other.tol, other.low, other.high, other.implicit_unconverged) == (1e-8, -0.8, 0.8, "exact")
    assert other.solver_options == {"memory": 4, "sign_iters": 2} and other.solver.memory == 4
    B = 4
    P = Latent(_z0(B, seed=1), seed=2)
    init = torch.zeros(B, T, M, dtype=DT)
    a, _ = other(P.objective(), init)
    a2, _ = optimize(P.objective(), init, solver="lbfgs", backward="none", max_iters=40, tol=1e-8,
                     low=-0.8, high=0.8, memory=4, sign_iters=2)
    assert torch.equal(a, a2)
    with pytest.raises(ValueError, match="implicit_unconverged"):
        layer.replace(implicit_unconverged="bogus")


# --- non-finite values -------------------------------------------------------------------------

@pytest.mark.parametrize("implicit_solver", ["dense", "cg"])
@pytest.mark.parametrize("solver", SOLVERS)
def test_nan_met_by_a_trial_keeps_the_implicit_gradient(solver, implicit_solver):
    # The maximum of -(x - c)^2 - x^4 (x* = 0.385 for c = 0.5) lies where J is defined (x < 0.45);
    # a line-search trial beyond 0.45 meets NaN and is rejected. The sample converges at a finite
    # point, so it must get its implicit gradient (it used to be zeroed for NONFINITE_STEP).
    def run(nan_region):
        c = torch.tensor(0.5, dtype=DT, requires_grad=True)

        def J(A):
            x = A[:, 0, 0]
            f = -(x - c) ** 2 - x ** 4
            return torch.where(x < 0.45, f, torch.full_like(f, float("nan"))) if nan_region else f

        a, info = optimize(J, torch.full((1, 1, 1), -0.9, dtype=DT), solver=solver, tol=1e-10,
                           implicit_solver=implicit_solver)
        a.sum().backward()
        return a.detach(), info, c.grad

    a, info, g = run(True)
    a0, _, g0 = run(False)
    assert info.converged.all() and not info.failed.any()
    torch.testing.assert_close(a, a0, atol=1e-9, rtol=0)
    torch.testing.assert_close(g, g0, atol=1e-8, rtol=0)
    assert g.abs() > 0.5  # da*/dc = 1 / (1 + 6 x*^2) = 0.53


@pytest.mark.parametrize("implicit_solver", ["dense", "cg"])
@pytest.mark.parametrize("solver", SOLVERS)
def test_nan_sample_in_the_batch(solver, implicit_solver):
    # One sample's objective is NaN everywhere and its init is outside the box: it is left at its
    # projected init (within the bounds) and flagged; the dense implicit solve (an eigendecomposition
    # of the whole batch) does not raise, and the other samples keep finite, nonzero gradients.
    b = torch.tensor([0.5, -0.3, 0.2], dtype=DT, requires_grad=True)
    bad = torch.tensor([False, True, False])

    def J(A):
        f = -((A - b.view(3, 1, 1)) ** 2).sum((1, 2))
        return torch.where(bad, torch.full_like(f, float("nan")), f)

    init = torch.tensor([0.0, 5.0, 0.0], dtype=DT).view(3, 1, 1).expand(3, 2, 2).contiguous()
    a, info = optimize(J, init, solver=solver, implicit_solver=implicit_solver, tol=1e-10)
    a.sum().backward()
    assert torch.equal(info.flagged(NONFINITE_INIT), bad) and torch.equal(info.failed, bad)
    assert torch.equal(a[1].detach(), torch.ones(2, 2, dtype=DT))  # init 5 projected on the box
    assert info.converged[~bad].all()
    torch.testing.assert_close(a[~bad].detach(), b[~bad].view(2, 1, 1).expand(2, 2, 2).detach())
    torch.testing.assert_close(b.grad[~bad], torch.full((2,), 4.0, dtype=DT))
