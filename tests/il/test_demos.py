"""`difftop demos`: only successes are kept, runs continue after an interruption, real Push-T demos."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from difftop import cli
from difftop.data import load_zarr
from difftop.envs.pusht import make_pusht
from difftop.il.experts import Rollout
from difftop.tasks import TASKS, Task


class FakeTask:
    """Seeds with seed % 3 == 1 fail; ``interrupt_at`` raises KeyboardInterrupt there (Ctrl-C)."""

    name = "fake"
    built = 0  # instances made (input errors must come before any)

    def __init__(self, interrupt_at: int = -1, **_: object) -> None:
        FakeTask.built += 1
        self.interrupt_at = interrupt_at

    def rollout(self, seed: int) -> Rollout:
        if seed == self.interrupt_at:
            raise KeyboardInterrupt
        n = 2 + seed % 2
        steps = {"state": np.full((n, 5), seed, np.float32), "action": np.full((n, 2), -seed, np.float32)}
        return Rollout(steps, seed % 3 != 1, {"episode_coverage": 1.0})

    def attrs(self) -> dict:
        return {"env": "fake"}


FAKE_TASK = Task("fake", {"state": ("state",)}, make_env=None, env_obs=None, expert=f"{__name__}:FakeTask")


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setitem(TASKS, "fake", f"{__name__}:FAKE_TASK")


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


def _run_folder(tmp_path, name, files):
    run = tmp_path / name
    run.mkdir()
    for f in files:
        (run / f).write_text("x")
    return run


def _hdf5_not_ours(tmp_path):
    import h5py

    p = tmp_path / "theirs.hdf5"
    with h5py.File(p, "w") as f:
        f["data/demo_0/actions"] = np.zeros((2, 2))
    return p


def _junk_dir(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    (d / "cat.png").write_bytes(b"png")
    return d


def _file(tmp_path):
    p = tmp_path / "notes.zarr"
    p.write_text("not a store")
    return p


# (arguments, expected piece of the one error line); `{t}` is the test's tmp_path
INPUT_ERRORS = [
    (["task=nope"], "no expert for task 'nope'; valid tasks: "),
    (["episodes=0"], "episodes must be an integer >= 1, got 0"),
    (["episodes=1.5"], "episodes must be an integer >= 1, got 1.5"),
    (["workers=0"], "workers must be an integer >= 1, got 0"),
    (["workers=1.5"], "workers must be an integer >= 1, got 1.5"),
    (["seed=1.5"], "seed must be an integer in [0, 2147483647], got 1.5"),
    (["seed=-1"], "seed must be an integer in [0, 2147483647], got -1"),
    (["seed=99999999999"], "seed must be an integer in [0, 2147483647], got 99999999999"),
    (["max_steps=0"], "max_steps must be an integer >= 1, got 0"),
    (["resume=maybe"], "resume must be true or false, got 'maybe'"),
    (["out=/proc/x.zarr"], "out='/proc/x.zarr': cannot write a directory under /proc"),
    (["out=/proc/x.hdf5"], "out='/proc/x.hdf5': cannot write a file under /proc"),
    (["out=/proc"], "out='/proc' is a non-empty folder that is not a zarr replay buffer"),
    (["out={t}/x.zarr.zip"], "can only append to a zarr directory, not a zip"),
    (["out={t}/x.zarr", "+experts.pusht.bogus=1"], "unknown Push-T expert option(s) ['bogus']"),
]
# outputs that exist and must not be written into: (builder, expected piece)
BAD_OUTPUTS = [
    (lambda t: _run_folder(t, "run_ckpt", ["checkpoint.pt"]),
     "is a difftop run folder (it holds checkpoint.pt)"),
    (lambda t: _run_folder(t, "run_csv", ["config.yaml", "train.csv"]),
     "is a difftop run folder (it holds config.yaml and train.csv)"),
    (_junk_dir, "is a non-empty folder that is not a zarr replay buffer"),
    (_file, "is an existing file, not a zarr directory store"),
    (_hdf5_not_ours, "is an existing file that difftop demos did not write"),
]


def _one_error_line(capsys, expected: str) -> None:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in captured.err + captured.out


@pytest.mark.parametrize("args,expected", INPUT_ERRORS, ids=[" ".join(a) for a, _ in INPUT_ERRORS])
def test_input_errors(tmp_path, capsys, fake, args, expected):
    FakeTask.built = 0
    args = [a.replace("{t}", str(tmp_path)) for a in args]
    if not any(a.startswith("out=") for a in args):
        args.append(f"out={tmp_path / 'x.zarr'}")
    if not any(a.startswith("task=") or a.startswith("+experts.pusht") for a in args):
        args.append("task=fake")
    assert demos(*args) == 2
    _one_error_line(capsys, expected)
    assert FakeTask.built == 0  # refused before the expert (anything slow) was built
    assert not (tmp_path / "x.zarr").exists()


@pytest.mark.parametrize("make,expected", BAD_OUTPUTS, ids=[e for _, e in BAD_OUTPUTS])
def test_refuses_outputs_that_are_not_its_store(tmp_path, capsys, fake, make, expected):
    FakeTask.built = 0
    out = make(tmp_path)
    before = sorted(p.name for p in out.iterdir()) if out.is_dir() else out.read_bytes()
    assert demos("task=fake", "episodes=1", f"out={out}") == 2
    _one_error_line(capsys, expected)
    assert FakeTask.built == 0
    assert (sorted(p.name for p in out.iterdir()) if out.is_dir() else out.read_bytes()) == before


def test_resume_false_refuses_a_store_with_episodes(tmp_path, capsys, fake):
    out = tmp_path / "f.zarr"
    (out).mkdir()  # an empty folder is a new store
    assert demos("task=fake", "episodes=2", f"out={out}", "resume=false") == 0
    capsys.readouterr()
    assert demos("task=fake", "episodes=3", f"out={out}", "resume=false") == 2
    _one_error_line(capsys, "already holds 2 episodes: pass resume=true to continue it")
    assert demos("task=fake", "episodes=3", f"out={out}", "resume=true") == 0
    assert seeds(out) == [0, 2, 3]


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
