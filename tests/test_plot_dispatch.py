"""`difftop plot` dispatches on the kind of run (difftop/plot/): no RL/IL import cycle, the kind read from
config.yaml or eval.csv, and one registry entry per kind (issue 28)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import difftop.plot as plot
from difftop import cli

PKG = Path(plot.__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at its top or inside functions (a lazy import is still a cycle)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


@pytest.mark.parametrize(
    "module, forbidden",
    [
        ("rl/plot.py", "difftop.il"),
        ("il/plot.py", "difftop.rl"),
        ("plot/curves.py", "difftop.rl"),
        ("plot/curves.py", "difftop.il"),
        ("plot/__init__.py", "difftop.rl"),
        ("plot/__init__.py", "difftop.il"),
    ],
)
def test_no_plot_module_imports_the_other_kind(module, forbidden):
    bad = sorted(m for m in _imports(PKG / module) if m == forbidden or m.startswith(forbidden + "."))
    assert not bad, f"difftop/{module} imports {bad}"


def test_plot_command_goes_through_the_registry():
    assert cli.COMMANDS[("plot",)] == ("plot", "difftop.plot:main")
    assert set(plot.PLOTTERS) == {"rl", "il"}


def _run(root: Path, name: str, config: str, csv: str) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(config)
    (run / "eval.csv").write_text(csv)
    return run


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    return tmp_path


def test_kind_from_config_then_from_columns(work):
    from omegaconf import OmegaConf

    rl_csv = "env_step,episode,wall_time,episode_reward\n0,0,0,1\n"
    il_csv = "step,wall_time,success_rate\n1,0,0.5\n"
    cases = {
        "agent": ("task: t\nagent: a\nobs: state\n", il_csv, "rl"),  # the config wins over the columns
        "policy": ("task: t\npolicy: bc\nobs: state\n", rl_csv, "il"),
        "kind": ("kind: il\ntask: t\nagent: a\nobs: state\n", rl_csv, "il"),
        "rl-columns": ("task: t\n", rl_csv, "rl"),
        "il-columns": ("task: t\n", "step,mean_score\n1,2\n", "il"),
    }
    for name, (config, csv, kind) in cases.items():
        run = _run(work, name, config, csv)
        assert plot.run_kind(run, OmegaConf.load(run / "config.yaml")) == kind, name


def test_each_kind_reaches_its_plotter(work, monkeypatch, capsys):
    import pandas as pd

    seen = []

    def fake(kind):
        def plotter(cfg, dirs, configs, out):
            seen.append((kind, sorted(d.name for d in dirs), out.name))
            return pd.DataFrame([{"seeds": "0", "n": len(dirs)}]), len(dirs), 1
        return plotter

    import difftop.rl.plot as rl_plot

    monkeypatch.setattr(rl_plot, "plot_runs", fake("rl"))
    _run(work / "rl", "a", "task: t\n", "env_step,episode,wall_time,episode_reward\n0,0,0,1\n")
    _run(work / "rl", "b", "task: t\nagent: x\nobs: s\n", "")
    assert cli.main(["plot", "rl", "out=r.png"]) == 0
    assert seen == [("rl", ["a", "b"], "r.png")] and (work / "r.csv").exists()
    assert "saved r.png and r.csv (2 runs in 1 groups)" in capsys.readouterr().out


def test_a_run_of_no_known_kind_is_one_line(work, capsys):
    _run(work, "odd", "task: t\n", "step,foo\n1,2\n")
    assert cli.main(["plot", "odd", "out=x.png"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: cannot tell what kind of run") and "odd" in line


def test_an_il_run_without_policy_is_one_line(work, capsys):
    """Dispatched by its columns, an IL run without a policy gets the IL reader's one-line error."""
    _run(work, "r", "task: t\nobs: state\n", "step,success_rate\n1,0.5\n")
    assert cli.main(["plot", "r", "out=x.png"]) == 2
    assert "lacks the key(s) policy" in capsys.readouterr().err
