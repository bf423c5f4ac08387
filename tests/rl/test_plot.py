"""`difftop plot` on RL runs (difftop/plot/, difftop/rl/plot.py): grouping, seeds, references, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from difftop import cli
from difftop.plot.curves import REPO_ROOT, aggregate, resolve_reference_dir


def write_run(root: Path, name: str, rows: list[tuple[float, float, float]], **config) -> Path:
    """A run dir with config.yaml and eval.csv rows (env_step, wall_time, episode_reward)."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("".join(f"{k}: {v}\n" for k, v in config.items()))
    lines = ["env_step,episode,wall_time,episode_reward"]
    lines += [f"{s:g},{i},{t:g},{r:g}" for i, (s, t, r) in enumerate(rows)]
    (run / "eval.csv").write_text("\n".join(lines) + "\n")
    return run


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """Two cartpole seeds of agent `a` evaluated at different steps, one walker run of agent `b`."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    root = tmp_path / "runs"
    cfg = {"task": "cartpole-swingup", "agent": "a", "obs": "state"}
    # seed 0: two eval episodes at step 2000 (190 and 210: mean 200)
    write_run(root, "a/0", [(0, 0, 0), (1000, 360, 100), (2000, 720, 190), (2000, 720, 210)], **cfg, seed=0)
    write_run(root, "a/1", [(0, 0, 10), (1500, 540, 160), (2500, 900, 260)], **cfg, seed=1)
    write_run(
        tmp_path / "other", "b0", [(0, 0, 5), (500, 100, 50)], task="walker-walk", agent="b", obs="state"
    )
    return tmp_path


def summary(path: Path) -> pd.DataFrame:
    return pd.read_csv(path).set_index(["source", "task", "agent"])


def test_aggregate_interpolates_on_common_range():
    c = aggregate(
        [
            (np.array([0.0, 1000, 2000]), np.array([0.0, 100, 200])),
            (np.array([0.0, 1500, 2500]), np.array([10.0, 160, 260])),
        ]
    )
    np.testing.assert_array_equal(c.x, [0, 1000, 1500, 2000])  # union within [0, min(2000, 2500)]
    np.testing.assert_allclose(c.mean, [5, 105, 155, 205])  # seed 1 at 1000: 10 + 150 * 2/3 = 110
    np.testing.assert_allclose(c.std, [5, 5, 5, 5])
    assert c.n == 2 and c.at(1750) == pytest.approx((180, 5)) and np.isnan(c.at(2100)[0])


def test_plot_writes_figure_and_summary(runs, capsys):
    out = runs / "figs" / "curves.png"
    rc = cli.main(["plot", "runs", str(runs / "other" / "b0"), "runs/a/0", f"out={out}"])
    assert rc == 0, capsys.readouterr().err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    s = summary(out.with_suffix(".csv"))
    a = s.loc[("run", "cartpole-swingup", "a")]
    assert a["n_seeds"] == 2 and a["seeds"] == "0 1"  # runs/a/0 given twice: counted once
    assert (
        a["last_step"] == 2000
        and a["final_mean"] == pytest.approx(205)
        and a["final_std"] == pytest.approx(5)
    )
    assert a["hours_mean"] == pytest.approx((720 + 900) / 2 / 3600)
    b = s.loc[("run", "walker-walk", "b")]
    assert b["n_seeds"] == 1 and b["final_mean"] == 50 and b["final_std"] == 0 and b["last_step"] == 500
    assert len(s) == 2 and "saved" in capsys.readouterr().out


def test_label_draws_a_variant_of_an_agent_apart(runs):
    """A run whose config has `label` (e.g. difftop with pg_mode=batched) is its own group."""
    write_run(runs / "runs", "a_batched/0", [(0, 0, 0), (2000, 700, 400)],
              task="cartpole-swingup", agent="a", obs="state", seed=0, label="a_batched")
    assert cli.main(["plot", "runs", "out=c.png"]) == 0
    s = summary(runs / "c.csv")
    assert s.loc[("run", "cartpole-swingup", "a")]["n_seeds"] == 2  # the labelled run is not merged in
    v = s.loc[("run", "cartpole-swingup", "a_batched")]
    assert v["n_seeds"] == 1 and v["final_mean"] == 400


def test_x_both_adds_a_row_of_time_panels(runs):
    import matplotlib.image as mpimg

    for x in ("steps", "both"):
        assert cli.main(["plot", "runs", f"out={x}.png", f"x={x}"]) == 0
    h_steps, h_both = mpimg.imread("steps.png").shape[0], mpimg.imread("both.png").shape[0]
    assert h_both == pytest.approx(2 * h_steps, rel=0.15)


def test_reference_overlay(runs):
    refs = runs / "refs" / "myref"
    refs.mkdir(parents=True)
    rows = [
        (seed, step, ret + seed * 10) for seed in (1, 2) for step, ret in ((0, 0), (1000, 300), (3000, 900))
    ]
    pd.DataFrame(rows, columns=["seed", "step", "return"]).to_csv(refs / "cartpole-swingup.csv", index=False)
    drq = runs / "drq" / "dmc_whatever.csv"  # DrQ-v2 layout: task from its column, frames as steps
    drq.parent.mkdir()
    pd.DataFrame(
        {
            "agent": "DrQ-v2",
            "task": "cartpole_swingup",
            "seed": [1, 1],
            "frame": [0, 4000],
            "episode_reward": [0, 400],
            "hour": 0,
        }
    ).to_csv(drq)
    refs_arg = f"reference=[myref,{drq}]"
    rc = cli.main(["plot", "runs", "other", "out=c.png", refs_arg, f"reference_dir={runs / 'refs'}"])
    assert rc == 0
    s = summary(runs / "c.csv")
    ref = s.loc[("reference", "cartpole-swingup", "myref")]  # at step 2000: 610 (seed 1) and 620 (seed 2)
    assert ref["last_step"] == 2000 and ref["n_seeds"] == 2
    assert ref["final_mean"] == pytest.approx(615) and ref["final_std"] == pytest.approx(5)
    assert ("run", "walker-walk", "b") in s.index
    assert s.loc[("reference", "cartpole-swingup", "drq"), "final_mean"] == pytest.approx(200)
    assert ("reference", "walker-walk", "myref") not in s.index  # no reference for that task: skipped


def test_unknown_reference_lists_available(runs, capsys):
    (runs / "refs" / "known").mkdir(parents=True)
    assert cli.main(["plot", "runs", "out=c.png", "reference=nosuch", f"reference_dir={runs / 'refs'}"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "unknown reference 'nosuch'" in line and "known" in line


def test_reference_dir_falls_back_to_repository_layout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (
        resolve_reference_dir("../shared/reference-curves")
        == (REPO_ROOT / "../shared/reference-curves").resolve()
    )
    (tmp_path / "here").mkdir()
    assert resolve_reference_dir("here") == Path("here")


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: (p / "empty").mkdir(), "no eval.csv found under empty"),
        (lambda p: None, "no such file or directory: empty"),
        (lambda p: write_run(p, "empty/r", [(0, 0, 1)], task="t", agent="a"), "lacks the key(s) obs"),
        (
            lambda p: (write_run(p, "empty/r", [], task="t", agent="a", obs="s") / "eval.csv").write_bytes(
                b'x,"y\n1'
            ),
            "cannot read",
        ),
        (
            lambda p: (write_run(p, "empty/r", [], task="t", agent="a", obs="s") / "eval.csv").write_text(
                "env_step\n1\n"
            ),
            "lacks the column(s) wall_time, episode_reward",
        ),
        (
            lambda p: write_run(p, "empty/r", [], task="t", agent="a", obs="s"),
            "every eval.csv under empty is empty",
        ),
    ],
)
def test_bad_input_is_one_line_error(tmp_path, monkeypatch, capsys, setup, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    setup(tmp_path)
    assert cli.main(["plot", "empty", "out=c.png"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and message in line
    assert not (tmp_path / "c.png").exists()
