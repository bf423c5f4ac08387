"""DiffTOP's CVAE imitation policy: shapes, the KL term, gradients through the solve, initialisations.

Tiny networks and synthetic in-memory batches; actions live around 200 raw units so a policy that
forgot to (un)normalise is caught.
"""

from __future__ import annotations

import pytest
import torch

from difftop.data.normalizer import Normalizer
from difftop.il.policies.base import Policy, ShapeMeta
from difftop.il.policies.difftop_cvae import DiffTOPPolicy, kl_to_standard_normal
from difftop.trajopt.info import NONFINITE_INIT

B, M = 12, 2
W = torch.tensor([[1.0, -0.5], [0.3, 0.8], [-0.7, 0.2], [0.5, 0.5], [0.1, -0.9]])
TINY = dict(latent_dim=6, posterior_dim=4, enc_hidden=16, fuse_hidden=16, mlp_hidden=16, max_iters=30,
            zero_init_f=False)




def _meta(
    To: int = 2, H: int = 1, Ta: int = 1, obs: dict | None = None, base: ShapeMeta | None = None
) -> ShapeMeta:
    params = {"obs_horizon": To, "plan_horizon": H, "n_action_steps": Ta}
    return DiffTOPPolicy.make_shape_meta(obs or {"state": (5,)}, M, params, base)


def _batch(meta: ShapeMeta, seed: int = 0, b: int = B) -> dict:
    g = torch.Generator().manual_seed(seed)
    To, T = meta.obs_horizon, meta.horizon
    state = torch.rand(b, T, 5, generator=g) * 2 - 1
    action = 200 + 40 * torch.tanh(state @ W)  # (b, T, M): a function of the step's own state
    obs = {"state": state[:, :To]}
    if "img" in meta.obs:
        obs = {
            "agent_pos": state[:, :To, :2],
            "img": (torch.rand(b, To, *meta.obs["img"], generator=g) * 255).to(torch.uint8),
        }
    return {"obs": obs, "action": action}


def _norm(meta: ShapeMeta) -> Normalizer:
    big = _batch(meta, seed=99, b=256)
    data = {k: v.flatten(0, 1) for k, v in big["obs"].items()} | {"action": big["action"].flatten(0, 1)}
    return Normalizer.fit(data, mode={"img": "image"})


def _policy(meta: ShapeMeta, **kw) -> DiffTOPPolicy:
    torch.manual_seed(0)
    p = DiffTOPPolicy(meta, **{**TINY, **kw})
    p.set_normalizer(_norm(meta))
    return p


class _Constant(Policy):
    """A frozen base whose raw action chunk is known."""

    def __init__(self, meta: ShapeMeta, value: list[float], steps: int = 1):
        super().__init__(meta)
        self.value = torch.tensor(value)
        self.steps = steps
        self.w = torch.nn.Parameter(torch.ones(3))  # a parameter that must never change

    def predict_action(self, obs):
        b = next(iter(obs.values())).shape[0]
        return (self.value * self.w[0]).expand(b, self.steps, -1).clone()


@pytest.mark.parametrize("H,Ta", [(1, 1), (3, 2)])
def test_trains_a_few_steps_and_acts_with_the_right_shapes(H, Ta):
    meta = _meta(To=2, H=H, Ta=Ta)
    assert (meta.obs_horizon, meta.horizon, meta.n_action_steps) == (2, 2 - 1 + H, Ta)
    p = _policy(meta, prox=0.1)
    assert p.plan_horizon == H
    opt = torch.optim.Adam([q for q in p.parameters() if q.requires_grad], lr=3e-3)
    losses = []
    for i in range(40):
        loss, metrics = p.compute_loss(_batch(meta, seed=i % 4))
        assert torch.isfinite(loss)
        assert {"mse", "kl", "init_mse", "solve_iters", "solve_failed"} <= set(metrics)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < sum(losses[:5])  # it learns through the solve
    p.eval()
    b = _batch(meta, seed=7, b=5)
    a = p.predict_action(b["obs"])
    assert a.shape == (5, Ta, M)
    lo, hi = (p.normalizer.unnormalize("action", s * torch.ones(M)) for s in (-1, 1))
    assert bool(((a >= lo - 1e-4) & (a <= hi + 1e-4)).all())  # raw units, inside the (un-normalised) box
    assert a.mean() > 100  # un-normalised (the normalised box is [-1, 1])


def test_kl_term_is_the_closed_form():
    mu, logvar = torch.randn(7, 4), torch.randn(7, 4)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)
    ).sum(-1)
    assert torch.allclose(kl_to_standard_normal(mu, logvar), ref, atol=1e-6)
    # In the loss: loss(beta) - loss(0) = beta * mean KL of the posterior q(z~ | s, a*).
    meta = _meta()
    p = _policy(meta)
    batch = _batch(meta)
    losses = {}
    for beta in (0.0, 2.5):
        p.beta = beta
        torch.manual_seed(3)  # the same posterior sample, so the same solve
        losses[beta] = p.compute_loss(batch)[0].item()
    a_star = p.normalizer.normalize("action", batch["action"][:, 1:2])
    mu, logvar = p.posterior(p.encode(batch["obs"]), a_star)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1).mean().item()
    assert losses[2.5] - losses[0.0] == pytest.approx(2.5 * kl, rel=1e-4, abs=1e-6)


def test_posterior_dim_zero_is_a_deterministic_difftop_without_the_cvae():
    meta = _meta(To=2, H=2, Ta=1)
    p = _policy(meta, posterior_dim=0, prox=0.1)
    assert p.h_l is None and not any(n.startswith("h_l.") for n, _ in p.named_parameters())
    assert p.f[0].in_features == TINY["latent_dim"] + M  # f sees [z_s, a] and no noise inputs
    batch = _batch(meta)
    loss, metrics = p.compute_loss(batch)
    assert metrics["kl"] == 0 and loss.item() == pytest.approx(metrics["mse"], rel=1e-6)
    loss.backward()
    assert all(q.grad is not None and q.grad.abs().sum() > 0 for q in p.f[0].parameters())
    p.eval()
    obs = _batch(meta, seed=5, b=4)["obs"]
    torch.manual_seed(1)
    a1 = p.predict_action(obs)
    torch.manual_seed(2)
    assert torch.equal(a1, p.predict_action(obs))  # no latent sample: the same action every time
    with pytest.raises(ValueError, match="posterior_dim must be >= 0"):
        _policy(meta, posterior_dim=-1)


def test_imitation_loss_moves_f_d_and_encoders_through_the_solve_but_not_the_base():
    base_meta = ShapeMeta(obs={"state": (5,)}, action_dim=M, obs_horizon=3, horizon=3, n_action_steps=1)
    base = _Constant(base_meta, [190.0, 215.0])
    meta = _meta(To=2, H=2, Ta=1, base=base_meta)
    assert meta.obs_horizon == 3 and meta.extra["enc_obs_horizon"] == 2  # the base's longer history
    p = _policy(meta, base=base, init="base", prox=0.1)
    before = {k: v.detach().clone() for k, v in p.named_parameters()}
    loss, metrics = p.compute_loss(_batch(meta))
    assert metrics["solve_failed"] == 0
    loss.backward()
    # f and d enter the loss only through the solution a(θ): their gradients prove the backward
    # went through the trajectory optimisation (d only matters from the second plan step on).
    for name in ("f", "d", "h_o", "h_l"):
        weights = [q.grad for n, q in getattr(p, name).named_parameters() if n.endswith("weight")]
        assert all(g is not None and g.abs().sum() > 0 for g in weights), name
    assert p.f[-1].bias.grad is None  # an additive constant in f cannot move the argmax
    assert all(q.grad is None and not q.requires_grad for q in p.base.parameters())
    opt = torch.optim.Adam([q for q in p.parameters() if q.requires_grad], lr=1e-2)
    opt.step()
    after = dict(p.named_parameters())
    for prefix in ("f.", "d.", "h_o.", "h_l."):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix)), prefix
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("base."))
    p.train()
    assert not p.base.training  # a frozen base stays in eval mode


def test_without_the_solve_gradient_f_would_get_nothing():
    """Control for the test above: with backward='none' the same loss leaves f and d without gradient."""
    meta = _meta(To=2, H=2)
    p = _policy(meta, backward="none", prox=0.1)
    loss, _ = p.compute_loss(_batch(meta))
    loss.backward()
    assert all(q.grad is None or q.grad.abs().sum() == 0 for q in [*p.f.parameters(), *p.d.parameters()])


def test_zero_random_and_base_initialisations():
    meta = _meta(To=1, H=2)
    obs = _batch(meta)["obs"]
    zero = _policy(meta, init="zero").initial_actions(obs)
    assert zero.shape == (B, 2, M) and not zero.any()
    torch.manual_seed(1)
    r1 = _policy(meta, init="random").initial_actions(obs)
    torch.manual_seed(1)
    r2 = _policy(meta, init="random").initial_actions(obs)
    assert r1.abs().max() <= 1 and r1.std() > 0.3 and torch.equal(r1, r2)
    # base: its raw action, normalised (a one-step chunk held over the 2-step plan)
    base = _Constant(ShapeMeta(obs={"state": (5,)}, action_dim=M), [190.0, 215.0])
    p = _policy(meta, base=base, init="base", prox=1.0)
    init = p.initial_actions(obs)
    want = p.normalizer.normalize("action", torch.tensor([190.0, 215.0]))
    assert torch.allclose(init, want.expand(B, 2, M))
    # zero_init_f: f starts flat, the objective is -prox/2 ||A - A_init||^2 and the untrained policy
    # returns the base's action; the imitation loss still reaches f's last layer through the solve.
    p = _policy(meta, base=base, init="base", prox=1.0, zero_init_f=True)
    want = torch.tensor([190.0, 215.0]).expand(B, 1, M)
    assert torch.allclose(p.eval().predict_action(obs), want, atol=1e-3)
    loss, _ = p.train().compute_loss(_batch(meta))
    loss.backward()
    assert p.f[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="base"):
        DiffTOPPolicy(meta, init="base", **TINY)


def test_samples_are_independent_problems():
    """The batch is B separate solves (never one flattened variable): a sample's action does not
    depend on the rest of the batch."""
    meta = _meta(To=2, H=1)
    p = _policy(meta, sample_latent=False, prox=0.1).eval()
    obs = _batch(meta)["obs"]
    full = p.predict_action(obs)
    one = torch.cat([p.predict_action({k: v[i : i + 1] for k, v in obs.items()}) for i in range(3)])
    assert torch.allclose(full[:3], one, atol=1e-5)
    assert full.std(0).min() > 0.1  # not all at one box vertex: the check above is not vacuous
    # test time draws z~ ~ N(0, I): two draws differ; sample_latent=False is deterministic
    p.sample_latent = True
    assert not torch.equal(p.predict_action(obs), p.predict_action(obs))


def test_a_failed_solve_is_left_out_of_the_loss():
    meta = _meta()
    p = _policy(meta, prox=0.1)
    value = p._value

    def nan_first(z, a):  # the first sample's objective is NaN everywhere
        v = value(z, a)
        return torch.where(torch.arange(len(v)) == 0, torch.full_like(v, float("nan")), v)

    p._taped = (p._dynamics, nan_first)  # what the objective calls (autograd functions here)
    loss, metrics = p.compute_loss(_batch(meta))
    assert torch.isfinite(loss) and metrics["solve_failed"] == pytest.approx(1 / B)
    loss.backward()
    assert all(torch.isfinite(q.grad).all() for q in p.parameters() if q.grad is not None)
    p._taped = (p._dynamics, lambda z, a: torch.full_like(value(z, a), float("nan")))
    loss, metrics = p.compute_loss(_batch(meta))
    assert not torch.isfinite(loss) and metrics["solve_failed"] == 1.0  # the trainer skips such a step
    _, info, _ = p.solve(_batch(meta)["obs"])
    assert bool(((info.status & NONFINITE_INIT) != 0).all())


def test_image_observations():
    meta = _meta(To=2, obs={"agent_pos": (2,), "img": (3, 16, 16)})
    p = _policy(meta, encoder=dict(image_channels=(4, 8), num_kp=4, image_dim=8))
    batch = _batch(meta)
    loss, _ = p.compute_loss(batch)
    loss.backward()
    assert any(q.grad is not None and q.grad.abs().sum() > 0 for q in p.obs_encoder.parameters())
    assert p.eval().predict_action(batch["obs"]).shape == (B, 1, M)


@pytest.mark.parametrize("prox", [0.0, 0.3])
def test_objective_has_autograds_value_and_gradient_without_autograd(prox):
    """The objective's graph-free value_grad (hand-written VJPs of d and f, and of the proximal term) equals
    autograd's: the solver's iterations take it (difftop/nn/vjp.py). Bit for bit without the proximal
    term; with it, to rounding (autograd adds the three gradient terms of an action in another order)."""
    meta = _meta(H=3)
    p = _policy(meta, prox=prox)
    g = torch.Generator().manual_seed(1)
    z_s, z_t = torch.randn(B, 6, generator=g), torch.randn(B, 4, generator=g)
    anchor = torch.rand(B, 3, M, generator=g) * 2 - 1
    A = torch.rand(B, 3, M, generator=g) * 2 - 1
    J = p.objective(z_s, z_t, anchor)
    v, grad = J.value_grad(A)
    Al = A.clone().requires_grad_(True)
    v2 = J(Al)
    (grad2,) = torch.autograd.grad(v2.sum(), Al)
    assert torch.equal(v, v2.detach())
    if prox == 0:
        assert torch.equal(grad, grad2)
    torch.testing.assert_close(grad, grad2, rtol=1e-6, atol=1e-7)
