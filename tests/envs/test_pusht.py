"""The Push-T adapter: observation conventions, success, and simulator save/restore."""

from __future__ import annotations

import numpy as np
import pytest

from difftop.envs.pusht import (
    GOAL_POSE,
    OBS_TYPES,
    PushT,
    block_keypoints,
    get_sim_state,
    has_contacts,
    make_pusht,
    set_sim_state,
)
from difftop.errors import UserError


def test_observation_conventions():
    shapes = {"state": (5,), "keypoints": (18,), "pixels": (3, 96, 96)}
    for obs in OBS_TYPES:
        env = make_pusht(obs, seed=1)
        o, info = env.reset()
        o2, r, term, trunc, info2 = env.step(env.action_space.sample())
        for x in (o, o2):
            if obs == "state+pixels":
                assert x["state"].shape == (5,) and x["state"].dtype == np.float32
                assert x["pixels"].shape == (3, 96, 96) and x["pixels"].dtype == np.uint8
            else:
                assert x.shape == shapes[obs] and x.dtype == (np.uint8 if obs == "pixels" else np.float32)
            assert env.observation_space.contains(x)
        assert set(info) >= {"coverage", "success"} and set(info2) >= {"coverage", "success"}
        assert 0.0 <= info2["coverage"] <= 1.0 and isinstance(r, float)
    env = make_pusht("pixels", render_size=64, video_size=80)
    assert env.reset()[0].shape == (3, 64, 64)
    assert env.render().shape == (80, 80, 3)
    assert env.action_space.low.tolist() == [0, 0] and env.action_space.high.tolist() == [512, 512]
    with pytest.raises(UserError, match="unknown Push-T observation type 'rgb'"):
        make_pusht("rgb")


def test_state_keypoints_and_pixels_agree_with_the_simulator():
    env = make_pusht("keypoints", seed=4)
    o, _ = env.reset()
    s = get_sim_state(env)
    np.testing.assert_allclose(o[16:], s[:2], atol=1e-4)
    np.testing.assert_allclose(o[:16].reshape(8, 2), block_keypoints(s[[4, 5, 6]]), atol=1e-3)
    st = env.state()
    np.testing.assert_allclose(st[:4], s[[0, 1, 4, 5]], atol=1e-4)
    assert 0 <= st[4] < 2 * np.pi
    # seeding: the factory's seed on the first reset, an explicit one afterwards
    a, b = make_pusht("state", seed=7), make_pusht("state", seed=7)
    np.testing.assert_array_equal(a.reset()[0], b.reset()[0])
    np.testing.assert_array_equal(a.reset(seed=3)[0], b.reset(seed=3)[0])
    assert not np.array_equal(a.reset(seed=3)[0], a.reset(seed=4)[0])


def test_success_at_the_goal_and_truncation():
    env = make_pusht("state", seed=0, max_steps=3)
    env.reset()
    far = np.array([40.0, 40.0, 0.0, 0.0, *GOAL_POSE, 0.0, 0.0, 0.0])
    set_sim_state(env, far)
    _, reward, term, trunc, info = env.step([40.0, 40.0])
    assert info["success"] and term and not trunc and reward == 1.0
    assert info["coverage"] > 0.99
    off = far.copy()
    off[4] += 12.0  # 12 px off the goal: not a success
    env.reset()
    set_sim_state(env, off)
    _, _, term, trunc, info = env.step([40.0, 40.0])
    assert not info["success"] and not term and 0.5 < info["coverage"] < 0.95
    env.step([40.0, 40.0])
    assert env.step([40.0, 40.0])[3]  # truncated after max_steps


def rollout(env: PushT, actions: np.ndarray) -> np.ndarray:
    return np.stack([np.concatenate([env.step(a)[0], get_sim_state(env)]) for a in actions])


def test_save_restore_reproduces_rollouts_exactly():
    rng = np.random.default_rng(0)
    env = make_pusht("state", seed=0)
    env.reset(seed=3)  # a start where neither the agent nor a wall touches the block
    assert not has_contacts(env)
    saved = get_sim_state(env)
    block = saved[4:6]
    actions = block + rng.normal(0, 40, size=(40, 2))  # pushes the block around
    original = rollout(env, actions)
    assert np.abs(original[-1, 9:11] - saved[4:6]).max() > 1.0  # the block was pushed

    other = make_pusht("state", seed=9)
    other.reset()
    other.step([100.0, 100.0])  # a different history
    set_sim_state(other, saved)
    np.testing.assert_array_equal(get_sim_state(other), saved)
    np.testing.assert_array_equal(rollout(other, actions), original)

    # mid-contact: two restores agree bit for bit whatever the envs' histories
    for _ in range(30):  # push into the block until they touch
        if has_contacts(env):
            break
        env.step(env.raw.block.position)
    assert has_contacts(env)
    mid = get_sim_state(env)
    more = block + rng.normal(0, 40, size=(20, 2))
    set_sim_state(other, mid)
    first = rollout(other, more)
    fresh = make_pusht("state", seed=1)
    fresh.reset()
    set_sim_state(fresh, mid)
    np.testing.assert_array_equal(rollout(fresh, more), first)
    with pytest.raises(ValueError, match="10 finite numbers"):
        set_sim_state(env, saved[:5])
