"""The robosuite adapter: shapes, upright images, fresh frames, seeding, and state save/restore."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("robosuite")

from difftop.envs.robosuite import RobosuiteEnv  # noqa: E402
from difftop.errors import UserError  # noqa: E402
from difftop.tasks import get_task  # noqa: E402

CAMS = ("agentview", "robot0_eye_in_hand")
DOWN = np.array([0, 0, -1.0, 0, 0, 0, -1.0])  # move down, gripper open


@pytest.fixture(scope="module")
def env():
    e = RobosuiteEnv("Lift", cameras=CAMS, image_size=48, max_steps=5)
    yield e
    e.close()


def test_reset_and_step_shapes(env):
    o, info = env.reset(seed=0)
    assert info == {"success": False}
    assert env.action_space.shape == (7,)
    for k in ("agentview_image", "robot0_eye_in_hand_image"):
        assert o[k].shape == (3, 48, 48) and o[k].dtype == np.uint8
    assert o["robot0_eef_pos"].shape == (3,) and o["object-state"].shape == (10,)
    assert env.observation_space.contains(o)
    for _ in range(5):
        o, r, term, trunc, info = env.step(np.zeros(7))
        assert isinstance(r, float) and set(info) == {"success"} and not term
    assert trunc  # max_steps=5
    assert env.render().shape == (256, 256, 3)
    with pytest.raises(ValueError, match="action shape"):
        env.step(np.zeros(6))


def test_images_are_upright(env):
    """agentview looks at the white table from above its front edge: the table fills the bottom of an
    upright frame and the grey floor the top (robosuite's raw OpenGL frame is the other way up)."""
    o, _ = env.reset(seed=0)
    img = o["agentview_image"].astype(float).mean(0)
    band = img.shape[0] // 6
    assert img[-band:].mean() > img[:band].mean() + 40


def test_frames_change_and_a_stale_frame_is_caught(env, monkeypatch):
    o0, _ = env.reset(seed=1)
    o1, *_ = env.step(DOWN)
    o2, *_ = env.step(DOWN)
    for k in ("agentview_image", "robot0_eye_in_hand_image"):
        assert not np.array_equal(o1[k], o2[k])
    frozen = {c: env._frame(c, env.image_size) for c in CAMS}  # the frames just returned, again
    np.testing.assert_array_equal(frozen["agentview"].transpose(2, 0, 1), o2["agentview_image"])
    monkeypatch.setattr(env, "_frame", lambda cam, size: frozen[cam].copy())
    monkeypatch.setattr("difftop.envs.robosuite.FRESH_MOTION", 0.002)  # one step moves the arm ~1 cm
    with pytest.raises(RuntimeError, match="gave the same frames twice while the gripper moved"):
        env.step(DOWN)


def test_seeds_reproduce_and_differ(env):
    env.reset(seed=3)
    s3 = env.get_state()
    env.step(DOWN)
    env.reset(seed=4)
    s4 = env.get_state()
    env.reset(seed=3)
    np.testing.assert_array_equal(env.get_state(), s3)
    assert not np.allclose(s3, s4)


def test_state_round_trip_replays(env):
    """``set_state`` of a saved state, then the same actions: the same states (robomimic's replay;
    the gripper's command ramp, which is not simulator state, has saturated after 8 steps)."""
    env.reset(seed=2)
    for _ in range(8):
        env.step(DOWN)
    saved = env.get_state()
    first = [env.step(DOWN)[0] and env.get_state() for _ in range(3)]
    env.set_state(saved)
    np.testing.assert_array_equal(env.get_state(), saved)
    again = [env.step(DOWN)[0] and env.get_state() for _ in range(3)]
    np.testing.assert_allclose(np.stack(again), np.stack(first), atol=1e-6)


def test_task_observations_and_errors():
    task = get_task("transport")
    assert task.keys("image") == ("state", "shouldercamera0_image", "shouldercamera1_image",
                                  "robot0_eye_in_hand_image", "robot1_eye_in_hand_image")
    env = task.make_env("state", 3)
    try:
        o, info = env.reset(seed=0)
        assert env.action_space.shape == (14,) and not info["success"]
        assert task.env_obs(o, "state")["state"].shape == (2 * 9 + 41,)
    finally:
        env.close()
    with pytest.raises(UserError, match="Lift has no camera 'nope'"):
        RobosuiteEnv("Lift", cameras=("nope",))
