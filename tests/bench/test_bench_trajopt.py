"""Smoke run of `difftop bench trajopt` end to end on a tiny problem (the CLI path, all rows)."""

from __future__ import annotations

import json

from difftop import cli


def test_bench_trajopt_cli_tiny(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = cli.main([
        "bench", "trajopt", "runs=1", "warmup=0", "batch_sizes=[1,256]", "problem.latent_dim=4",
        "problem.mlp_dim=16", "problem.obs_dim=5", "problem.horizon=3", "problem.action_dim=2",
        "mppi.num_samples=32", "mppi.num_elites=8", f"out_dir={tmp_path}/res", "tag=_tiny",
    ])
    assert rc == 0
    data = json.loads((tmp_path / "res" / "trajopt_tiny.json").read_text())
    rows = {(r["row"], r["batch"]) for r in data["results"]}
    assert ("lbfgs-implicit", 1) in rows and ("lbfgs-implicit", 256) in rows
    assert ("mppi-tdmpc", 1) in rows
    for r in data["results"]:
        assert r["median_ms"] > 0 and r["n"] == 1
        if r["solver"] not in ("mppi",):
            assert r["J"] == r["J"]  # finite objective for every solver row
    md = (tmp_path / "res" / "trajopt_tiny.md").read_text()
    assert "| batch | row |" in md
    assert not (tmp_path / "outputs").exists()


def test_bench_trajopt_only_some_rows(tmp_path):
    rc = cli.main([
        "bench", "trajopt", "runs=1", "warmup=0", "batch_sizes=[1]", "problem.latent_dim=4",
        "problem.mlp_dim=16", "problem.obs_dim=5", "problem.horizon=3", "problem.action_dim=2",
        "only=[lbfgs-implicit,pgd-none]", f"out_dir={tmp_path}", "tag=_only",
    ])
    assert rc == 0
    data = json.loads((tmp_path / "trajopt_only.json").read_text())
    assert {r["row"] for r in data["results"]} == {"lbfgs-implicit", "pgd-none"}


def test_bench_trajopt_bad_settings_are_one_line(tmp_path, capsys):
    for args, msg in [(["rows=[foo]"], "every entry of rows is"),
                      (["only=[nope]"], "unknown rows in only: ['nope']"),
                      (["batch_sizes=[0]"], "batch_sizes must be positive integers"),
                      (["dtype=float16"], "dtype must be one of")]:
        assert cli.main(["bench", "trajopt", *args, f"out_dir={tmp_path}"]) == 2, args
        err = capsys.readouterr().err.strip()
        assert msg in err and err.count("\n") == 0, err
    assert not list(tmp_path.iterdir())
