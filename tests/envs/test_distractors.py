"""``distractors=k`` of the DMC state env (issue 31's objective-mismatch setting): the first dims are the
unchanged state, the k appended dims follow the documented oscillator recurrence, and an episode's
distractors are reproducible from its reset seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from difftop.envs import make_env
from difftop.errors import UserError

pytest.importorskip("dm_control")

# cartpole: action repeat 8, so 96 simulator steps are 12 agent steps
KW = dict(episode_length=96, render_mode=None)


def _episode(env, seed: int, actions: np.ndarray) -> np.ndarray:
    obs = [env.reset(seed=seed)[0]]
    for a in actions:
        obs.append(env.step(a)[0])
    return np.stack(obs)


@pytest.fixture(scope="module")
def episodes():
    """(plain states, the same episode with 3 distractors, a replay of it, another seed's) of cartpole."""
    actions = np.random.default_rng(0).uniform(-1, 1, (12, 1)).astype(np.float32)
    plain = make_env("cartpole-swingup", seed=5, **KW)
    dist = make_env("cartpole-swingup", seed=5, distractors=3, **KW)
    try:
        out = (_episode(plain, 11, actions), _episode(dist, 11, actions), _episode(dist, 11, actions),
               _episode(dist, 12, actions))
        assert dist.observation_space.shape == (plain.observation_space.shape[0] + 3,)
    finally:
        plain.close()
        dist.close()
    return out


def test_the_state_is_unchanged_and_the_distractors_follow_the_recurrence(episodes):
    plain, dist, _, _ = episodes
    n = plain.shape[1]
    np.testing.assert_array_equal(dist[:, :n], plain)  # the reward's state: bit for bit the plain env's
    d = dist[:, n:].astype(np.float64)
    w0, w1 = 2 * np.pi / 8, 2 * np.pi / 13  # the documented omega_j = 2 pi / (8 + 5 j)
    # dims 0, 1: one unit oscillator turning by w0 per agent step: (c, s)_{t+1} = R(w0) (c, s)_t
    np.testing.assert_allclose(d[:, 0] ** 2 + d[:, 1] ** 2, 1.0, atol=1e-6)
    rot = np.array([[np.cos(w0), -np.sin(w0)], [np.sin(w0), np.cos(w0)]])
    np.testing.assert_allclose(d[1:, :2], d[:-1, :2] @ rot.T, atol=1e-5)
    # dim 2 (odd k): the cosine of the second oscillator, x_{t+1} = 2 cos(w1) x_t - x_{t-1}
    np.testing.assert_allclose(d[2:, 2], 2 * np.cos(w1) * d[1:-1, 2] - d[:-2, 2], atol=1e-5)
    assert np.ptp(d[:, 2]) > 0.5  # it moves (not a constant that satisfies any recurrence)


def test_the_distractors_are_reproducible_per_seed(episodes):
    _, dist, again, other = episodes
    np.testing.assert_array_equal(again, dist)
    n = dist.shape[1] - 3
    assert not np.allclose(other[0, n:], dist[0, n:], atol=1e-3)  # another seed: another phase


def test_bad_distractor_settings_are_one_line_errors():
    with pytest.raises(UserError, match="needs obs=state"):
        make_env("cartpole-swingup", "pixels", distractors=2)
    with pytest.raises(UserError, match="integer >= 0"):
        make_env("cartpole-swingup", distractors=-1)


def test_the_rl_config_key_reaches_the_env_and_the_agent():
    from difftop.cli import CONFIG_DIR
    from difftop.rl.trainer import build, resolve_config

    cfg = OmegaConf.load(CONFIG_DIR / "rl.yaml")
    cfg.pop("defaults")
    assert cfg.distractors == 0
    cfg = OmegaConf.merge(cfg, dict(mlp_dim=16, enc_dim=8, latent_dim=4, agent="tdmpc", episode_length=96,
                                    batch_size=8, horizon=3, device="cpu", distractors=2))
    env, evals, agent = build(resolve_config(cfg), eval_episodes=1)
    try:
        assert env.observation_space.shape == evals[0].observation_space.shape == (5 + 2,)
        assert agent.model.h(torch.zeros(1, 7)).shape == (1, 4)
    finally:
        for e in (env, *evals):
            e.close()
    with pytest.raises(UserError, match="needs obs=state"):
        resolve_config(OmegaConf.merge(cfg, {"obs": "pixels"}))
