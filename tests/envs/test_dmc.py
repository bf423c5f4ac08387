"""Tests of the DeepMind Control Suite adapter (difftop/envs/dmc.py)."""

from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from difftop.envs import ACTION_REPEAT, DMC_TASKS, default_action_repeat, make_env, task_key
from difftop.envs.dmc import resolve_task
from difftop.errors import UserError

pytest.importorskip("dm_control")


@pytest.fixture
def env_factory():
    """Build envs and close them all at the end (frees rendering contexts)."""
    made = []

    def make(*args, **kwargs):
        env = make_env(*args, **kwargs)
        made.append(env)
        return env

    yield make
    for env in made:
        env.close()


def test_task_names_resolve():
    assert resolve_task("cartpole-swingup-sparse") == ("cartpole", "swingup_sparse")
    assert resolve_task("cartpole-swingup_sparse") == ("cartpole", "swingup_sparse")
    assert resolve_task("cup-catch") == ("ball_in_cup", "catch")
    assert resolve_task("ball_in_cup-catch") == ("ball_in_cup", "catch")
    assert resolve_task("finger-turn-easy") == ("finger", "turn_easy")
    assert resolve_task("point_mass-easy") == ("point_mass", "easy")
    assert task_key("ball_in_cup-catch") == "cup-catch"
    assert len(DMC_TASKS) == 16 and len(set(DMC_TASKS)) == 16
    for task in DMC_TASKS:
        resolve_task(task)  # every listed task exists in dm_control
    from dm_control import suite

    keys = {task_key(f"{d}-{t}") for d, t in suite.ALL_TASKS}
    assert len(keys) == len(suite.ALL_TASKS)  # the canonical spelling is unambiguous


def test_default_action_repeat():
    assert default_action_repeat("cartpole-swingup") == 8
    assert default_action_repeat("cup-catch") == default_action_repeat("ball_in_cup-catch") == 2
    for task in ("cheetah-run", "finger-spin", "pendulum-swingup", "walker-walk"):
        assert default_action_repeat(task) == 2
    for task in ("quadruped-run", "reacher-easy", "hopper-stand", "acrobot-swingup"):
        assert default_action_repeat(task) == 4
    assert ACTION_REPEAT["cartpole"] == 8


def test_unknown_task_is_one_line_user_error_listing_names():
    with pytest.raises(UserError) as e:
        make_env("cartpole-swingdown")
    msg = str(e.value)
    assert "\n" not in msg and "'cartpole-swingdown'" in msg
    assert all(t in msg for t in DMC_TASKS)
    assert msg.index("walker-walk") < msg.index("acrobot-swingup")  # paper tasks first
    with pytest.raises(UserError, match="obs="):
        make_env("cartpole-swingup", obs="depth")


def test_action_repeat_sums_rewards_and_counts_env_steps(env_factory):
    from dm_control import suite

    env = env_factory("cartpole-swingup", action_repeat=4, episode_length=40, seed=3)
    assert env.action_space == gym.spaces.Box(-1, 1, (1,), np.float32)
    raw = suite.load("cartpole", "swingup", task_kwargs={"random": 3})
    obs, _ = env.reset()
    ts = raw.reset()
    expected_obs = np.concatenate([v.ravel() for v in ts.observation.values()]).astype(np.float32)
    np.testing.assert_array_equal(obs, expected_obs)
    rng = np.random.default_rng(0)
    for t in range(10):
        a = rng.uniform(-1, 1, size=1).astype(np.float32)
        obs, reward, terminated, truncated, info = env.step(a)
        expected = sum(raw.step(a.astype(np.float64)).reward for _ in range(4))
        assert reward == pytest.approx(expected, rel=1e-12, abs=1e-12)
        assert terminated is False and truncated is (t == 9)
        assert info == {"discount": 1.0}
    assert raw.physics.data.time == pytest.approx(env._env.physics.data.time)
    assert obs.dtype == np.float32 and obs.shape == env.observation_space.shape


def test_default_episode_is_1000_env_steps(env_factory):
    env = env_factory("cartpole-swingup")  # action repeat 8: 125 agent steps
    env.reset(seed=0)
    steps, truncated = 0, False
    while not truncated:
        _, _, _, truncated, _ = env.step(np.zeros(1, np.float32))
        steps += 1
    assert steps == 125 and env.action_repeat == 8
    assert env._env.physics.data.time == pytest.approx(1000 * env._env.control_timestep())


def test_actions_map_linearly_to_spec_bounds(env_factory):
    env = env_factory("cartpole-swingup", action_repeat=1)
    env.reset(seed=0)
    env._act_low[:], env._act_high[:] = 0.0, 0.5  # pretend the spec were [0, 0.5]
    for a, ctrl in ((1.0, 0.5), (-1.0, 0.0), (0.0, 0.25), (7.0, 0.5)):
        env.step(np.array([a], np.float32))
        assert env._env.physics.data.ctrl[0] == pytest.approx(ctrl)


def test_frame_stack_shapes_and_shift(env_factory):
    env = env_factory("cartpole-swingup", obs="pixels", image_size=32, frame_stack=3, action_repeat=2)
    assert env.observation_space.shape == (9, 32, 32) and env.observation_space.dtype == np.uint8
    obs, _ = env.reset(seed=0)
    assert obs.shape == (9, 32, 32) and obs.dtype == np.uint8
    np.testing.assert_array_equal(obs[0:3], obs[3:6])  # reset fills the stack with the first frame
    np.testing.assert_array_equal(obs[3:6], obs[6:9])
    prev = obs
    for _ in range(2):
        obs, *_ = env.step(np.ones(1, np.float32))
        np.testing.assert_array_equal(obs[:6], prev[3:])  # oldest frame dropped, others shift
        np.testing.assert_array_equal(obs[6:], env._render(32).transpose(2, 0, 1))  # newest = now
        assert not np.array_equal(obs[6:], prev[6:])  # the cart moved
        prev = obs


@pytest.mark.filterwarnings("ignore:.*infinity:UserWarning", "ignore:.*alternative render modes:UserWarning")
def test_check_env_state_and_pixels(env_factory):
    check_env(env_factory("cartpole-swingup", render_size=32))
    check_env(env_factory("reacher-easy", obs="pixels", image_size=24, render_size=32))


def test_seeding_is_reproducible(env_factory):
    a, b = env_factory("walker-walk", seed=7), env_factory("walker-walk", seed=7)
    o1, o2 = a.reset()[0], b.reset()[0]
    np.testing.assert_array_equal(o1, o2)  # make_env's seed drives the first reset
    np.testing.assert_array_equal(o1, a.reset(seed=7)[0])
    assert not np.array_equal(a.reset(seed=8)[0], o1)
    seq1 = [a.reset(seed=11)[0], a.reset()[0]]
    seq2 = [b.reset(seed=11)[0], b.reset()[0]]
    np.testing.assert_array_equal(np.stack(seq1), np.stack(seq2))
    assert not np.array_equal(seq1[0], seq1[1])  # an unseeded reset draws a new initial state


def test_render_frame(env_factory):
    env = env_factory("cartpole-swingup", render_size=48)
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (48, 48, 3) and frame.dtype == np.uint8 and frame.std() > 0
    assert env_factory("quadruped-walk").camera_id == 2 and env.camera_id == 0


def test_gymnasium_ids():
    import difftop.envs  # noqa: F401  (registers the ids)

    env = gym.make("difftop/dmc-cartpole-swingup-v0", obs="state")
    try:
        assert env.unwrapped.task == "cartpole-swingup" and env.observation_space.shape == (5,)
    finally:
        env.close()
    env = gym.make("difftop/dmc-v0", task="ball_in_cup-catch", action_repeat=3)
    try:
        assert env.unwrapped.task == "cup-catch" and env.unwrapped.max_agent_steps == 333
    finally:
        env.close()
    assert all(f"difftop/dmc-{t}-v0" in gym.registry for t in DMC_TASKS)


def test_package_import_is_cheap():
    mods = "('dm_control', 'mujoco', 'torch')"
    code = f"import sys, difftop.envs; print(sorted(m for m in {mods} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_absl_handler_never_holds_a_swapped_stderr():
    # absl (via dm_control) closes the stderr it captured on Hydra's logging reconfiguration when
    # sys.stderr has changed since: under pytest that closed the capture file and killed the session.
    resolve_task("cup-catch")
    from absl import logging as absl_logging

    assert absl_logging.get_absl_handler().python_handler.stream is sys.__stderr__
