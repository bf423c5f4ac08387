"""`difftop plot` on imitation runs (difftop/il/plot.py): labels, seed grouping, metrics, summary, errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from difftop import cli


def write_il_run(root: Path, name: str, rows: list[tuple[int, float, float]], **config) -> Path:
    """An IL run dir: config.yaml and eval.csv rows (step, success_rate, mean_max_coverage)."""
    run = root / name
    run.mkdir(parents=True)
    cfg = {"task": "pusht", "obs": "state", **config}
    (run / "config.yaml").write_text("".join(f"{k}: {v}\n" for k, v in cfg.items()))
    lines = ["step,wall_time,success_rate,mean_max_coverage,episodes"]
    lines += [f"{s},{s / 10},{sr},{cov},50" for s, sr, cov in rows]
    (run / "eval.csv").write_text("\n".join(lines) + "\n")
    return run


@pytest.fixture
def il_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    root = tmp_path / "il"
    for seed, cov in ((0, 0.4), (1, 0.6)):
        base = write_il_run(root, f"bc/seed{seed}", [(5, 0.0, cov / 2), (10, 0.1, cov)], policy="bc",
                            seed=seed)
        write_il_run(root, f"difftop_bc/seed{seed}", [(5, 0.2, cov + 0.1), (10, 0.3, cov + 0.2)],
                     policy="difftop", init="base", base=str(base), seed=seed)
        write_il_run(root, f"residual_bc/seed{seed}", [(10, 0.1, cov)], policy="residual", base=str(base),
                     seed=seed)
    write_il_run(root, "difftop_nocvae_bc/seed1", [(10, 0.2, 0.5)], policy="difftop", init="base",
                 base=str(base), policies="{difftop: {posterior_dim: 0}}", seed=1)
    write_il_run(root, "difftop_zero/seed0", [(10, 0.0, 0.1)], policy="difftop", init="zero", base="null",
                 seed=0)
    # a base whose run directory is gone is still named by its folder
    write_il_run(root, "ibc_diffusion/seed0", [(0, 0.5, 0.9)], policy="ibc",
                 base=str(tmp_path / "gone" / "diffusion" / "seed0"), seed=0)
    return tmp_path


def test_il_runs_grouped_by_policy_and_base_across_seeds(il_runs, capsys):
    assert cli.main(["plot", "il", "out=il.png"]) == 0
    assert (il_runs / "il.png").stat().st_size > 0
    s = pd.read_csv(il_runs / "il.csv").set_index("policy")
    assert set(s.index) == {"bc", "difftop + bc", "residual + bc", "difftop (zero init)", "ibc + diffusion",
                            "difftop (no CVAE) + bc"}
    row = s.loc["difftop + bc"]
    assert row["n_seeds"] == 2 and row["last_step"] == 10
    assert row["mean_max_coverage_mean"] == pytest.approx(0.7)  # (0.6 + 0.8) / 2
    assert row["mean_max_coverage_std"] == pytest.approx(0.1)
    assert row["success_rate_mean"] == pytest.approx(0.3)
    assert "6 groups" in capsys.readouterr().out


def test_rl_and_il_runs_do_not_share_a_figure(il_runs, capsys):
    rl = il_runs / "rl" / "run"
    rl.mkdir(parents=True)
    (rl / "config.yaml").write_text("task: cartpole-swingup\nagent: tdmpc\nobs: state\n")
    (rl / "eval.csv").write_text("env_step,episode,wall_time,episode_reward\n0,0,0,1\n")
    assert cli.main(["plot", "il", "rl", "out=x.png"]) == 2
    err = capsys.readouterr().err.strip()
    assert "both RL and IL runs" in err and len(err.splitlines()) == 1


def test_il_eval_csv_without_metrics_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("task: pusht\nobs: state\npolicy: bc\n")
    (run / "eval.csv").write_text("step,wall_time\n10,1\n")
    assert cli.main(["plot", "r", "out=x.png"]) == 2
    assert "lacks the columns step and success_rate" in capsys.readouterr().err


def test_il_plot_draws_the_metric_columns_eval_csv_has(tmp_path, monkeypatch, capsys):
    """No task's metrics are hard-coded: a task logging success_rate alone, and extra mean_* columns."""
    import matplotlib.image as mpimg

    monkeypatch.chdir(tmp_path)
    for seed, sr in ((0, 0.2), (1, 0.4)):
        run = tmp_path / "lift" / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(f"task: lift\nobs: state\npolicy: bc\nseed: {seed}\n")
        (run / "eval.csv").write_text(f"step,wall_time,success_rate,mean_length,episodes\n10,1,{sr},50,5\n")
    assert cli.main(["plot", "lift", "out=lift.png"]) == 0, capsys.readouterr().err
    row = pd.read_csv("lift.csv").set_index("policy").loc["bc"]
    assert row["success_rate_mean"] == pytest.approx(0.3) and row["mean_length_mean"] == 50
    assert not any(c.startswith(("mean_max_coverage", "episodes", "wall_time")) for c in row.index)
    two_rows = mpimg.imread("lift.png").shape[0]
    assert cli.main(["plot", "lift", "out=sr.png", "metric=success_rate"]) == 0
    row = pd.read_csv("sr.csv").set_index("policy").loc["bc"]
    assert "success_rate_mean" in row.index and "mean_length_mean" not in row.index
    assert mpimg.imread("sr.png").shape[0] == pytest.approx(two_rows / 2, rel=0.15)


def test_il_metric_key_chooses_one_and_names_the_choices(il_runs, capsys):
    assert cli.main(["plot", "il", "out=cov.png", "metric=mean_max_coverage"]) == 0
    s = pd.read_csv(il_runs / "cov.csv").set_index("policy")
    assert s.loc["difftop + bc", "mean_max_coverage_mean"] == pytest.approx(0.7)
    assert not any(c.startswith("success_rate") for c in s.columns)
    capsys.readouterr()
    assert cli.main(["plot", "il", "out=x.png", "metric=coverage"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: metric='coverage'") and "success_rate, mean_max_coverage" in line
    assert not (il_runs / "x.png").exists()
