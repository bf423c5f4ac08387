"""`difftop demos`: only successes are kept, runs continue after an interruption, real Push-T demos."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from difftop import cli
from difftop.data import load_zarr
from difftop.envs.pusht import make_pusht
from difftop.il.experts import DEMO_TASKS, Rollout


class FakeTask:
    """Seeds with seed % 3 == 1 fail; ``interrupt_at`` raises KeyboardInterrupt there (Ctrl-C)."""

    name = "fake"

    def __init__(self, interrupt_at: int = -1, **_: object) -> None:
        self.interrupt_at = interrupt_at

    def rollout(self, seed: int) -> Rollout:
        if seed == self.interrupt_at:
            raise KeyboardInterrupt
        n = 2 + seed % 2
        steps = {"state": np.full((n, 5), seed, np.float32), "action": np.full((n, 2), -seed, np.float32)}
        return Rollout(steps, seed % 3 != 1, {"episode_coverage": 1.0})

    def attrs(self) -> dict:
        return {"env": "fake"}


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setitem(DEMO_TASKS, "fake", f"{__name__}:FakeTask")


def demos(*args: str) -> int:
    return cli.main(["demos", "progress=false", *args])


def seeds(path) -> list[int]:
    return load_zarr(path).episode_meta["episode_seed"].tolist()


def test_keeps_successes_and_continues_after_interruption(tmp_path, fake, capsys):
    out = tmp_path / "f.zarr"
    assert demos("task=fake", "episodes=3", f"out={out}") == 0
    assert seeds(out) == [0, 2, 3]  # seed 1 failed and was not stored
    data = load_zarr(out)
    np.testing.assert_array_equal(data.episode_lengths, [2, 2, 3])
    np.testing.assert_array_equal(data.data["state"][:, 0], [0, 0, 2, 2, 3, 3, 3])
    assert data.attrs["next_seed"] == 4 and data.attrs["attempts"] == 4 and data.attrs["task"] == "fake"

    # Ctrl-C during the attempt of seed 6: seed 5's success is kept, nothing else is written
    assert demos("task=fake", "episodes=6", f"out={out}", "+experts.fake.interrupt_at=6") == 130
    assert seeds(out) == [0, 2, 3, 5]
    # the same command continues (seed 7 fails) instead of starting over
    assert demos("task=fake", "episodes=6", f"out={out}") == 0
    assert seeds(out) == [0, 2, 3, 5, 6, 8]
    assert "continuing from 4 episodes, next seed 6" in capsys.readouterr().out
    assert demos("task=fake", "episodes=5", f"out={out}") == 0
    assert "already holds 6 >= 5 episodes" in capsys.readouterr().out
    assert seeds(out) == [0, 2, 3, 5, 6, 8]


def test_workers_give_the_same_dataset(tmp_path, fake):
    assert demos("task=fake", "episodes=4", f"out={tmp_path / 'a.zarr'}", "workers=2", "seed=10") == 0
    assert seeds(tmp_path / "a.zarr") == [11, 12, 14, 15]


def test_input_errors(tmp_path, capsys):
    assert demos("task=nope", f"out={tmp_path / 'x.zarr'}") == 2
    assert "no expert for task 'nope'; valid tasks: pusht" in capsys.readouterr().err
    assert demos("episodes=0", f"out={tmp_path / 'x.zarr'}") == 2
    assert "episodes and workers must be >= 1" in capsys.readouterr().err
    assert demos(f"out={tmp_path / 'x.zarr.zip'}", "episodes=1") == 2
    assert "can only append to a zarr directory" in capsys.readouterr().err
    assert demos(f"out={tmp_path / 'x.zarr'}", "+experts.pusht.bogus=1") == 2
    assert "unknown Push-T expert option(s) ['bogus']" in capsys.readouterr().err
    assert not (tmp_path / "x.zarr").exists()


def replay_final_coverage(seed: int, actions: np.ndarray, states: np.ndarray) -> float:
    """Replay stored actions from the stored seed: success must come on the last step only."""
    env = make_pusht("state", seed=seed)
    env.reset(seed=seed)
    for t, a in enumerate(actions):
        np.testing.assert_array_equal(env.state(), states[t])
        _, _, term, _, info = env.step(a)
        assert term == (t == len(actions) - 1), f"success at step {t} of {len(actions)}"
    return info["coverage"]


def test_pusht_demos_are_successful_and_resume(tmp_path):
    """A real run on easy starts (seeds 1361 and 2897 are solved in about 50 steps)."""
    out = tmp_path / "pusht.zarr"
    assert demos("task=pusht", "episodes=1", "seed=1361", f"out={out}") == 0
    first = load_zarr(out)
    assert first.n_episodes == 1 and seeds(out) == [1361]
    n = first.n_steps
    assert first.data["img"].shape == (n, 3, 96, 96) and first.data["img"].dtype == np.uint8
    assert first.data["state"].shape == (n, 5) and first.data["keypoint"].shape == (n, 8, 2)
    assert first.data["action"].shape == (n, 2) and first.data["action"].dtype == np.float32
    assert zarr.open_group(str(out), mode="r")["data/img"].shape == (n, 96, 96, 3)  # diffusion_policy's
    assert first.attrs["next_seed"] == 1362

    # continue, from an easy seed so that the test stays fast
    zarr.open_group(str(out), mode="a").attrs["next_seed"] = 2897
    assert demos("task=pusht", "episodes=2", "seed=0", f"out={out}") == 0
    both = load_zarr(out)
    assert seeds(out) == [1361, 2897]
    for k in first.data:
        np.testing.assert_array_equal(both.episode(0)[k], first.data[k])

    # every stored episode really succeeds: replay its actions and check the coverage it reached
    for e in range(both.n_episodes):
        ep = both.episode(e)
        cov = replay_final_coverage(int(both.episode_meta["episode_seed"][e]), ep["action"], ep["state"])
        assert cov > 0.95 and abs(cov - both.episode_meta["episode_coverage"][e]) < 1e-9
        assert not np.array_equal(ep["img"][0], ep["img"][-1])  # images follow the episode
