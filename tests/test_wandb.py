"""Optional Weights & Biases logging: off by default; with `logger.wandb=true` every CSV row also goes to
W&B (offline here: no network), and a resumed run continues the same W&B run (its id is in the
checkpoint). Without the package it is one clear error line."""

from __future__ import annotations

import builtins

import pytest

from difftop.cli import main
from difftop.utils.checkpoint import load_checkpoint
from tests.golden.cases import IL_FAST, il_data

pytest.importorskip("wandb")

IL = ["il", "policy=bc", "policies.bc.hidden=[16,16]", *[a for a in IL_FAST if not a.startswith("steps=")]]


def test_rows_go_to_an_offline_wandb_run_that_a_resume_continues(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    data = il_data(tmp_path / "data.zarr")
    out = tmp_path / "run"
    args = [*IL, f"data={data}", f"out_dir={out}", "logger.wandb=true", "logger.wandb_mode=offline"]
    assert main([*args, "steps=4"]) == 0
    run_id = load_checkpoint(out, "il")["wandb_id"]
    runs = list((out / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert main([*args, "steps=6", "resume=true"]) == 0
    assert load_checkpoint(out, "il")["wandb_id"] == run_id  # the same W&B run goes on
    assert len(list((out / "wandb").glob(f"offline-run-*-{run_id}"))) == 2  # one folder per process


def test_off_by_default_and_a_missing_package_is_one_line(tmp_path, monkeypatch, capsys):
    data = il_data(tmp_path / "data.zarr")
    assert main([*IL, f"data={data}", f"out_dir={tmp_path / 'a'}", "steps=2"]) == 0
    assert not (tmp_path / "a" / "wandb").exists()
    real = builtins.__import__

    def no_wandb(name, *a, **k):
        if name == "wandb":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    capsys.readouterr()
    assert main([*IL, f"data={data}", f"out_dir={tmp_path / 'b'}", "steps=2", "logger.wandb=true"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: logger.wandb=true needs the wandb package: pip install -e '.[tracking]'"
    assert not (tmp_path / "b").exists()
