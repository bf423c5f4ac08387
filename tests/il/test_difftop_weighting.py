"""DiffTOP imitation: the release's loss weighting, a fresh base draw per batch, and the logged
``kl`` / ``refine_abs`` (issue 31). Tiny networks, synthetic batches (helpers of test_difftop_cvae)."""

from __future__ import annotations

import pytest
import torch

from difftop.il.policies.base import Policy
from difftop.il.policies.difftop_cvae import DiffTOPPolicy, kl_to_standard_normal
from tests.il.test_difftop_cvae import _batch, _meta, _policy


class _Noisy(Policy):
    """A stochastic frozen base (as Diffusion is): a fresh draw around 200 at every query."""

    def __init__(self, meta):
        super().__init__(meta)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def predict_action(self, obs):
        b = next(iter(obs.values())).shape[0]
        return 200 + 30 * torch.randn(b, self.shape_meta.n_action_steps, self.shape_meta.action_dim)

    def compute_loss(self, batch):
        raise NotImplementedError


def _loss_parts(p: DiffTOPPolicy, batch: dict):
    """(loss, normalised plan error per sample (B,), KL per sample (B,)) recomputed from one seeded draw."""
    torch.manual_seed(5)
    loss, metrics = p.compute_loss(batch)
    torch.manual_seed(5)  # the same posterior draw as inside compute_loss
    To, H = p.shape_meta.obs_horizon, p.plan_horizon
    a_star = p.normalizer.normalize("action", batch["action"][:, To - 1: To - 1 + H])
    z_s = p.encode(batch["obs"])
    mu, logvar = p.posterior(z_s, a_star)
    z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
    init = batch["base_action"] if "base_action" in batch else p.initial_actions(batch["obs"], stateless=True)
    plan, _ = p.trajopt(p.objective(z_s, z, init), init)
    return loss, metrics, (plan - a_star).pow(2), kl_to_standard_normal(mu, logvar)


@pytest.mark.parametrize("weighting", ["paper", "official"])
def test_loss_weighting_is_the_stated_formula(weighting):
    meta = _meta(H=2)
    p = _policy(meta, loss_weighting=weighting, beta=0.5)
    batch = _batch(meta)
    loss, metrics, err, kl = _loss_parts(p, batch)
    if weighting == "paper":
        expected = (err.sum((1, 2)) + 0.5 * kl).mean()
    else:  # the release: 3000 * nn.MSELoss()(plan, a*) + 10 * mean over the batch of the summed KL
        expected = 3000 * err.mean() + 10 * kl.mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert metrics["kl"] == pytest.approx(float(kl.detach().mean()), rel=1e-5)
    assert metrics["refine_abs"] >= 0


def test_official_weighting_changes_the_kl_share():
    """Same batch and weights: the official weighting puts 10 / (3000 / (H m)) of the paper's KL weight
    on the KL relative to the action error, so the two losses differ, by the stated factors."""
    meta = _meta(H=2)
    batch = _batch(meta)
    paper = _loss_parts(_policy(meta, loss_weighting="paper"), batch)
    official = _loss_parts(_policy(meta, loss_weighting="official"), batch)
    torch.testing.assert_close(paper[2], official[2])  # same solve: only the weighting differs
    n = paper[2][0].numel()
    torch.testing.assert_close(official[0] - 10 * official[3].mean(),
                               (3000 / n) * (paper[0] - paper[3].mean()), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="loss_weighting"):
        _policy(meta, loss_weighting="release")


def test_fresh_base_draw_per_batch_without_the_cache():
    """base_cache=false: the trainer passes no base_action, so a stochastic base is drawn again at every
    batch (the release's scheme); with the cache, the same fixed draw is reused."""
    meta = _meta()
    base = _Noisy(meta)
    base.set_normalizer(_policy(meta).normalizer)
    p = _policy(meta, base=base, init="base", prox=0.0)
    batch = _batch(meta)
    torch.manual_seed(1)
    _, m1 = p.compute_loss(batch)
    _, m2 = p.compute_loss(batch)
    assert m1["init_mse"] != m2["init_mse"]  # two draws of the base
    cached = {**batch, "base_action": p.initial_actions(batch["obs"], stateless=True)}
    _, c1 = p.compute_loss(cached)
    _, c2 = p.compute_loss(cached)
    assert c1["init_mse"] == c2["init_mse"]  # one draw, reused


def test_refine_abs_is_zero_when_the_solve_cannot_move():
    """zero-initialised f and a proximal term: the untrained policy returns its initialisation exactly,
    which the log shows as refine_abs = 0; a random f moves it."""
    meta = _meta()
    still = _policy(meta, zero_init_f=True, prox=0.1, init="random")
    assert still.compute_loss(_batch(meta))[1]["refine_abs"] == 0.0
    moving = _policy(meta, zero_init_f=False, prox=0.1, init="random")
    assert moving.compute_loss(_batch(meta))[1]["refine_abs"] > 1e-4
