"""`difftop bench trajopt-family` end to end on tiny networks: per-problem rows, the summary, the
stopping-rule replay, and one-line errors for bad settings."""

from __future__ import annotations

import json

from difftop import cli
from difftop.bench.family import draw

TINY = ["runs=1", "warmup=0", "latent_dim=4", "mlp_dim=8", "problems=2", "large_problems=1",
        "batch_sizes=[1,3]", "trace_iters=12", "max_iters_default=12"]


def test_bench_trajopt_family_tiny(tmp_path):
    rc = cli.main(["bench", "trajopt-family", *TINY, "split=tuning", "tune=true",
                   "tune_grid.ftol=[0.0,1.0e-2]", "tune_grid.window=[1]", "tune_grid.grad=[0.8]",
                   f"out_dir={tmp_path}", "tag=_t"])
    assert rc == 0
    data = json.loads((tmp_path / "trajopt_family_tuning_t.json").read_text())
    assert [(r["problem"], r["batch"]) for r in data["results"]] == [("tuning0", 1), ("tuning1", 1),
                                                                     ("tuning0", 3)]
    for r in data["results"]:
        assert {"theseus", "defaults", "zero"} <= set(r["ms"]) and r["J_ref"] == r["J_ref"]
        assert len(r["trace_J"]) == 13 and len(r["trace_J"][0]) == r["batch"]
        if r["k_star"] is not None:  # the reach row ran exactly k* iterations and reached J_ref
            assert r["iters"]["reach"] <= r["k_star"]
    assert {s["batch"] for s in data["summary"]} == {1, 3}
    assert len(data["tune"]) == 4  # 2 ftol x 1 window x 1 grad x 2 batch sizes
    assert "| batch | problems |" in (tmp_path / "trajopt_family_tuning_t.md").read_text()


def test_splits_are_disjoint_and_cover_the_ranges():
    tune = draw("tuning", 8, seed=11, horizons=(1, 8), action_dims=(2, 14), head_gains=[0.3, 1, 3],
                q_taus=[0, 0.05])
    held = draw("heldout", 8, seed=29, horizons=(2, 7), action_dims=(3, 13), head_gains=[0.5, 2],
                q_taus=[0, 0.05])
    assert not {s.seed for s in tune} & {s.seed for s in held}
    assert {s.horizon for s in tune} >= {1, 8} and {s.action_dim for s in tune} >= {2, 14}
    assert {s.init for s in tune} == {"policy", "zeros", "uniform", "noisy"}


def test_bad_settings_are_one_line(tmp_path, capsys):
    for args, msg in [(["split=nope"], "split must be one of"), (["batch_sizes=[0]"], "batch_sizes must be"),
                      (["problems=0"], "problems must be a positive integer")]:
        assert cli.main(["bench", "trajopt-family", *args, f"out_dir={tmp_path}"]) == 2, args
        err = capsys.readouterr().err.strip()
        assert msg in err and err.count("\n") == 0, err
