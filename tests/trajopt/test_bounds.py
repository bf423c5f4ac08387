"""TrajOpt(bounds=...) and solver="lm_refine": gradients against finite differences, at the bounds too.

The problem: J(a) = -1/2 (a - c)^T Q (a - c) per sample (Q SPD, coupled), c a parameter with some
components outside the box [-1, 1], so that under ``bounds=project`` those variables sit at a bound.
The loss is w . a*(c); its autograd gradient with respect to c is compared with central differences
of the forward solve (float64, solved tightly).
"""

from __future__ import annotations

import pytest
import torch

from difftop.errors import UserError
from difftop.trajopt import TrajOpt, TrajOptConfig

B, H, M = 3, 2, 2
N = H * M


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(B, N, N, generator=g, dtype=torch.float64)
    Q = A @ A.transpose(1, 2) / N + torch.eye(N, dtype=torch.float64)
    c = 0.6 * torch.randn(B, N, generator=g, dtype=torch.float64)
    c[:, 0] = 1.8    # pushed against the upper bound
    c[:, 1] = -2.5   # pushed against the lower bound
    w = torch.randn(B, N, generator=g, dtype=torch.float64)
    init = (0.3 * torch.randn(B, H, M, generator=g, dtype=torch.float64)).clamp(-0.9, 0.9)
    return Q, c, w, init


def _objective(Q, c):
    def J(a):
        d = a.reshape(a.shape[0], -1) - c
        return -0.5 * torch.einsum("bi,bij,bj->b", d, Q, d)
    return J


def _loss(layer, Q, c, w, init):
    a, info = layer(_objective(Q, c), init)
    return (w * a.reshape(B, -1)).sum(), a, info


#: directions in c-space for the finite differences: along the pushed components (the variables at a
#: bound), and one random direction over all of c
DIRECTIONS = [torch.zeros(B, N, dtype=torch.float64).index_fill_(1, torch.tensor([0, 1]), 1.0),
              torch.randn(B, N, generator=torch.Generator().manual_seed(9), dtype=torch.float64)]


def _fd(layer, Q, c, w, init, eps=1e-6):
    """Central differences of the loss along each of DIRECTIONS (the samples are independent problems,
    so one solve per side covers all B)."""
    out = []
    with torch.no_grad():
        for v in DIRECTIONS:
            out.append((_loss(layer, Q, c + eps * v, w, init)[0] - _loss(layer, Q, c - eps * v, w, init)[0])
                       / (2 * eps))
    return torch.stack(out)


def _directional(g):
    return torch.stack([(g * v).sum() for v in DIRECTIONS])


def _autograd(layer, Q, c, w, init):
    c = c.clone().requires_grad_(True)
    loss, a, info = _loss(layer, Q, c, w, init)
    (g,) = torch.autograd.grad(loss, c)
    return g, a.detach(), info


@pytest.mark.parametrize("bounds,solver", [("project", "lbfgs"), ("project", "newton"), ("tanh", "lbfgs"),
                                           ("sigmoid", "newton"), ("barrier", "newton")])
def test_bounds_gradient_matches_finite_differences(bounds, solver):
    Q, c, w, init = _problem()
    layer = TrajOpt(solver=solver, backward="implicit", max_iters=400, tol=1e-12, ftol=0.0, bounds=bounds,
                    implicit_unconverged="exact")
    g, a, info = _autograd(layer, Q, c, w, init)
    assert bool(info.converged.all()), info.grad_norm
    assert bool(((a >= -1) & (a <= 1)).all())
    torch.testing.assert_close(_directional(g), _fd(layer, Q, c, w, init), rtol=2e-4, atol=1e-7)
    # the two components pushed out of the box: their derivative with respect to every parameter
    w_pushed = torch.zeros_like(w)
    w_pushed[:, :2] = 1.0
    pushed, _, _ = _autograd(layer, Q, c, w_pushed, init)
    flat = a.reshape(B, -1)[:, :2]
    if bounds == "project":
        # held at the bound: the variable is a constant, the derivative exactly 0 (the issue-31 case)
        assert torch.equal(flat.abs(), torch.ones_like(flat))
        assert torch.equal(pushed, torch.zeros_like(pushed))
    else:
        # interior, within ~bounds_weight of the bound, and its derivative survives
        assert bool((flat.abs() < 1).all()) and bool((flat.abs() > 0.99).all())
        assert bool((pushed.abs().amax(-1) > 1e-6).all())
        torch.testing.assert_close(_directional(pushed), _fd(layer, Q, c, w_pushed, init), rtol=2e-4,
                                   atol=1e-7)


def test_smooth_bounds_match_project_inside_the_box():
    """An optimum well inside the box: every option returns (almost) the same actions and gradient."""
    Q, c, w, init = _problem(1)
    c = c.clamp(-0.5, 0.5)
    ref_g, ref_a, _ = _autograd(TrajOpt(solver="newton", max_iters=200, tol=1e-12, ftol=0.0), Q, c, w, init)
    for bounds in ("tanh", "sigmoid", "barrier"):
        layer = TrajOpt(solver="newton", max_iters=400, tol=1e-12, ftol=0.0, bounds=bounds,
                        bounds_weight=1e-6)
        g, a, _ = _autograd(layer, Q, c, w, init)
        torch.testing.assert_close(a, ref_a, rtol=0, atol=1e-4)
        torch.testing.assert_close(g, ref_g, rtol=0, atol=1e-3)


def test_project_default_is_bit_identical():
    Q, c, w, init = _problem(2)
    a1, _ = TrajOpt()(_objective(Q, c), init)
    a2, _ = TrajOpt(bounds="project", bounds_weight=0.5)(_objective(Q, c), init)
    assert torch.equal(a1, a2)


def _reference_refine(J, x0, iters, k, step, damp, off=1000.0):
    """The release's iteration written out: a <- a + step r g / (damp + |g|^2), r = off - J(clamp(a)),
    graph through the last k iterations only."""
    x = x0.detach().reshape(x0.shape[0], -1)
    for t in range(iters):
        create = t >= iters - k
        if t == iters - k:
            x = x.detach().requires_grad_(True)
        leaf = x if create else x.detach().requires_grad_(True)
        G = J(leaf.clamp(-1, 1).reshape(x0.shape))
        (g,) = torch.autograd.grad(G.sum(), leaf, create_graph=create)
        x = x + step * (off - G).unsqueeze(-1) * g / (damp + g.pow(2).sum(-1, keepdim=True))
        x = x if create else x.detach()
    return x


def test_lm_refine_unrolled_matches_finite_differences():
    Q, c, w, init = _problem(3)
    init = init.clamp(-0.5, 0.5)
    layer = TrajOpt(solver="lm_refine", backward="unroll", max_iters=30, step_size=1e-5, damping=0.5)
    g, a, info = _autograd(layer, Q, c, w, init)
    assert not bool(info.converged.any()) and int(info.iterations[0]) == 30
    torch.testing.assert_close(_directional(g), _fd(layer, Q, c, w, init), rtol=1e-4, atol=1e-7)


def test_lm_refine_truncated_is_the_release_iteration():
    """Values and truncated gradients equal the release's iteration written out (backward through the
    last 5 iterations); components clamped outside the box get no derivative there, as in the release."""
    Q, c, w, init = _problem(4)
    iters, k, step, damp = 40, 5, 1e-3, 0.01
    layer = TrajOpt(solver="lm_refine", backward="truncated", max_iters=iters, backward_iters=k,
                    step_size=step, damping=damp)
    g, a, _ = _autograd(layer, Q, c, w, init)
    c2 = c.clone().requires_grad_(True)
    x = _reference_refine(_objective(Q, c2), init, iters, k, step, damp)
    (g_ref,) = torch.autograd.grad((w * x).sum(), c2)
    torch.testing.assert_close(g, g_ref, rtol=1e-6, atol=1e-10)
    outside = x.detach().abs() > 1
    assert bool(outside.any())  # the release's steps do leave the box
    # executed: the best iterate (Theseus' best_solution), in the box: never worse than the last one
    J = _objective(Q, c)
    assert bool(((a >= -1) & (a <= 1)).all())
    assert bool((J(a) >= J(x.detach().clamp(-1, 1).reshape(a.shape)) - 1e-12).all())
    with torch.no_grad():
        a_ng, info = layer(_objective(Q, c), init)
    assert info.backward == "none" and torch.equal(a_ng, a)


def test_lm_refine_with_fewer_iterations_than_backward_iters_differentiates_them_all():
    """max_iters < backward_iters (say a quick preset's 3 iterations with the release's 5) used to raise
    inside autograd ("One of the differentiated Tensors does not require grad"): every iteration is then
    differentiated, as an unrolled backward would."""
    Q, c, w, init = _problem(5)
    kw = {"max_iters": 3, "step_size": 1e-3, "damping": 0.01}
    truncated = TrajOpt(solver="lm_refine", backward="truncated", backward_iters=5, **kw)
    g, a, _ = _autograd(truncated, Q, c, w, init)
    g_un, a_un, _ = _autograd(TrajOpt(solver="lm_refine", backward="unroll", **kw), Q, c, w, init)
    assert torch.equal(a, a_un) and bool(g.abs().sum() > 0)
    torch.testing.assert_close(g, g_un, rtol=1e-12, atol=0)


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown bounds"):
        TrajOpt(bounds="clip")
    with pytest.raises(ValueError, match="no implicit gradient"):
        TrajOpt(solver="lm_refine", backward="implicit")
    with pytest.raises(ValueError, match="no option 'memory'"):
        TrajOpt(solver="lm_refine", backward="truncated", memory=3)
    with pytest.raises(UserError, match="trajopt.bounds must be one of"):
        TrajOptConfig(bounds="clip")
    with pytest.raises(UserError, match="bounds_weight"):
        TrajOptConfig(bounds="tanh", bounds_weight=-1.0)
    with pytest.raises(ValueError, match="finite"):
        TrajOpt(bounds="tanh")(lambda a: -a.pow(2).sum((1, 2)), torch.zeros(1, 1, 1), low=-float("inf"))


def test_config_passes_bounds_and_refine_options_to_the_layer():
    cfg = TrajOptConfig.from_mapping({"solver": "lm_refine", "backward": "truncated", "max_iters": 50,
                                      "bounds": "barrier", "bounds_weight": 0.01,
                                      "options": {"step_size": 1e-3, "damping": 0.5}})
    layer = cfg.build()
    assert (layer.solver_name, layer.bounds, layer.bounds_weight) == ("lm_refine", "barrier", 0.01)
    assert layer.solver_options == {"step_size": 1e-3, "damping": 0.5}
    with pytest.raises(UserError, match="not an option of solver lm_refine"):
        TrajOptConfig.from_mapping({"solver": "lm_refine", "backward": "truncated", "options": {"memory": 2}})


def test_lm_refine_equals_the_theseus_formulation():
    """The release's formulation run by Theseus (solver=theseus, its stopping tests off) and lm_refine
    give the same actions and truncated gradients while the iterates improve monotonically (best =
    last iterate, inside the box)."""
    from difftop.trajopt.theseus_backend import is_available

    if not is_available():
        pytest.skip("theseus-ai not installed")
    Q, c, w, init = (t.float() for t in _problem(5))
    init = init.clamp(-0.3, 0.3)
    out = {}
    no_stop = {"abs_err_tolerance": 0.0, "rel_err_tolerance": 0.0}  # Theseus' own stopping tests off
    for solver, extra in (("lm_refine", {}), ("theseus", no_stop)):
        layer = TrajOpt(solver=solver, backward="truncated", max_iters=30, backward_iters=5, step_size=1e-4,
                        damping=0.01, **extra)
        g, a, _ = _autograd(layer, Q, c, w, init)
        out[solver] = (a, g)
    torch.testing.assert_close(out["lm_refine"][0], out["theseus"][0], rtol=0, atol=1e-4)
    torch.testing.assert_close(out["lm_refine"][1], out["theseus"][1], rtol=1e-3, atol=1e-4)
