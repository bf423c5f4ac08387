"""Bad settings of `difftop eval`, `difftop il-landscape` and `difftop plot` are one clean line.

Each case runs through ``difftop.cli.main`` in-process and must give exit code 2, exactly one line on
stderr, ``error: <key>...``, no traceback; and it must be caught before anything slow starts (no
checkpoint is loaded) and leave every file already saved as it was (issue 28).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from difftop.cli import main
from difftop.data import EpisodeData, save_zarr
from difftop.utils import checkpoint as checkpoints

RL_RUN = ["rl", "task=cartpole-swingup", "agent=tdmpc", "steps=200", "eval_every=200", "seed_steps=25",
          "episode_length=200", "mlp_dim=32", "enc_dim=16", "latent_dim=8", "num_samples=16", "num_elites=4",
          "iterations=2", "batch_size=16", "horizon=3", "eval_episodes=1", "threads=1", "progress=false",
          "video=false", "tensorboard=false"]
IL_RUN = ["il", "policy=bc", "policies.bc.hidden=[16,16]", "steps=2", "batch_size=8", "log_every=1",
          "val_every=2", "val_batches=1", "eval_every=0", "eval_episodes=1", "max_steps=4", "eval_batch=1",
          "threads=1", "progress=false", "tensorboard=false", "video=false"]


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """Tiny finished RL and IL runs (real checkpoints), an existing file, a directory, a read-only folder."""
    root = tmp_path_factory.mktemp("eval_errors")
    rl = root / "rl"
    assert main([*RL_RUN, f"out_dir={rl}"]) == 0
    rng = np.random.default_rng(0)
    episodes = []
    for _ in range(4):  # Push-T-like states (agent x, y, block x, y, angle) and actions near the agent
        s = rng.uniform(50, 460, (10, 5)).astype(np.float32)
        episodes.append({"state": s, "action": (s[:, :2] + rng.normal(0, 10, (10, 2))).astype(np.float32)})
    data = root / "demos.zarr"
    save_zarr(EpisodeData.from_episodes(episodes), data)
    il = root / "il"
    assert main([*IL_RUN, f"data={data}", f"out_dir={il}"]) == 0
    file = root / "notes.txt"
    file.write_text("keep me\n")
    folder = root / "figs"
    folder.mkdir()
    readonly = root / "readonly"
    readonly.mkdir()
    readonly.chmod(0o500)
    yield {"rl": rl, "il": il, "file": file, "dir": folder, "ro": readonly}
    readonly.chmod(0o700)


def _snapshot(*roots: Path) -> dict[str, str]:
    """path -> content hash of every file below ``roots``: what 'nothing saved touched' compares."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for r in roots for p in sorted(r.rglob("*"))}


ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False
needs_non_root = pytest.mark.skipif(ROOT, reason="root may write to a read-only folder")

def case(name: str, args: list[str], key: str, non_root: bool = False):
    """One row: the arguments (``{rl}``, ``{il}``, ``{file}``, ``{dir}``, ``{ro}``: paths of
    :func:`places`) and the key the error line must start with."""
    return pytest.param(args, key, id=name, marks=[needs_non_root] if non_root else [])


EVAL = [  # (name, arguments after checkpoint=, key, needs a non-root user)
    ("seed-float", ["seed=1.5"], "seed", False),
    ("seed-negative", ["seed=-1"], "seed", False),
    ("seed-huge", ["seed=99999999999"], "seed", False),
    ("out_dir-existing-file", ["out_dir={file}"], "out_dir", False),
    ("out_dir-proc", ["out_dir=/proc/x"], "out_dir", False),
    ("out_dir-below-a-file", ["out_dir={file}/eval"], "out_dir", False),
    ("out_dir-read-only", ["out_dir={ro}/eval"], "out_dir", True),
    ("threads-negative", ["threads=-1"], "threads", False),
    ("episodes-zero", ["episodes=0"], "episodes", False),
]
CASES = [
    case("eval-no-checkpoint", ["eval"], "checkpoint"),
    case("eval-empty-checkpoint", ["eval", "checkpoint="], "checkpoint"),
    *[case(f"eval-{kind}-{name}", ["eval", f"checkpoint={{{kind}}}", *extra], key, non_root)
      for kind in ("rl", "il") for name, extra, key, non_root in EVAL],
    case("landscape-no-checkpoint", ["il-landscape"], "checkpoint"),
    case("landscape-out-proc", ["il-landscape", "checkpoint={il}", "out=/proc/x.png"], "out"),
    case("landscape-out-directory", ["il-landscape", "checkpoint={il}", "out={dir}"], "out"),
    case("landscape-out-below-a-file", ["il-landscape", "checkpoint={il}", "out={file}/x.png"], "out"),
    case("landscape-out-read-only", ["il-landscape", "checkpoint={il}", "out={ro}/x.png"], "out", True),
    case("landscape-threads-negative", ["il-landscape", "checkpoint={il}", "threads=-1"], "threads"),
    case("landscape-seed-float", ["il-landscape", "checkpoint={il}", "seed=1.5"], "seed"),
    case("landscape-latent_seed-negative", ["il-landscape", "checkpoint={il}", "latent_seed=-1"],
         "latent_seed"),
    case("plot-out-proc", ["plot", "{rl}", "out=/proc/x.png"], "out"),
    case("plot-out-directory", ["plot", "{rl}", "out={dir}"], "out"),
    case("plot-out-below-a-file", ["plot", "{rl}", "out={file}/x.png"], "out"),
    case("plot-out-read-only", ["plot", "{rl}", "out={ro}/x.png"], "out", True),
    case("plot-out-not-a-figure", ["plot", "{rl}", "out={dir}/x.txt"], "out"),
    case("plot-x-unknown", ["plot", "{rl}", "out={dir}/x.png", "x=hours"], "x"),
    case("plot-metric-unknown-il", ["plot", "{il}", "out={dir}/x.png", "metric=nosuch"], "metric"),
    case("plot-metric-on-rl", ["plot", "{rl}", "out={dir}/x.png", "metric=success_rate"], "metric"),
]


@pytest.mark.parametrize("args, key", CASES)
def test_bad_setting_is_one_clean_line(places, args, key, monkeypatch, capsys):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    loads = []
    real_load = checkpoints.load_checkpoint

    def counting_load(*a, **kw):
        loads.append(a)
        return real_load(*a, **kw)

    monkeypatch.setattr(checkpoints, "load_checkpoint", counting_load)
    argv = [a.format(**{k: str(v) for k, v in places.items()}) for a in args]
    before = _snapshot(places["file"].parent)  # the runs, their checkpoints, the file and folders
    capsys.readouterr()
    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert re.match(rf"error: {re.escape(key)}\b[ =]", lines[0]), lines[0]
    assert "Traceback" not in err + out
    assert not loads, "the checkpoint was loaded before the setting was checked"
    assert _snapshot(places["file"].parent) == before


@pytest.mark.parametrize("kind", ["rl", "il"])
def test_good_settings_still_evaluate(places, kind, tmp_path, capsys):
    """The checks reject only what is wrong: a valid eval of each kind runs and writes where it is told."""
    out = tmp_path / "e"
    assert main(["eval", f"checkpoint={places[kind]}", "episodes=null", "video=false", "threads=1",
                 "seed=2147483647", f"out_dir={out}"]) == 0, capsys.readouterr().err
    result = json.loads((out / "eval.json").read_text())
    assert result["episodes"] == 1  # episodes=null: the run's own eval_episodes
