"""ManiSkill3 on the CPU: the Vulkan set-up, the point-cloud filter, the envs and the motion-planner experts.

The simulator tests skip, naming the fix, when the Vulkan driver that ``make venv`` unpacks is absent.
The first point-cloud env of a process compiles lavapipe's pipelines (20-60 s on busy cores): one env
serves the point-cloud tests; the experts run on state observations (no rendering).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from difftop.envs.maniskill import FIX, delta_actions, ensure_vulkan, filter_points, vulkan_problem
from difftop.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
needs_vulkan = pytest.mark.skipif(vulkan_problem() is not None, reason=str(vulkan_problem()))
#: a seed on which each task's planner succeeds (measured, see results/il/pointcloud/maniskill.md)
EXPERT_SEEDS = {"pickcube": 0, "stackcube": 0, "peginsertionside": 2}


def test_filter_points_drops_segments_crops_and_samples():
    rng = np.random.default_rng(0)
    xyz = rng.uniform(-0.5, 0.5, (400, 3)).astype(np.float32)
    xyz[:, 2] = np.abs(xyz[:, 2])
    seg = rng.integers(1, 4, 400).astype(np.int16)  # 1: robot, 2: cube, 3: table (dropped)
    w = np.ones((400, 1), np.float32)
    w[:50] = 0.0  # background pixels
    xyz[60:70, 0] = 5.0  # outside the crop box
    rgb = np.full((400, 3), 255, np.uint8)
    out = filter_points(np.hstack([xyz, w]), rgb, seg, [3], (-1, -1, -0.01), (1, 1, 1), 64)
    assert out.shape == (64, 6) and out.dtype == np.float32
    kept = {tuple(p) for p in xyz[(w[:, 0] > 0) & (seg != 3) & (xyz[:, 0] < 2)].round(5)}
    assert {tuple(p) for p in out[:, :3].round(5)} <= kept
    assert len({tuple(p) for p in out[:, :3]}) == 64  # farthest points: no repeats while enough are left
    np.testing.assert_allclose(out[:, 3:], 1.0)
    empty = filter_points(np.hstack([xyz, w]), None, seg, [1, 2, 3], (-1, -1, -1), (1, 1, 1), 8)
    assert empty.shape == (8, 3) and not empty.any()  # nothing left: zeros, not a crash


def test_missing_driver_is_one_line_error_naming_the_fix(monkeypatch, tmp_path):
    monkeypatch.delenv("VK_ICD_FILENAMES", raising=False)
    monkeypatch.setenv("DIFFTOP_VULKAN_DIR", str(tmp_path))
    with pytest.raises(UserError) as e:
        ensure_vulkan()
    msg = str(e.value)
    assert "\n" not in msg and "make venv" in msg and "tools/fetch_mesa.sh" in msg and FIX in msg
    monkeypatch.setenv("VK_ICD_FILENAMES", str(tmp_path / "nope.json"))
    assert "nope.json" in vulkan_problem()


def test_fetch_mesa_is_idempotent_and_fails_in_one_line(tmp_path):
    script = ROOT / "tools" / "fetch_mesa.sh"
    done = tmp_path / "done"
    done.mkdir()
    (done / ".stamp").write_text("mesa-vulkan-drivers test\n")
    r = subprocess.run([script, str(done)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout == "" and sorted(p.name for p in done.iterdir()) == [".stamp"]
    env = {**os.environ, "DEBIAN_MIRROR": "http://127.0.0.1:9/debian"}  # nothing listens on port 9
    r = subprocess.run([script, str(tmp_path / "new")], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 1 and not (tmp_path / "new" / ".stamp").exists()
    assert r.stderr.strip().startswith("tools/fetch_mesa.sh: apt-get update") and "\n" not in r.stderr.strip()


def test_tasks_registered():
    from difftop.tasks import get_task

    for name in EXPERT_SEEDS:
        task = get_task(f"maniskill-{name}")
        assert task.keys("pointcloud") == ("point_cloud", "agent_pos") and task.expert


def test_tasks_train_on_relative_targets_converted_once():
    from difftop.data.episodes import EpisodeData
    from difftop.tasks import get_task

    rng = np.random.default_rng(0)
    qpos = rng.uniform(-1, 1, (6, 9)).astype(np.float32)
    action = np.concatenate([qpos[:, :7] + 0.01, np.ones((6, 1), np.float32)], axis=1)
    data = EpisodeData({"agent_pos": qpos, "action": action.copy()}, np.array([3, 6]))
    task = get_task("maniskill-pickcube")
    task.derive(data, "pointcloud")
    np.testing.assert_allclose(data["action"][:, :7], 0.01, atol=1e-6)  # target - qpos
    np.testing.assert_array_equal(data["action"][:, 7], 1.0)  # the gripper stays absolute
    task.derive(data, "pointcloud")  # a second call must not subtract qpos again
    np.testing.assert_allclose(data["action"][:, :7], 0.01, atol=1e-6)
    state = EpisodeData({"state": qpos, "action": action.copy()}, np.array([6]))  # obs=state: qpos leads it
    task.derive(state, "state")
    np.testing.assert_allclose(state["action"][:, :7], 0.01, atol=1e-6)
    np.testing.assert_allclose(delta_actions(action, qpos), data["action"])


@needs_vulkan
def test_relative_targets_replay_the_planner_exactly():
    """The planner's absolute targets, converted, give the same episode in the tasks' delta frame."""
    from difftop.envs.maniskill import make_maniskill
    from difftop.il.experts import make_demo_task

    r = make_demo_task("maniskill-pickcube", {"images": False, "max_steps": 200}).rollout(0)
    assert r.success
    rel = delta_actions(r.steps["action"], r.steps["state"])
    env = make_maniskill("pickcube", "state", max_steps=200, actions="delta", render=False)
    try:
        obs, _ = env.reset(seed=0)
        for t, a in enumerate(rel):
            np.testing.assert_allclose(obs["state"], r.steps["state"][t], atol=1e-4)  # float32 rounding
            obs, _, _, _, info = env.step(a)
        assert info["success"]
    finally:
        env.close()
    with pytest.raises(UserError, match="action frame"):
        make_maniskill("pickcube", "state", actions="relative")


@needs_vulkan
@pytest.mark.parametrize("name", sorted(EXPERT_SEEDS))
def test_expert_succeeds_on_a_fixed_seed(name):
    from difftop.il.experts import make_demo_task

    demo = make_demo_task(f"maniskill-{name}", {"images": False, "max_steps": 200})
    r = demo.rollout(EXPERT_SEEDS[name])
    assert r.success
    n = len(r.steps["action"])
    assert 10 < n <= 200 and r.steps["state"].shape[0] == n and r.steps["action"].shape == (n, 8)
    assert np.isfinite(r.steps["state"]).all()


@needs_vulkan
def test_pickcube_point_cloud_env():
    from difftop.envs.maniskill import make_maniskill

    env = make_maniskill("pickcube", "pointcloud", max_steps=3, n_points=256, render=False)
    try:
        obs, info = env.reset(seed=0)
        assert obs["point_cloud"].shape == (256, 6) and obs["point_cloud"].dtype == np.float32
        assert obs["agent_pos"].shape == env.observation_space["agent_pos"].shape and info["success"] is False
        assert info["is_grasped"] is False  # the task's "grasped" metric, read at reset too
        pts = obs["point_cloud"]
        assert pts[:, 2].min() > -0.01  # the ground (z = -0.92) and the table top were dropped...
        assert (pts[:, 2] > 0.1).mean() > 0.5  # ...so most points are on the robot arm above the table
        assert len(np.unique(pts[:, :3], axis=0)) == 256
        hold = np.concatenate([obs["agent_pos"][:7], [1.0]]).astype(np.float32)  # hold the joints
        for _ in range(3):
            obs2, _, terminated, truncated, info = env.step(hold)
        assert truncated and not terminated and isinstance(info["success"], bool) and "is_grasped" in info
        assert obs2["point_cloud"].shape == (256, 6)
    finally:
        env.close()


def test_a_policy_trained_in_another_action_frame_is_refused():
    from types import SimpleNamespace

    from difftop.il.rollout import check_action_frame
    from difftop.tasks import get_task

    pick, pusht = get_task("maniskill-pickcube"), get_task("pusht")
    old = SimpleNamespace(_difftop_spec={"name": "bc", "action_frame": "absolute"})
    with pytest.raises(UserError, match="trained on absolute actions.*takes delta actions") as e:
        check_action_frame(old, pick, "checkpoint x")
    assert "\n" not in str(e.value) and str(e.value).startswith("checkpoint x")
    check_action_frame(SimpleNamespace(_difftop_spec={"action_frame": "delta"}), pick, "p")
    check_action_frame(SimpleNamespace(_difftop_spec={"name": "bc"}), pick, "p")  # unrecorded: trusted
    check_action_frame(old, pusht, "p")
