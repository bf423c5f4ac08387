"""`difftop demos` killed at any instant resumes to exactly the uninterrupted output.

A subprocess runs `difftop demos` on a fast, deterministic fake task and is killed with SIGKILL at
a named point (the ``DIFFTOP_CRASH_AT=<point>:<n>`` hook of ``difftop.il.demos``); ``resume=true``
then finishes the job and the store must equal an uninterrupted run's: same episodes, arrays,
seeds, per-episode values and attributes, no duplicates, nothing staged left behind. A plain
Ctrl-C (SIGINT) keeps what was committed and exits with 130 and no traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from difftop import cli
from difftop.data import load_dataset, load_zarr
from difftop.il.demos import work_store
from difftop.il.experts import Rollout
from difftop.tasks import TASKS, Task

EPISODES = 5  # seeds 0, 2, 3, 5, 6 succeed; 1 and 4 fail: 7 attempts, 8 commits with the header
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


class CrashTask:
    """Deterministic, instant attempts: seeds with seed % 3 == 1 fail; ``sleep`` slows each one."""

    def __init__(self, sleep: float = 0.0, **_: object) -> None:
        self.sleep = sleep

    def rollout(self, seed: int) -> Rollout:
        time.sleep(self.sleep)
        n = 2 + seed % 3
        rng = np.random.default_rng(seed)
        steps = {
            "state": rng.normal(size=(n, 5)).astype(np.float32),
            "img": rng.integers(0, 256, size=(n, 3, 8, 8), dtype=np.uint8),
            "action": rng.uniform(0, 512, size=(n, 2)).astype(np.float32),
        }
        return Rollout(steps, seed % 3 != 1, {"episode_coverage": float(rng.uniform())})

    def attrs(self) -> dict:
        return {"env": "crash", "max_steps": 9}


CRASH_TASK = Task("crash", {"state": ("state",)}, make_env=None, env_obs=None, expert=f"{__name__}:CrashTask")

SCRIPT = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
from difftop.tasks import TASKS
TASKS["crash"] = "test_demos_crash:CRASH_TASK"
from difftop import cli
sys.exit(cli.main(["demos", "task=crash", "progress=false", *sys.argv[1:]]))
"""


def run_subprocess(*args: str, crash: str | None = None, wait: bool = True):
    env = {**os.environ, "MUJOCO_GL": "egl", "HYDRA_FULL_ERROR": "0"}
    env.pop("DIFFTOP_CRASH_AT", None)
    if crash:
        env["DIFFTOP_CRASH_AT"] = crash
    p = subprocess.Popen([sys.executable, "-c", SCRIPT, *args], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return p
    out, err = p.communicate(timeout=120)
    return p.returncode, out, err


@pytest.fixture
def crash_task(monkeypatch):
    monkeypatch.setitem(TASKS, "crash", f"{__name__}:CRASH_TASK")


def demos(*args: str) -> int:
    return cli.main(["demos", "task=crash", "progress=false", *args])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted runs, zarr and hdf5 (in this process)."""
    d = tmp_path_factory.mktemp("reference")
    saved = TASKS.get("crash")
    TASKS["crash"] = f"{__name__}:CRASH_TASK"
    try:
        assert demos(f"episodes={EPISODES}", f"out={d / 'ref.zarr'}") == 0
        assert demos(f"episodes={EPISODES}", f"out={d / 'ref.hdf5'}") == 0
    finally:
        if saved is None:
            TASKS.pop("crash")
        else:
            TASKS["crash"] = saved
    return d


def assert_same_store(got: Path, ref: Path) -> None:
    a, b = load_zarr(got), load_zarr(ref)
    assert sorted(a.data) == sorted(b.data)
    for k in b.data:
        assert a.data[k].dtype == b.data[k].dtype
        np.testing.assert_array_equal(a.data[k], b.data[k])
    np.testing.assert_array_equal(a.episode_ends, b.episode_ends)
    assert sorted(a.episode_meta) == sorted(b.episode_meta)
    for k in b.episode_meta:
        np.testing.assert_array_equal(a.episode_meta[k], b.episode_meta[k])
    assert a.attrs == b.attrs  # next_seed, attempts, task, seed, ...
    seeds = a.episode_meta["episode_seed"].tolist()
    assert seeds == [0, 2, 3, 5, 6] and len(set(seeds)) == len(seeds)
    # nothing staged past the commit is left on disk either
    ra, rb = zarr.open_group(str(got), mode="r"), zarr.open_group(str(ref), mode="r")
    for name in ("data/state", "data/img", "data/action", "meta/episode_ends", "meta/episode_seed"):
        assert ra[name].shape == rb[name].shape, name
    assert json.loads((got / ".zattrs").read_text()) == json.loads((ref / ".zattrs").read_text())
    assert files(got) == files(ref)  # no stray chunk, temporary or trash file


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# (point:n, why this instant): the header commit is commit 1, then one commit per attempt
CRASHES = [
    ("in_commit:1", "writing the new store's header"),
    ("after_commit:1", "header written, no attempt yet"),
    ("stage:1", "first episode half written (one array)"),
    ("before_commit:1", "first episode staged, not committed"),
    ("in_commit:2", "first episode's record in its temporary file"),
    ("after_commit:2", "first episode committed, its attempt not yet reported"),
    ("in_commit:3", "a failed attempt's record (seed 1) in its temporary file"),
    ("after_commit:3", "a failed attempt committed"),
    ("stage:7", "third episode half written (its first array)"),
    ("before_commit:4", "fourth episode staged"),
    ("after_commit:8", "the last episode committed, before the summary"),
]


@pytest.mark.parametrize("point,why", CRASHES, ids=[p for p, _ in CRASHES])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, reference, crash_task, point, why):
    out = tmp_path / "d.zarr"
    rc, _, err = run_subprocess(f"episodes={EPISODES}", f"out={out}", crash=point)
    assert rc == -signal.SIGKILL, f"not killed at {point} ({why}): rc {rc}\n{err}"
    assert demos(f"episodes={EPISODES}", f"out={out}", "resume=true") == 0
    assert_same_store(out, reference / "ref.zarr")


def test_killed_twice_then_resumed(tmp_path, reference, crash_task):
    out = tmp_path / "d.zarr"
    assert run_subprocess(f"episodes={EPISODES}", f"out={out}", crash="before_commit:2")[0] == -signal.SIGKILL
    # the resumed run is killed too, inside the commit of its second attempt
    assert run_subprocess(f"episodes={EPISODES}", f"out={out}", "resume=true",
                          crash="in_commit:2")[0] == -signal.SIGKILL
    assert demos(f"episodes={EPISODES}", f"out={out}", "resume=true") == 0
    assert_same_store(out, reference / "ref.zarr")


def assert_same_hdf5(got: Path, ref: Path) -> None:
    a, b = load_dataset(got), load_dataset(ref)
    assert sorted(a.data) == sorted(b.data) == ["action", "img", "state"]
    for k in b.data:
        np.testing.assert_array_equal(a.data[k], b.data[k])
    np.testing.assert_array_equal(a.episode_ends, b.episode_ends)
    for k in b.episode_meta:
        np.testing.assert_array_equal(a.episode_meta[k], b.episode_meta[k])
    assert a.attrs == b.attrs
    assert a.episode_meta["episode_seed"].tolist() == [0, 2, 3, 5, 6]
    assert not work_store(got).exists()
    assert sorted(p.name for p in got.parent.iterdir()) == [got.name]  # no temporary files left


@pytest.mark.parametrize("point", ["after_commit:3", "export:1", "cleanup:1"])
def test_hdf5_output_survives_sigkill(tmp_path, reference, crash_task, point):
    out = tmp_path / "d" / "demos.hdf5"
    rc, _, err = run_subprocess(f"episodes={EPISODES}", f"out={out}", crash=point)
    assert rc == -signal.SIGKILL, err
    assert demos(f"episodes={EPISODES}", f"out={out}", "resume=true") == 0
    assert_same_hdf5(out, reference / "ref.hdf5")


def test_hdf5_output_continues_with_more_episodes(tmp_path, reference, crash_task):
    out = tmp_path / "d" / "demos.hdf5"
    assert demos("episodes=2", f"out={out}") == 0
    assert load_dataset(out).n_episodes == 2 and not work_store(out).exists()
    assert demos(f"episodes={EPISODES}", f"out={out}") == 0  # read back, continued, written again
    assert_same_hdf5(out, reference / "ref.hdf5")


def _committed(out: Path) -> int:
    try:
        return int(json.loads((out / ".zattrs").read_text()).get("committed_episodes", 0))
    except (OSError, ValueError):
        return 0


def test_ctrl_c_keeps_what_was_committed(tmp_path, reference, crash_task):
    out = tmp_path / "d.zarr"
    p = run_subprocess(f"episodes={EPISODES}", f"out={out}", "+experts.crash.sleep=0.3", wait=False)
    try:
        deadline = time.monotonic() + 60
        while _committed(out) < 2 and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
        assert _committed(out) >= 2, "the run did not commit 2 episodes in time"
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    kept = load_zarr(out)
    assert 2 <= kept.n_episodes < EPISODES
    np.testing.assert_array_equal(kept.episode_meta["episode_seed"], [0, 2, 3, 5][: kept.n_episodes])
    assert demos(f"episodes={EPISODES}", f"out={out}", "resume=true") == 0
    assert_same_store(out, reference / "ref.zarr")
