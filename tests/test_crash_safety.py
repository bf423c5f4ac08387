"""A run killed at any instant resumes to exactly the run that was never stopped.

Each case starts a short run in a subprocess that kills itself with SIGKILL at a named instant
(``DIFFTOP_CRASH_AT``, see difftop/engine/faults.py): inside a checkpoint write, between the two
renames that swap it in, inside an evaluation, inside a learning burst, between two units. Then the
run is resumed (in-process) and its CSVs (timing columns aside), actions and weights must equal those
of an uninterrupted run, with no duplicated or missing rows. Ctrl-C (SIGINT) saves a checkpoint and
exits with code 130.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from difftop.cli import main
from difftop.utils.checkpoint import load_checkpoint
from tests.golden.cases import IL_FAST, RL_TINY, compare, il_data, snapshot

RL = [a for a in RL_TINY if not a.startswith(("steps=", "seed_steps="))] + [
    "agent=tdmpc", "obs=state", "steps=600", "seed_steps=25"]
IL = ["il", "policy=bc", "policies.bc.hidden=[16,16]",
      *[a for a in IL_FAST if not a.startswith(("steps=", "eval_every="))], "steps=8", "eval_every=4"]


def _killed(args: list[str], crash: str) -> int:
    env = {**os.environ, "DIFFTOP_CRASH_AT": crash, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    return subprocess.run([sys.executable, "-m", "difftop.cli", *args], env=env, capture_output=True,
                          timeout=300).returncode


def _same_run(out, ref, kind: str) -> None:
    diffs = compare(snapshot(out, kind), snapshot(ref, kind), rtol=0, atol=0)
    assert not diffs, "\n".join(diffs[:10])
    a, b = load_checkpoint(out, kind), load_checkpoint(ref, kind)
    wa = a["agent"]["modules"] if kind == "rl" else a["policy"]
    wb = b["agent"]["modules"] if kind == "rl" else b["policy"]
    flat = lambda w: {f"{k}.{j}": t for k, d in w.items() for j, t in d.items()} if kind == "rl" else w  # noqa: E731
    fa, fb = flat(wa), flat(wb)
    assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)
    assert not list(out.glob(".checkpoint.*")), "a half-written checkpoint was left behind"


@pytest.fixture(scope="module")
def rl_ref(tmp_path_factory):
    out = tmp_path_factory.mktemp("rl-ref") / "run"
    assert main(["rl", *RL, f"out_dir={out}"]) == 0
    return out


@pytest.mark.parametrize("crash", [
    "rl.update:20",  # inside the first learning burst (25 updates), checkpointed after each update
    "checkpoint.written:7",  # the new checkpoint written, not yet swapped in
    "checkpoint.swap:12",  # between the two renames: no checkpoint/ at all
    "checkpoint.swapped:30",  # swapped in, the old one not yet removed
    "rl.evaluated:2",  # an evaluation's episodes run, its row not yet logged
])
def test_rl_killed_at_an_instant_resumes_to_the_uninterrupted_run(crash, rl_ref, tmp_path):
    out = tmp_path / "run"
    args = ["rl", *RL, f"out_dir={out}", "checkpoint_minutes=0"]  # a checkpoint after every unit
    assert _killed(args, crash) == -signal.SIGKILL
    assert main(["rl", *RL, f"out_dir={out}", "resume=true"]) == 0
    _same_run(out, rl_ref, "rl")


@pytest.fixture(scope="module")
def il_setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("il-ref")
    data = il_data(tmp / "data.zarr")
    ref = tmp / "ref"
    assert main([*IL, f"data={data}", f"out_dir={ref}"]) == 0
    return data, ref


@pytest.mark.parametrize("crash", ["step:5", "il.evaluated:1", "checkpoint.swap:4", "checkpoint.written:9"])
def test_il_killed_at_an_instant_resumes_to_the_uninterrupted_run(crash, il_setup, tmp_path):
    data, ref = il_setup
    out = tmp_path / "run"
    args = [*IL, f"data={data}", f"out_dir={out}"]
    assert _killed([*args, "checkpoint_minutes=0"], crash) == -signal.SIGKILL
    assert main([*args, "resume=true"]) == 0
    _same_run(out, ref, "il")


def test_ctrl_c_saves_a_checkpoint_and_the_run_goes_on_from_it(rl_ref, tmp_path):
    """SIGINT mid-run: the engine finishes the unit, checkpoints, exits 130; resume completes the run."""
    out = tmp_path / "run"
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    proc = subprocess.Popen([sys.executable, "-m", "difftop.cli", "rl", *RL, f"out_dir={out}"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not (out / "eval.csv").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)  # the step-0 evaluation is logged: the run is collecting or learning
    proc.send_signal(signal.SIGINT)
    text, _ = proc.communicate(timeout=240)
    assert proc.returncode == 130, text
    assert "checkpoint saved" in text
    state = load_checkpoint(out, "rl")
    assert state["env_step"] > 0
    assert main(["rl", *RL, f"out_dir={out}", "resume=true"]) == 0
    _same_run(out, rl_ref, "rl")


def test_a_checkpoint_of_the_earlier_single_file_format_evaluates_and_resumes(rl_ref, tmp_path, capsys):
    """A run folder of the earlier version (checkpoint.pt + buffer.npz beside it, no row counts) still
    evaluates, serves as a base, and resumes to the same run."""
    import shutil

    import numpy as np

    from difftop.utils.checkpoint import LEGACY_FORMAT

    out = tmp_path / "old"
    part = tmp_path / "part"
    assert main(["rl", *[a for a in RL if not a.startswith("steps=")], "steps=400", f"out_dir={part}"]) == 0
    shutil.copytree(part, out)
    state = load_checkpoint(out, "rl")
    for key in ("path", "logs", "next_ckpt"):
        state.pop(key, None)
    torch.save({**state, "format": LEGACY_FORMAT}, out / "checkpoint.pt")
    with np.load(out / "checkpoint" / "buffer.npz") as z:
        np.savez(out / "buffer.npz", **{k: z[k] for k in z.files})
    shutil.rmtree(out / "checkpoint")
    capsys.readouterr()
    assert main(["eval", f"checkpoint={out / 'checkpoint.pt'}", "episodes=1", "video=false"]) == 0
    assert "over 1 episodes" in capsys.readouterr().out
    assert main(["rl", *RL, f"out_dir={out}", "resume=true"]) == 0
    _same_run(out, rl_ref, "rl")
    assert load_checkpoint(out, "rl")["path"].endswith("checkpoint")  # the new format from then on


def test_a_run_killed_inside_its_first_checkpoint_write_starts_afresh(tmp_path):
    """Only a half-written `.checkpoint.new/` (no commit record): there is no run yet, so both a plain
    start and resume=true start it, and the leftover is cleared."""
    out = tmp_path / "run"
    (out / ".checkpoint.new").mkdir(parents=True)
    (out / ".checkpoint.new" / "model.safetensors").write_bytes(b"partial")
    args = [*IL, f"data={il_data(tmp_path / 'data.zarr')}", f"out_dir={out}"]
    assert main([*args, "resume=true"]) == 0
    assert load_checkpoint(out, "il")["step"] == 8 and not (out / ".checkpoint.new").exists()
