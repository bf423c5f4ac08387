"""The hand-written tapes and VJPs (difftop/nn/vjp.py) and the latent objective's graph-free value_grad
built on them: the same values as autograd, bit for bit where the ops are autograd's own (the family
problems, float32 and float64), checked against finite differences, and the solver's actions and
parameter gradients unchanged when the layer takes the fast path."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from difftop.bench.family import build, draw
from difftop.nn.told import TOLD
from difftop.nn.vjp import ConcatMLP, MLPTape, PiValue, TwinMin, supported
from difftop.trajopt import TrajOpt, latent_objective, smooth_min
from difftop.trajopt.evaluate import Problem

FAMILY = draw("vjp", 6, seed=3, horizons=(1, 7), action_dims=(1, 12), head_gains=[0.3, 1.0, 3.0],
              q_taus=[0.0, 0.05])


def _autograd(f, *xs):
    xs = [x.detach().clone().requires_grad_(True) for x in xs]
    y = f(*xs)
    return y.detach(), torch.autograd.grad(y.sum(), xs)


LAYERS = [nn.ELU(), nn.ELU(alpha=0.5), nn.Tanh(), nn.ReLU(), nn.Sigmoid(), nn.Mish(), nn.SiLU(), nn.GELU(),
          nn.GELU(approximate="tanh"), nn.LayerNorm(7), nn.Identity()]


@pytest.mark.parametrize("act", LAYERS, ids=lambda m: repr(m))
def test_each_layer_matches_autograd(act):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), act, nn.Linear(7, 3)).double()
    if isinstance(act, nn.LayerNorm):  # not the identity affine map
        nn.init.normal_(act.weight)
        nn.init.normal_(act.bias)
    x = torch.randn(4, 5, dtype=torch.float64)
    tape = MLPTape(net)
    y, t = tape.taped(x)
    gy = torch.randn_like(y)
    xl = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(net(xl), xl, gy)
    assert torch.equal(y, net(x).detach())
    torch.testing.assert_close(tape.vjp(t, gy), gx, rtol=1e-14, atol=1e-15)


def test_unsupported_networks_are_refused():
    net = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.1))
    assert not supported(net) and not supported(nn.Linear(3, 3))
    with pytest.raises(TypeError, match="Dropout"):
        MLPTape(net)


@pytest.mark.parametrize("tau", [0.0, 0.05])
def test_concat_and_twin_min_match_autograd(tau):
    torch.manual_seed(1)
    m = TOLD((6,), 3, latent_dim=8, mlp_dim=16).double()
    for q in m.q_nets:  # TD-MPC zero-initialises the heads' last layer
        nn.init.normal_(q[-1].weight)
    z, a = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    pairs = ((m.dynamics_fn, m.dynamics), (m.q_min_fn(tau), lambda z, a: smooth_min(*m.Q(z, a), tau=tau)))
    for fn, ref in pairs:
        y, t = fn.taped(z, a)
        assert torch.equal(y, ref(z, a).detach()) and torch.equal(fn(z, a).detach(), y)
        _, (gz, ga) = _autograd(ref, z, a)
        gz2, ga2 = fn.vjp(t, torch.ones_like(y))
        assert torch.equal(gz2, gz) and torch.equal(ga2, ga)


def test_hard_min_sends_the_gradient_to_the_smaller_head():
    torch.manual_seed(2)
    q1 = ConcatMLP(nn.Sequential(nn.Linear(3, 1)).double())
    q2 = ConcatMLP(nn.Sequential(nn.Linear(3, 1)).double())
    z, a = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 1, dtype=torch.float64)
    v, t = TwinMin(q1, q2).taped(z, a)
    _, ga = TwinMin(q1, q2).vjp(t, torch.ones_like(v))
    pick = q1(z, a) <= q2(z, a)
    expect = torch.where(pick, q1.net[0].weight[0, 2], q2.net[0].weight[0, 2]).detach()
    assert torch.equal(ga, expect)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spec", FAMILY, ids=lambda s: s.name)
def test_latent_value_grad_is_autograds_bit_for_bit(spec, dtype):
    P = build(spec, 3, latent_dim=16, mlp_dim=32, dtype=dtype)
    with torch.no_grad():
        z0 = P.model.h(P.obs)
    A = P.init(z0) + 0.1 * torch.randn(3, spec.horizon, spec.action_dim).to(dtype)
    obj = P.objective(z0)
    J, g = obj.value_grad(A)
    J2, (g2,) = _autograd(obj, A)
    assert torch.equal(J, J2) and torch.equal(g, g2)


@pytest.mark.parametrize("batch_rewards", [False, True])
@pytest.mark.parametrize("terminal", [False, True])
@pytest.mark.parametrize("T", [1, 4])
def test_latent_value_grad_against_finite_differences(T, terminal, batch_rewards):
    torch.manual_seed(4)
    m = TOLD((5,), 2, latent_dim=6, mlp_dim=12).double()
    for net in (m.reward_net, *m.q_nets):
        nn.init.normal_(net[-1].weight)
    z0 = torch.randn(2, 6, dtype=torch.float64)
    obj = latent_objective(z0, m.dynamics_fn, m.reward_fn, m.q_min_fn(0.05) if terminal else None, gamma=0.9,
                           batch_rewards=batch_rewards)
    A = torch.randn(2, T, 2, dtype=torch.float64)
    J, g = obj.value_grad(A)
    eps, fd = 1e-6, torch.zeros_like(A)
    for idx in range(A[0].numel()):
        e = torch.zeros_like(A).reshape(2, -1)
        e[:, idx] = eps
        e = e.reshape_as(A)
        fd.reshape(2, -1)[:, idx] = (obj(A + e) - obj(A - e)).detach() / (2 * eps)
    torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(J, obj(A).detach(), rtol=0, atol=0)


def test_objectives_without_taped_functions_have_no_fast_path():
    m = TOLD((5,), 2, latent_dim=6, mlp_dim=12)
    z0 = torch.randn(2, 6)
    assert not hasattr(latent_objective(z0, m.dynamics, m.reward_fn, m.q_min_fn()), "value_grad")
    fast = latent_objective(z0, m.dynamics_fn, m.reward_fn, m.q_min_fn())
    assert Problem(fast, torch.Size((2, 3, 2))).fast is not None
    assert Problem(fast, torch.Size((2, 3, 2)), compiled=object()).fast is None  # compile_objective wins


@pytest.mark.parametrize("backward", ["implicit", "truncated", "unroll"])
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("spec", FAMILY[:4], ids=lambda s: s.name)
def test_the_layer_gives_the_same_actions_and_gradients_on_the_fast_path(spec, batch, backward):
    """The layer with the model's taped functions vs the same objective over plain functions (autograd
    for every evaluation): identical actions, iterations and gradient to every parameter, whichever
    backward (truncated and unroll differentiate their last iterations with autograd)."""
    P = build(spec, batch, latent_dim=16, mlp_dim=32, dtype=torch.float64)
    m = P.model
    w = torch.linspace(-1, 1, spec.action_dim, dtype=torch.float64)
    out = []
    for fast in (True, False):
        m.zero_grad(set_to_none=True)
        z0 = m.h(P.obs)
        obj = P.objective(z0) if fast else latent_objective(z0, m.dynamics, m.reward, P.terminal,
                                                             gamma=P.gamma, batch_rewards=True)
        assert hasattr(obj, "value_grad") == fast
        a, info = TrajOpt(backward=backward, max_iters=30 if backward == "unroll" else 50)(obj, P.init(z0))
        (a[:, 0] * w).sum().backward()
        grads = [p.grad for p in m.parameters()]
        out.append((a.detach(), info.iterations, grads))
    (a1, i1, g1), (a0, i0, g0) = out
    assert torch.equal(a1, a0) and torch.equal(i1, i0)
    for x, y in zip(g1, g0):
        assert (x is None) == (y is None) and (x is None or torch.equal(x, y))


def test_taped_functions_follow_weight_updates_and_copies():
    torch.manual_seed(5)
    m = TOLD((4,), 2, latent_dim=6, mlp_dim=12).double()
    z, a = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    fn = m.dynamics_fn
    assert m.dynamics_fn is fn and m.q_min_fn(0.1) is m.q_min_fn(0.1)  # built once
    with torch.no_grad():
        m.dynamics_net[0].weight.add_(1.0)  # an optimizer step, in place
    assert torch.equal(fn.taped(z, a)[0], m.dynamics(z, a).detach())
    twin = copy.deepcopy(m)  # a target network
    with torch.no_grad():
        twin.dynamics_net[0].weight.mul_(-1)
    assert torch.equal(twin.dynamics_fn.taped(z, a)[0], twin.dynamics(z, a).detach())
    assert not torch.equal(twin.dynamics_fn(z, a), m.dynamics_fn(z, a))


def test_objective_vjp_false_evaluates_with_autograd_only():
    P = build(FAMILY[2], 2, latent_dim=16, mlp_dim=32, dtype=torch.float64)
    z0 = P.model.h(P.obs).detach()
    calls = []
    for flag in (True, False):
        obj = P.objective(z0)
        inner = obj.value_grad
        obj.value_grad = lambda A, inner=inner, flag=flag: calls.append(flag) or inner(A)
        a, _ = TrajOpt(objective_vjp=flag)(obj, P.init(z0))
    assert calls and set(calls) == {True}


def test_a_solution_on_the_bounds_needs_no_evaluation_for_its_backward(monkeypatch):
    """Every action ends at the bound its gradient pushes against, away from the start: d a*/d theta is
    exactly zero, and the implicit backward reads that off the solver's last gradient instead of evaluating
    the objective once more with autograd (the fast path keeps no graph after the first evaluation)."""
    torch.manual_seed(6)
    dyn, rew = nn.Sequential(nn.Linear(5, 3)), nn.Sequential(nn.Linear(5, 1))
    with torch.no_grad():
        rew[0].weight[0, 3:] = torch.tensor([1.0, 2.0])  # J grows with every action
    z0 = torch.randn(4, 3, requires_grad=True)
    graphs = []
    original = Problem.grad_graph
    monkeypatch.setattr(Problem, "grad_graph", lambda self, x: graphs.append(1) or original(self, x))
    obj = latent_objective(z0, ConcatMLP(dyn), ConcatMLP(rew), gamma=0.9)
    a, info = TrajOpt()(obj, torch.zeros(4, 3, 2))
    # one graph only: the first evaluation's (recorded, at the start), none at the solution
    assert torch.equal(a.detach(), torch.ones(4, 3, 2)) and a.requires_grad and len(graphs) == 1
    a.sum().backward()
    assert z0.grad is None and all(p.grad is None for p in (*dyn.parameters(), *rew.parameters()))


@pytest.mark.parametrize("weight", [0.0, 1e-3])
@pytest.mark.parametrize("bounds", ["tanh", "sigmoid"])
def test_the_smooth_bounds_keep_the_fast_path_bit_for_bit(bounds, weight):
    """bounds=tanh|sigmoid solve over u with a = centre + half * s(u): the wrapped objective chains the
    inner value_grad through s, with autograd's values; the layer's actions and parameter gradients equal
    those of the same problem evaluated with autograd throughout."""
    from difftop.trajopt.bounds import wrap_bounds

    P = build(FAMILY[3], 4, latent_dim=16, mlp_dim=32, dtype=torch.float64)
    m = P.model
    z0 = m.h(P.obs).detach()
    low = torch.full((spec_m := FAMILY[3].action_dim,), -0.5, dtype=torch.float64)
    w = wrap_bounds(bounds, P.objective(z0), P.init(z0), low, 1.0, weight)
    u = w.init + 0.3 * torch.randn_like(w.init)
    J, g = w.objective.value_grad(u)
    J2, (g2,) = _autograd(w.objective, u)
    assert torch.equal(J, J2) and torch.equal(g, g2)
    # compaction keeps it (to rounding: matrix products on 2 rows round apart from those on 4)
    sub = w.objective.rows(torch.tensor([2, 0]))
    torch.testing.assert_close(sub.value_grad(u[[2, 0]])[1], g[[2, 0]], rtol=1e-12, atol=1e-15)
    grads = []
    for fast in (True, False):
        m.zero_grad(set_to_none=True)
        z = m.h(P.obs)
        obj = P.objective(z) if fast else latent_objective(z, m.dynamics, m.reward, P.terminal, gamma=P.gamma,
                                                           batch_rewards=True)
        a, _ = TrajOpt(bounds=bounds, bounds_weight=weight, low=low)(obj, P.init(z))
        (a[:, 0] * torch.linspace(-1, 1, spec_m, dtype=torch.float64)).sum().backward()
        grads.append((a.detach(), [p.grad for p in m.parameters()]))
    assert torch.equal(grads[0][0], grads[1][0])
    assert all((x is None and y is None) or torch.equal(x, y) for x, y in zip(grads[0][1], grads[1][1]))


def test_a_nonfinite_sample_fails_alone_and_leaves_the_gradients_finite():
    """A sample whose latent is NaN gets NaN from the hand-written evaluation as from autograd: it is flagged
    and left at its start, the others solve as without it, and the parameters' gradients are finite and
    those of the other samples alone (the implicit backward runs on their rows: in the batched graph the
    failed row's zero cotangent times its NaN activations made every weight gradient NaN)."""
    from difftop.trajopt.info import NONFINITE_INIT

    P = build(FAMILY[1], 3, latent_dim=16, mlp_dim=32, dtype=torch.float64)
    m = P.model
    out = []
    for fast, rows in ((True, [0, 1, 2]), (False, [0, 1, 2]), (True, [0, 2])):
        m.zero_grad(set_to_none=True)
        z0 = m.h(P.obs)
        z0 = torch.where(torch.arange(3).unsqueeze(-1) == 1, torch.full_like(z0, float("nan")), z0)[rows]
        obj = P.objective(z0) if fast else latent_objective(z0, m.dynamics, m.reward, P.terminal,
                                                             gamma=P.gamma, batch_rewards=True)
        init = P.init(z0.nan_to_num(0.0))
        a, info = TrajOpt()(obj, init)
        good = [i for i, r in enumerate(rows) if r != 1]
        a[good].sum().backward()
        if len(rows) == 3:
            assert (info.status[1] & NONFINITE_INIT) != 0 and torch.equal(a[1].detach(), init[1])
        assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
        out.append((a.detach()[good], [p.grad for p in m.parameters()]))
    assert torch.equal(out[0][0], out[1][0])
    # the batch without the failed sample: other matrix shapes, so other rounding on some CPUs (AMD EPYC)
    torch.testing.assert_close(out[0][0], out[2][0], rtol=1e-10, atol=1e-12)
    for x, y, z in zip(out[0][1], out[1][1], out[2][1]):
        assert (x is None) == (y is None) == (z is None)
        if x is not None:
            assert torch.equal(x, y)
            torch.testing.assert_close(x, z, rtol=1e-10, atol=1e-12)  # other batch size: other rounding


def _woken_told(seed: int, dtype=torch.float64, **sizes) -> TOLD:
    """A TOLD whose zero-initialised heads (reward, Q: TD-MPC's init) have random weights."""
    torch.manual_seed(seed)
    m = TOLD((5,), 3, **{"latent_dim": 6, "mlp_dim": 12, **sizes}).to(dtype)
    for net in (m.reward_net, *m.q_nets):
        nn.init.normal_(net[-1].weight, std=0.5)
    return m


@pytest.mark.parametrize("tau", [0.0, 0.1])
def test_pi_value_matches_autograd_and_finite_differences(tau):
    m = _woken_told(6)
    v = m.pi_value_fn(tau)
    assert isinstance(v, PiValue) and m.pi_value_fn(tau) is v  # cached, like q_min_fn
    z = torch.randn(4, 6, dtype=torch.float64)
    y, tape = v.taped(z)
    gz = v.vjp(tape, torch.ones_like(y))
    y2, (gz2,) = _autograd(v, z)
    q = smooth_min(*m.Q(z, m.pi(z)), tau=tau)
    assert torch.equal(y, y2) and torch.equal(y, q) and torch.equal(gz, gz2)
    eps, fd = 1e-6, torch.zeros_like(z)
    for i in range(z.shape[1]):
        e = torch.zeros_like(z)
        e[:, i] = eps
        fd[:, i] = (v(z + e) - v(z - e)) / (2 * eps)
    torch.testing.assert_close(gz, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("batch_rewards", [False, True])
@pytest.mark.parametrize("T", [1, 4])
def test_the_state_value_objective_is_estimate_value(T, batch_rewards):
    """`terminal=pi` (the release's objective): latent_objective(state_value=pi_value_fn()) gives TD-MPC's
    estimate_value (bit for bit with the rewards summed in its order, to rounding in one call), its
    value_grad equals autograd's and finite differences."""
    from difftop.rl.mppi import estimate_value

    m = _woken_told(7)
    z0 = torch.randn(3, 6, dtype=torch.float64)
    A = torch.rand(3, T, 3, dtype=torch.float64) * 2 - 1
    obj = latent_objective(z0, m.dynamics_fn, m.reward_fn, gamma=0.95, state_value=m.pi_value_fn(),
                           batch_rewards=batch_rewards)
    ref = estimate_value(m, z0, A.transpose(0, 1), 0.95).squeeze(-1)
    J, g = obj.value_grad(A)
    J2, (g2,) = _autograd(obj, A)
    assert torch.equal(J, J2) and torch.equal(g, g2)
    if batch_rewards:
        torch.testing.assert_close(J, ref, rtol=1e-12, atol=1e-12)
    else:
        assert torch.equal(J, ref)
    eps, fd = 1e-6, torch.zeros_like(A)
    for idx in range(A[0].numel()):
        e = torch.zeros_like(A).reshape(3, -1)
        e[:, idx] = eps
        e = e.reshape_as(A)
        fd.reshape(3, -1)[:, idx] = (obj(A + e) - obj(A - e)) / (2 * eps)
    torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(obj.rows(torch.tensor([2, 0]))(A[[2, 0]]), ref[[2, 0]], rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="not both"):
        latent_objective(z0, m.dynamics_fn, m.reward_fn, m.q_min_fn(), state_value=m.pi_value_fn())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lm_refine_takes_the_fast_path_with_the_same_iterates_and_gradients(dtype):
    """The release's refinement (solver=lm_refine, truncated backward) on the state-value objective:
    graph-free iterations through value_grad (clamp's derivative as autograd's) give the same actions,
    objective and gradient to every parameter as autograd in every iteration (objective_vjp=false)."""
    m = _woken_told(8, dtype=dtype, latent_dim=16, mlp_dim=32)
    obs = torch.randn(4, 5, dtype=dtype)
    w = torch.linspace(-1, 1, 3, dtype=dtype)
    out = []
    for fast in (True, False):
        m.zero_grad(set_to_none=True)
        z0 = m.h(obs)
        obj = latent_objective(z0, m.dynamics_fn, m.reward_fn, gamma=0.99, state_value=m.pi_value_fn(),
                               batch_rewards=True)
        # steps large enough that some iterates leave the box (clamp's zero derivative) but not all
        layer = TrajOpt(solver="lm_refine", backward="truncated", backward_iters=5, max_iters=30,
                        objective_vjp=fast, step_size=1e-3, damping=1e-2)
        calls = []
        if fast:
            vg = obj.value_grad
            obj.value_grad = lambda A, calls=calls, vg=vg: calls.append(int((A.abs() == 1).sum())) or vg(A)
        torch.manual_seed(9)
        a, info = layer(obj, 0.9 * torch.tanh(torch.randn(4, 3, 3, dtype=dtype)))
        (a[:, 0] * w).sum().backward()
        assert len(calls) == (26 if fast else 0)  # 25 graph-free iterations and the last iterate's check
        assert not fast or sum(calls) > 0  # some iterates left the box: clamp's zero derivative is used
        out.append((a.detach(), info.objective, [p.grad for p in m.parameters()]))
    (a1, J1, g1), (a0, J0, g0) = out
    assert torch.equal(a1, a0) and torch.equal(J1, J0)
    assert any(x is not None and bool(x.abs().sum() > 0) for x in g1)
    for x, y in zip(g1, g0):
        assert (x is None) == (y is None) and (x is None or torch.equal(x, y))
