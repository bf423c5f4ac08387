"""The scripted robosuite experts succeed, and `difftop demos` writes robomimic's layout that trains and
matches what the task's rollouts observe."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("robosuite")

from difftop.cli import main  # noqa: E402
from difftop.data import load_dataset  # noqa: E402
from difftop.il.experts.robosuite_experts import EXPERTS  # noqa: E402
from difftop.tasks import get_task  # noqa: E402
from difftop.tasks.robomimic import STATE_KEYS  # noqa: E402


@pytest.mark.parametrize("name, seed", [("lift", 0), ("can", 0), ("square", 0), ("transport", 0),
                                        ("toolhang", 1)])
def test_expert_succeeds_on_a_fixed_seed(name, seed):
    task = EXPERTS[name](images=False)
    try:
        r = task.rollout(seed)
    finally:
        task.env.close()
    assert r.success
    n = len(r.steps["action"])
    assert n < task.max_steps and r.steps["dones"].tolist() == [0] * (n - 1) + [1]
    assert r.steps["action"].shape == (n, 7 * len(task.spec.robots))
    assert np.abs(r.steps["action"]).max() <= 1.0
    assert r.steps["states"].shape[0] == n and r.steps["object"].ndim == 2


def test_expert_timing_depends_on_the_seed():
    task = EXPERTS["lift"](images=False)
    try:
        a, b = task.rollout(1), task.rollout(2)
        again = task.rollout(1)
    finally:
        task.env.close()
    np.testing.assert_array_equal(a.steps["action"], again.steps["action"])
    assert len(a.steps["action"]) != len(b.steps["action"]) or not np.allclose(a.steps["action"],
                                                                                b.steps["action"])


def test_demos_write_robomimic_layout_round_trip(tmp_path):
    import h5py

    out = tmp_path / "lift.hdf5"
    assert main(["demos", "task=lift", "episodes=2", f"out={out}", "image_size=32", "progress=false"]) == 0
    with h5py.File(out, "r") as f:
        assert sorted(f["data"]) == ["demo_0", "demo_1"]
        d = f["data/demo_0"]
        t = int(d.attrs["num_samples"])
        assert d["actions"].shape == (t, 7) and d["states"].shape[0] == t
        assert d["rewards"].shape == (t,) and d["dones"][-1] == 1
        assert d["obs/agentview_image"].shape == (t, 32, 32, 3) and d["obs/agentview_image"].dtype == np.uint8
        assert d["obs/robot0_eye_in_hand_image"].shape == (t, 32, 32, 3)
        assert d["obs/object"].shape == (t, 10) and d["obs/robot0_eef_quat"].shape == (t, 4)
        args = json.loads(f["data"].attrs["env_args"])
        assert args["env_name"] == "Lift" and args["type"] == 1
        assert args["env_kwargs"]["camera_names"] == ["agentview", "robot0_eye_in_hand"]
        assert args["env_kwargs"]["controller_configs"]["body_parts"]["right"]["type"] == "OSC_POSE"
        masks = sorted(f["mask/train"][()].tolist() + f["mask/valid"][()].tolist())
        assert masks == [b"demo_0", b"demo_1"] and len(f["mask/valid"][()]) == 1
        states0 = d["states"][0]
    # read back with robomimic's obs_keys (as for an official file): state + images
    cams = ["agentview_image", "robot0_eye_in_hand_image"]
    data = load_dataset(out, obs_keys=[*STATE_KEYS["lift"]["image"], *cams])
    assert data["state"].shape[1] == 9 and data["agentview_image"].shape[1:] == (3, 32, 32)
    # the first recorded step is what the task's env observes after reset(seed) (replayed from states)
    task = get_task("lift")
    seed = int(load_dataset(out).episode_meta["episode_seed"][0])
    env = task.make_env("image", 10, 32)
    try:
        obs, _ = env.reset(seed=seed)
        np.testing.assert_array_equal(env.get_state(), states0)
        got = task.env_obs(obs, "image")
    finally:
        env.close()
    own = load_dataset(out)
    task.derive(own, "image")
    np.testing.assert_allclose(got["state"], own["state"][0], rtol=1e-6)
    np.testing.assert_array_equal(got["agentview_image"], own["agentview_image"][0])
