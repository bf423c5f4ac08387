"""``difftop.diagnostics.fixed_data_paired`` on a tiny noback run: the same minibatches with and without the
PG loss. With c0 = 0 the PG path runs (solve, backward, optimizer step) and the arms must stay identical, bit
for bit; with the PG loss the model it trains must differ."""

from __future__ import annotations

import csv
import os

import pytest
import torch

from tests.golden.cases import RL_TINY

# two 10-step cartpole episodes (action repeat 8), 20 updates after the seed steps: a checkpoint and buffer
CHANGED = ("steps=", "eval_every=", "episode_length=", "seed_steps=")
TINY = [a for a in RL_TINY if not a.startswith(CHANGED)] + ["steps=160", "eval_every=160",
                                                            "episode_length=80", "seed_steps=10"]
TANH = "trajopt.bounds=tanh"  # project holds this tiny model's actions at the bounds: a PG gradient of 0


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    os.environ.setdefault("MUJOCO_GL", "egl")
    from difftop.cli import main

    out = tmp_path_factory.mktemp("fdp") / "noback"
    assert main(["rl", *TINY, "agent=difftop_noback", f"out_dir={out}"]) == 0
    return str(out)


def _params(agent) -> list[torch.Tensor]:
    return [p.detach().clone() for m in agent.modules().values() for p in m.state_dict().values()]


def test_without_pg_weight_the_arms_are_identical(run, tmp_path, capsys):
    from difftop.diagnostics import fixed_data_paired

    out = tmp_path / "paired"
    assert fixed_data_paired.main([run, "--updates", "3", "--seeds", "2", "--episodes", "1", "--set", TANH,
                                   "--set", "c0=0", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out.with_suffix(".csv"))))
    assert [r["seed"] for r in rows] == ["start", "0", "1"]
    for r in rows[1:]:
        assert float(r["diff"]) == 0.0 and r["return_A"] == r["return_B"] and r["J_A"] == r["J_B"], r
        assert int(r["pg_steps"]) == 3 and float(r["pg_grad_norm"]) == 0.0
        assert r["J_A"] != rows[0]["J_A"]  # the 3 updates did change the model
    text = capsys.readouterr().out
    assert "B - A over 2 seeds: mean 0, 95% bootstrap CI [0, 0]" in text
    assert out.with_suffix(".md").read_text().strip() == text.strip()


def test_the_pg_loss_changes_what_the_arm_learns(run):
    from difftop.diagnostics.fixed_data_paired import evaluate_solve, load_run, run_arms
    from difftop.rl.trainer import build

    cfg, state, buffer = load_run(run, [TANH])
    a, b, pg = run_arms(cfg, state, buffer, updates=3, seed=0)
    assert pg["pg_steps"] == 3 and pg["pg_grad_norm"] > 0
    assert any(not torch.equal(x, y) for x, y in zip(_params(a), _params(b)))
    env, evals, _ = build(cfg, eval_episodes=1)
    try:
        ea, eb = (evaluate_solve(x, evals, 1, 0, 30_000) for x in (a, b))
    finally:
        for e in (env, *evals):
            e.close()
    assert ea["J"] != eb["J"]
    # batched mode with c0 = 0: the PG loss inside the update, and still no difference at all
    cfg0, _, _ = load_run(run, [TANH, "c0=0"])
    a, b, _ = run_arms(cfg0, state, buffer, updates=2, seed=1, pg_mode="batched")
    assert all(torch.equal(x, y) for x, y in zip(_params(a), _params(b)))


def test_bad_input_is_one_error_line(run, capsys):
    from difftop.diagnostics import fixed_data_paired

    assert fixed_data_paired.main([run, "--set", "trajopt.nope=1"]) == 2
    assert fixed_data_paired.main([run, "--set", "variant=official"]) == 2
    assert fixed_data_paired.main([run, "--updates", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(e.startswith("error: ") for e in err), err


def test_an_interrupted_probe_resumes_from_its_finished_seeds(run, tmp_path, monkeypatch):
    """Seeds written to <out>.partial.jsonl are not run again, and the result equals an uninterrupted run."""
    from difftop.diagnostics import fixed_data_paired as fdp

    args = [run, "--updates", "2", "--seeds", "2", "--episodes", "1", "--set", TANH]
    clean = tmp_path / "clean"
    assert fdp.main([*args, "--out", str(clean)]) == 0
    out = tmp_path / "cut"
    real, calls = fdp.run_arms, []

    def cut_after_first(*a, **kw):
        calls.append(kw["seed"])
        if kw["seed"] == 1:
            raise KeyboardInterrupt  # the machine went away during seed 1
        return real(*a, **kw)

    monkeypatch.setattr(fdp, "run_arms", cut_after_first)
    with pytest.raises(KeyboardInterrupt):
        fdp.main([*args, "--out", str(out)])
    assert out.with_suffix(".partial.jsonl").is_file() and not out.with_suffix(".csv").exists()
    calls.clear()
    monkeypatch.setattr(fdp, "run_arms", lambda *a, **kw: calls.append(kw["seed"]) or real(*a, **kw))
    assert fdp.main([*args, "--out", str(out)]) == 0
    assert calls == [1]  # seed 0 (and the start row) came from the partial file
    assert out.with_suffix(".csv").read_text() == clean.with_suffix(".csv").read_text()
    assert not out.with_suffix(".partial.jsonl").exists()


def test_each_row_says_which_cpu_it_ran_on_also_when_resumed_across_machines(run, tmp_path, monkeypatch):
    """A row resumed from a partial file written on another machine (or before the CPU was recorded) keeps
    its own CPU ("?" if unknown); the table and the CSV show it per row."""
    import json

    from difftop.diagnostics import fixed_data_paired as fdp

    args = [run, "--updates", "1", "--seeds", "2", "--episodes", "1", "--set", TANH]
    out = tmp_path / "mixed"
    real = fdp.run_arms

    def cut(*a, **kw):
        if kw["seed"] == 1:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(fdp, "run_arms", cut)
    with pytest.raises(KeyboardInterrupt):
        fdp.main([*args, "--out", str(out)])
    part = out.with_suffix(".partial.jsonl")
    recs = [json.loads(line) for line in part.read_text().splitlines()]
    assert [r["row"]["cpu"] for r in recs] == [fdp.cpu_name()] * 2  # start and seed 0
    del recs[1]["row"]["cpu"]  # seed 0 as an older partial file wrote it
    part.write_text("".join(json.dumps(r) + "\n" for r in recs))
    monkeypatch.setattr(fdp, "run_arms", real)
    assert fdp.main([*args, "--out", str(out)]) == 0
    table = out.with_suffix(".md").read_text()
    assert "| CPU |" in table and table.count(f"| {fdp.cpu_name()} |") == 2 and "| ? |" in table
    with open(out.with_suffix(".csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["cpu"] for r in rows] == [fdp.cpu_name(), "", fdp.cpu_name()]
