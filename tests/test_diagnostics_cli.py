"""difftop.diagnostics: every probe imports without running anything and answers --help; the RL probes
that reach into an agent run their cheapest mode on tiny runs."""
import importlib
import os
import pkgutil

import pytest

import difftop.diagnostics

MODULES = sorted(m.name for m in pkgutil.iter_modules(difftop.diagnostics.__path__)
                 if not m.name.startswith("_"))


def test_the_package_lists_every_probe():
    assert len(MODULES) >= 18
    for name in MODULES:
        assert f"``{name}``" in difftop.diagnostics.__doc__, name


@pytest.mark.parametrize("name", MODULES)
def test_a_probe_answers_help(name, capsys):
    mod = importlib.import_module(f"difftop.diagnostics.{name}")
    with pytest.raises(SystemExit) as exit_:
        mod.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and mod.__doc__.splitlines()[0].split()[0] in out


# ---------------------------------------------------------------------------------------------------
# The RL probes reach into the agent (its actor's solve, MPPI planner, Q_s critic, PG parameters):
# run their cheapest modes on tiny trained runs, so that a change of the agent's API fails here.

# cartpole: action repeat 8, so a 200-step episode is 25 agent steps; 12 of them random
TINY_RL = ["task=cartpole-swingup", "steps=200", "eval_every=200", "eval_episodes=1", "seed_steps=12",
           "episode_length=200", "mlp_dim=32", "enc_dim=16", "latent_dim=8", "num_samples=16", "num_elites=4",
           "iterations=2", "batch_size=16", "horizon=3", "trajopt.max_iters=5", "threads=1",
           "progress=false", "video=false", "tensorboard=false"]


@pytest.fixture(scope="module")
def rl_runs(tmp_path_factory):
    """{agent: run directory} of a tiny TD-MPC and a tiny DiffTOP run (checkpoint and replay buffer)."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    from difftop.cli import main

    root = tmp_path_factory.mktemp("diag-rl")
    runs = {}
    for agent in ("tdmpc", "difftop"):
        runs[agent] = root / agent
        assert main(["rl", f"agent={agent}", f"out_dir={runs[agent]}", *TINY_RL]) == 0
    return {k: str(v) for k, v in runs.items()}


def _probe(name: str, *args: str) -> None:
    mod = importlib.import_module(f"difftop.diagnostics.{name}")
    assert mod.main(list(args)) == 0


def _rows(out: str, run: str) -> list[list[str]]:
    """The cells of the markdown table rows of ``out`` that name ``run``."""
    return [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()
            if line.startswith(f"| {run} |")]


def test_acting_probe_acts_every_way_on_both_agents(rl_runs, capsys):
    _probe("acting_probe", rl_runs["difftop"], rl_runs["tdmpc"], "--episodes", "1")
    out = capsys.readouterr().out
    for run in rl_runs.values():
        rows = _rows(out, run)
        assert [r[1] for r in rows] == ["solve", "mppi", "pi"], out
        for r in rows:
            float(r[2].split()[0])  # the mean return
        assert rows[0][6] != "-" and rows[1][6] == "-", out  # dJ: a solve's column only


def test_act_op_counts_counts_an_act_of_both_agents(rl_runs, capsys):
    _probe("act_op_counts", rl_runs["tdmpc"], "1")
    _probe("act_op_counts", rl_runs["difftop"], "1")
    out = capsys.readouterr().out
    tdmpc, difftop = _rows(out, rl_runs["tdmpc"])[0], _rows(out, rl_runs["difftop"])[0]
    assert tdmpc[1] == "tdmpc" and tdmpc[4] == "-" and int(tdmpc[5]) > 0, out  # MPPI: no solve
    assert difftop[1] == "difftop" and float(difftop[4]) >= 1 and int(difftop[5]) > 0, out


def test_the_solve_probes_run_on_a_difftop_run(rl_runs, capsys):
    run = rl_runs["difftop"]
    _probe("action_spread", run, rl_runs["tdmpc"], "--states", "2", "--repeats", "2")
    _probe("batch_rounding", run, "--states", "2")
    _probe("pg_gradient_quality", run, "--states", "2", "--ref-iters", "10", "--max-iters", "3")
    out = capsys.readouterr().out
    spread = {r[0]: r for r in (_rows(out, run) + _rows(out, rl_runs["tdmpc"])) if len(r) == 3}
    assert spread[run][2] != "" and spread[rl_runs["tdmpc"]][2] == "", out  # a warm start: DiffTOP's only
    assert "actions, batch vs alone (identical latents)" in out
    assert "| 3 | memory |" in out and "| 3 | exact |" in out


def test_bounds_gradient_measures_every_option(rl_runs, capsys):
    run = rl_runs["difftop"]
    _probe("bounds_gradient", run, "--states", "2")
    rows = _rows(capsys.readouterr().out, run)
    assert [r[1] for r in rows] == ["project", "tanh", "sigmoid", "barrier", "lm_refine", "official"]
    assert all(0.0 <= float(r[2]) <= 1.0 for r in rows)


def test_trained_problem_file_joins_the_family(rl_runs, tmp_path):
    """A run exported as a problem file (difftop.bench.trained) rebuilds the agent's own model and
    observations, and `difftop bench trajopt-family` times it at every batch size."""
    import json

    import torch

    from difftop.bench.family import build, trained_specs
    from difftop.bench.trained import export, load
    from difftop.cli import main
    from difftop.diagnostics.pg_gradient_quality import buffer_states, trained_agent

    path = export(rl_runs["difftop"], tmp_path / "p.safetensors", states=4, seed=3)
    model, obs, meta = load(path)
    agent, cfg, _ = trained_agent(rl_runs["difftop"])
    torch.testing.assert_close(obs, buffer_states(rl_runs["difftop"], 4, 3))
    own = agent.model.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in model.state_dict().items())
    assert meta["horizon"] == cfg.horizon and meta["action_dim"] == agent.model.action_dim
    (spec,) = trained_specs("tuning", [str(path)], seed=5)
    P = build(spec, 6)  # more states than stored: drawn with replacement
    assert P.obs.shape == (6, meta["obs_dim"]) and spec.horizon == meta["horizon"]
    assert main(["bench", "trajopt-family", "runs=1", "warmup=0", "latent_dim=4", "mlp_dim=8", "problems=1",
                 "large_problems=0", "batch_sizes=[1,3]", "trace_iters=6", "split=tuning",
                 f"splits.tuning.trained=[{path}]", f"out_dir={tmp_path}"]) == 0
    rows = json.loads((tmp_path / "trajopt_family_tuning.json").read_text())["results"]
    assert [(r["problem"], r["batch"]) for r in rows] == [("tuning0", 1), ("tuning-p", 1), ("tuning-p", 3)]
