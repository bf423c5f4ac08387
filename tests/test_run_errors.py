"""Bad input to `difftop rl` / `difftop il` is one line ``error: ...`` naming the key, exit code 2, no
traceback, found before anything slow starts, and nothing already saved is touched."""

from __future__ import annotations

import errno

import pytest

from difftop.cli import main
from tests.golden.cases import IL_FAST, RL_TINY, il_data

RL = [a for a in RL_TINY if not a.startswith("steps=")] + ["agent=tdmpc", "steps=200"]
IL = ["policy=bc", "policies.bc.hidden=[16,16]", *IL_FAST]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished RL run, a finished IL run (with its data) and a plain file."""
    tmp = tmp_path_factory.mktemp("runs")
    data = il_data(tmp / "data.zarr")
    assert main(["rl", *RL, f"out_dir={tmp / 'rl'}"]) == 0
    assert main(["il", *IL, f"data={data}", f"out_dir={tmp / 'il'}"]) == 0
    (tmp / "file.txt").write_text("not a folder")
    return tmp


def _snapshot(root):
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


CASES = [
    # (command, arguments, words the error line must hold)
    ("rl", ["seed=1.5"], "seed must be an integer in [0, 2147483647], got 1.5"),
    ("rl", ["seed=-1"], "seed must be an integer in [0, 2147483647], got -1"),
    ("rl", ["seed=99999999999"], "seed must be an integer"),
    ("rl", ["threads=-1"], "threads must be an integer >= 0, got -1"),
    ("rl", ["out_dir={tmp}/file.txt"], "out_dir="),
    ("rl", ["out_dir=/proc/x"], "cannot write a directory under /proc"),
    ("rl", ["out_dir={tmp}/file.txt/sub"], "is a file, not a directory"),
    ("rl", ["out_dir={tmp}/rl"], "already holds a run"),
    ("rl", ["out_dir={tmp}/rl", "resume=true", "lr=0.5"], "lr=0.5 differs from the run's 0.001"),
    ("rl", ["out_dir={tmp}/rl", "resume=true", "batch_size=8"], "batch_size=8 differs from the run's 16"),
    ("rl", ["out_dir={tmp}/rl", "resume=true", "agent=difftop"], "agent='difftop' differs"),
    ("rl", ["allow_change=lr"], "allow_change must be a list"),
    ("il", ["seed=1.5"], "seed must be an integer in [0, 2147483647], got 1.5"),
    ("il", ["seed=-1"], "seed must be an integer"),
    ("il", ["seed=99999999999"], "seed must be an integer"),
    ("il", ["threads=-1"], "threads must be an integer >= 0, got -1"),
    ("il", ["out_dir={tmp}/file.txt"], "is an existing file, not a directory"),
    ("il", ["out_dir=/proc/x"], "cannot write a directory under /proc"),
    ("il", ["out_dir={tmp}/file.txt/sub"], "is a file, not a directory"),
    ("il", ["out_dir={tmp}/il"], "already holds a run"),
    ("il", ["out_dir={tmp}/il", "resume=true", "lr=0.5"], "lr=0.5 differs from the run's 0.001"),
    ("il", ["out_dir={tmp}/il", "resume=true", "batch_size=4"], "batch_size=4 differs from the run's 8"),
    ("il", ["out_dir={tmp}/il", "resume=true", "policy=ibc"], "policy='ibc' differs"),
]


@pytest.mark.parametrize("cmd,args,words", CASES, ids=[f"{c}-{' '.join(a)}" for c, a, _ in CASES])
def test_bad_input_is_one_line_and_touches_nothing(cmd, args, words, runs, tmp_path, capsys, monkeypatch):
    import difftop.engine.loop as loop

    before = _snapshot(runs)
    built = []
    monkeypatch.setattr(loop, "_drive", lambda *a, **k: built.append(a) or pytest.fail("ran"))
    args = [a.replace("{tmp}", str(runs)) for a in args]
    base = RL if cmd == "rl" else [*IL, f"data={runs / 'data.zarr'}"]
    given = {a.split("=")[0] for a in args}
    base = [b for b in base if b.split("=")[0] not in given]
    if not any(a.startswith("out_dir=") for a in args):
        args.append(f"out_dir={tmp_path / 'new'}")
    capsys.readouterr()
    assert main([cmd, *base, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert words in err, err
    assert not built
    assert _snapshot(runs) == before


def test_a_changed_setting_goes_on_when_allowed_and_is_said(runs, tmp_path, capsys):
    import shutil

    out = tmp_path / "il"
    shutil.copytree(runs / "il", out)
    args = ["il", *[a for a in IL if not a.startswith("steps=")], f"data={runs / 'data.zarr'}",
            f"out_dir={out}"]
    assert main([*args, "steps=8", "resume=true", "lr=0.5", "allow_change=[lr]"]) == 0
    assert "resume: lr changes from 0.001 to 0.5 (allow_change)" in capsys.readouterr().out
    assert "lr: 0.5" in (out / "config.yaml").read_text()


@pytest.mark.parametrize("cmd", ["rl", "il"])
def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_last_one(cmd, runs, tmp_path, capsys,
                                                                            monkeypatch):
    """No space left while writing a checkpoint: one line, the previous checkpoint intact, no leftovers."""
    import shutil

    import difftop.utils.checkpoint as ckpt

    out = tmp_path / cmd
    shutil.copytree(runs / cmd, out)
    before = (out / "checkpoint" / "model.safetensors").read_bytes()
    real = ckpt.torch.save

    def full(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full)
    base = RL if cmd == "rl" else [*IL, f"data={runs / 'data.zarr'}"]
    base = [b for b in base if not b.startswith("steps=")]
    steps = "steps=400" if cmd == "rl" else "steps=8"
    capsys.readouterr()
    assert main([cmd, *base, steps, f"out_dir={out}", "resume=true"]) == 2
    monkeypatch.setattr(ckpt.torch, "save", real)
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "No space left" in err, err
    assert (out / "checkpoint" / "model.safetensors").read_bytes() == before
    assert not list(out.glob(".checkpoint.*"))


@pytest.mark.parametrize("cmd,args,words", [
    ("rl", ["agent=difftop", "trajopt.solver=foo"], "trajopt.solver must be one of lbfgs, pgd, newton, lm"),
    ("rl", ["agent=difftop", "+trajopt.bogus=1"], "trajopt.bogus is not a trajopt setting"),
    ("il", ["policy=difftop", "policies.difftop.solver=foo"], "policies.difftop.solver must be one of"),
    ("il", ["policy=difftop", "policies.difftop.max_iters=-1"], "policies.difftop.max_iters must be"),
])
def test_rl_and_il_check_trajopt_settings_the_same_way(cmd, args, words, runs, tmp_path, capsys, monkeypatch):
    """One TrajOptConfig validates RL's `trajopt` section and IL's `policies.difftop` settings, up front."""
    test_bad_input_is_one_line_and_touches_nothing(cmd, args, words, runs, tmp_path, capsys, monkeypatch)
