"""difftop.diagnostics.il_table: the columns follow the task's metrics (Push-T, PickCube, none)."""

from __future__ import annotations

from pathlib import Path

from difftop.diagnostics.il_table import paired, table


def _eval(root: Path, run: str, seed: int, **cols: float) -> None:
    d = root / run / f"seed{seed}"
    d.mkdir(parents=True)
    keys = ["step", "wall_time", "success_rate", *cols, "mean_length", "episodes"]
    vals = [20000, 1.0, 0.0, *cols.values(), 150.0, 50]
    (d / "eval.csv").write_text(",".join(keys) + "\n" + ",".join(map(str, vals)) + "\n")


def test_columns_and_pairs_follow_the_metrics(tmp_path):
    cov = tmp_path / "pusht"
    _eval(cov, "bc", 0, mean_max_coverage=0.30, std_max_coverage=0.1)
    _eval(cov, "difftop_bc", 0, mean_max_coverage=0.45, std_max_coverage=0.1)
    assert "| success rate | mean max coverage |" in table(cov)
    assert "| DiffTOP + BC - BC | 0 | +0.150 | +0.150 ± 0.000 | 1 of 1 |" in paired(cov)
    grasp = tmp_path / "pickcube"
    _eval(grasp, "bc", 0, mean_grasped=0.5, std_grasped=0.5)
    _eval(grasp, "difftop_bc", 0, mean_grasped=0.4, std_grasped=0.5)
    assert "| BC | 1 | 20000 | 0.00 ± 0.00 | 0.50 ± 0.00 |" in table(grasp)
    pairs = paired(grasp)
    assert "grasped, per seed" in pairs and "| -0.100 |" in pairs and "0 of 1" in pairs
    bare = tmp_path / "none"
    _eval(bare, "bc", 0)
    _eval(bare, "difftop_bc", 0)
    assert table(bare).splitlines()[0] == "| policy | seeds | gradient steps | success rate |"
    assert "success, per seed" in paired(bare)
