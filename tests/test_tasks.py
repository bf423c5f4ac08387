"""A new task is one module (a :class:`difftop.tasks.Task`) plus one registry line: `difftop il` trains
on it, evaluates it with its own metrics, and `difftop eval` reports them. The toy task below is that
module, kept in this file: a point that must reach a goal on a plane."""

from __future__ import annotations

import csv
import json

import gymnasium as gym
import numpy as np
import pytest

from difftop.cli import main
from difftop.data import EpisodeData, save_zarr
from difftop.tasks import TASKS, Metric, Task, get_task


class Reach(gym.Env):
    """obs: (x, y, goal x, goal y); action: a step in [-1, 1]^2 scaled by 0.2."""

    observation_space = gym.spaces.Box(-2, 2, (4,), np.float32)
    action_space = gym.spaces.Box(-1, 1, (2,), np.float32)

    def __init__(self, max_steps: int):
        self.max_steps = max_steps

    def _info(self):
        d = float(np.linalg.norm(self.s[:2] - self.s[2:]))
        return {"success": d < 0.1, "distance": d}

    def reset(self, seed=None, options=None):
        rng = np.random.default_rng(seed)
        self.s, self.t = rng.uniform(-1, 1, 4).astype(np.float32), 0
        return self.s.copy(), self._info()

    def step(self, action):
        self.s[:2] += 0.2 * np.clip(action, -1, 1)
        self.t += 1
        info = self._info()
        return self.s.copy(), 0.0, info["success"], self.t >= self.max_steps, info

    def render(self):
        return np.zeros((8, 8, 3), np.uint8)


# ---- the whole adapter module of a new task:
TOY = Task(
    name="toy-reach",
    obs_keys={"state": ("state",)},
    make_env=lambda obs_type, max_steps, image_size=None: Reach(max_steps),
    env_obs=lambda obs, obs_type: {"state": np.asarray(obs, np.float32)},
    metrics=(Metric("final_distance", "distance", "last"),),
)


@pytest.fixture
def toy(monkeypatch, tmp_path):
    monkeypatch.setitem(TASKS, "toy-reach", f"{__name__}:TOY")  # ---- and its registry line
    rng = np.random.default_rng(0)
    eps = []
    for _ in range(6):
        s = rng.uniform(-1, 1, (10, 4)).astype(np.float32)
        eps.append({"state": s, "action": np.clip(5 * (s[:, 2:] - s[:, :2]), -1, 1).astype(np.float32)})
    data = tmp_path / "toy.zarr"
    save_zarr(EpisodeData.from_episodes(eps), data)
    return data


def test_a_registered_task_trains_evaluates_and_reports_its_metrics(toy, tmp_path, capsys):
    cols = ("success_rate", "mean_final_distance", "std_final_distance", "mean_length")
    assert get_task("toy-reach").eval_columns() == cols
    out = tmp_path / "run"
    assert main(["il", "task=toy-reach", "policy=bc", f"data={toy}", f"out_dir={out}", "steps=4",
                 "batch_size=8", "eval_every=0", "eval_episodes=2", "max_steps=5", "video=false",
                 "progress=false", "tensorboard=false", "policies.bc.hidden=[8]"]) == 0
    with open(out / "eval.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert {"success_rate", "mean_final_distance", "std_final_distance", "mean_length"} <= set(row)
    assert "coverage" not in "".join(row)
    assert float(row["mean_final_distance"]) >= 0
    capsys.readouterr()
    assert main(["eval", f"checkpoint={out}", "episodes=2", "video=false"]) == 0
    assert "mean final distance" in capsys.readouterr().out
    res = json.loads((out / "eval" / "eval.json").read_text())
    assert len(res["final_distance"]) == 2


def test_an_unknown_task_lists_the_registered_ones(capsys):
    assert main(["il", "task=nosuch", "--cfg", "job"]) == 0  # composing is fine; running is not
    assert main(["il", "task=nosuch", "steps=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown IL task 'nosuch'" in err and "pusht" in err
