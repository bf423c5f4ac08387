"""MetaWorld v3 tasks (difftop/envs/metaworld.py, difftop/tasks/metaworld.py, the scripted experts):
names, seeded random resets, point clouds in the world frame, experts, ``difftop demos``."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
pytest.importorskip("metaworld")

from difftop.cli import main  # noqa: E402
from difftop.envs.metaworld import make_metaworld, metaworld_tasks, scripted_policy  # noqa: E402
from difftop.errors import UserError  # noqa: E402
from difftop.tasks import get_task  # noqa: E402


@pytest.fixture
def envs():
    made = []

    def make(*args, **kw):
        made.append(make_metaworld(*args, **kw))
        return made[-1]

    yield make
    for e in made:
        e.close()


def test_task_family_resolves_any_v3_name_and_lists_them_when_unknown():
    assert len(metaworld_tasks()) == 50 and {"assembly", "pick-place", "stick-pull"} <= set(metaworld_tasks())
    task = get_task("metaworld-pick-place")
    assert task.name == "metaworld-pick-place" and task.keys("pointcloud") == ("point_cloud", "agent_pos")
    with pytest.raises(UserError, match="choose metaworld-<name> with one of: assembly, basketball"):
        get_task("metaworld-nope")
    with pytest.raises(UserError, match="pusht.*metaworld-<name>"):
        get_task("nope")


def test_reset_seed_repeats_a_layout_and_other_seeds_change_it(envs):
    env = envs("pick-place", "state", max_steps=5)
    a, info = env.reset(seed=3)
    assert info["success"] is False and a.shape == (39,) and a.dtype == np.float32
    b, _ = env.reset(seed=3)
    c, _ = env.reset(seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a[4:7], c[4:7])  # the object moved
    for _ in range(5):
        _, _, term, trunc, info = env.step(np.zeros(4))
    assert trunc and not term and "success" in info


def test_point_cloud_is_in_the_world_frame(envs):
    env = envs("pick-place", "pointcloud", max_steps=5)
    obs, _ = env.reset(seed=0)
    pc, agent = obs["point_cloud"], obs["agent_pos"]
    assert pc.shape == (512, 3) and pc.dtype == np.float32 and agent.shape == (9,)
    lo, hi = np.array(env.points.crop_low), np.array(env.points.crop_high)
    assert np.all(pc >= lo - 1e-6) and np.all(pc <= hi + 1e-6)
    # the puck (state[4:7], its centre) and the hand are where the cloud has points: a flipped or
    # mis-posed camera puts its nearest point tens of centimetres away
    for where in (env.state[4:7], agent[:3]):
        assert np.linalg.norm(pc - where, axis=1).min() < 0.05
    # the puck moves with its layout: the nearest point follows it
    obs2, _ = env.reset(seed=1)
    assert np.linalg.norm(obs2["point_cloud"] - env.state[4:7], axis=1).min() < 0.05
    assert env.render().shape == (84, 84, 3)


@pytest.mark.parametrize("name,seed", [("assembly", 0), ("pick-place", 0), ("stick-pull", 1),
                                       ("shelf-place", 0), ("disassemble", 0)])
def test_scripted_expert_succeeds_on_a_fixed_seed(envs, name, seed):
    env = envs(name, "state", max_steps=300)
    policy = scripted_policy(name)
    env.reset(seed=seed)
    term = trunc = False
    while not (term or trunc):
        _, _, term, trunc, info = env.step(policy.get_action(env.state))
    assert term and info["success"], f"{name} expert failed on seed {seed}"


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match="unknown MetaWorld task"):
        scripted_policy("asembly")
    with pytest.raises(UserError, match="obs_type"):
        make_metaworld("reach", "image")
    with pytest.raises(UserError, match="point-cloud option"):
        make_metaworld("reach", "pointcloud", nump=3)


def test_demos_command_writes_point_cloud_episodes(tmp_path, capsys):
    from difftop.data import load_zarr

    out = tmp_path / "mw.zarr"
    assert main(["demos", "task=metaworld-reach", "episodes=1", f"out={out}", "progress=false"]) == 0
    ep = load_zarr(out)
    n = ep.n_steps
    assert ep.n_episodes == 1 and 1 <= n <= 300
    assert ep["point_cloud"].shape == (n, 512, 3) and ep["agent_pos"].shape == (n, 9)
    assert ep["state"].shape == (n, 39) and ep["action"].shape == (n, 4)
    assert np.abs(ep["action"]).max() <= 1.0
    # the first recorded observation is the reset's: its proprio state matches the stored state's hand
    np.testing.assert_allclose(ep["agent_pos"][0, :3], ep["state"][0, :3], atol=1e-5)
