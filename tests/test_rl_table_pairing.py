"""``difftop.diagnostics.rl_table`` pairs every DiffTOP arm with its no-backward twin (same task, seed and
setting) and gives the paired difference with a bootstrap interval; run on synthetic run folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from difftop.diagnostics import rl_table
from difftop.diagnostics._stats import bootstrap_ci


def _run(root, task, folder, seed, agent, evals, final20=None, **cfg):
    d = root / task / folder / f"seed{seed}"
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"task": task, "agent": agent, "seed": seed, "obs": "state",
                                                   "latent_dim": 50, **cfg}))
    rows = "".join(f"{s},{i},1.0,{r},0.0,5\n" for i, (s, r) in enumerate(evals.items()))
    head = "env_step,episode,wall_time,episode_reward,episode_reward_std,episodes\n"
    (d / "eval.csv").write_text(head + rows)
    if final20 is not None:
        (d / "final20").mkdir()
        (d / "final20" / "eval.json").write_text(json.dumps({"mean": final20}))


@pytest.fixture
def root(tmp_path):
    t = "reacher-easy"
    barrier = {"trajopt": {"solver": "lbfgs", "bounds": "barrier"}}
    official = {"variant": "official", "trajopt": {"solver": "lm_refine", "bounds": "project"}}
    for k, (arm, twin) in enumerate([(500, 450), (600, 640), (700, 610)], start=1):
        _run(tmp_path, t, "difftop", k, "difftop", {0: 1, 100000: arm + 5}, final20=arm)  # an old config
        _run(tmp_path, t, "difftop_noback", k, "difftop_noback", {0: 1, 100000: twin + 5}, final20=twin,
             trajopt={"solver": "lbfgs"})
        _run(tmp_path, t, "difftop_barrier", k, "difftop", {0: 2, 50000: arm + 100}, **barrier)
        if k < 3:  # the barrier twin of seed 3 is missing
            _run(tmp_path, t, "noback_barrier", k, "difftop_noback", {0: 2, 50000: twin, 60000: 9}, **barrier)
        _run(tmp_path, t, "difftop_null", k, "difftop", {0: 1, 100000: 10 * k}, final20=twin + k,
             pg_null=True)
    _run(tmp_path, t, "official", 1, "difftop", {0: 0, 20000: 300}, **official)
    _run(tmp_path, t, "official_noback", 1, "difftop_noback", {0: 0, 20000: 350}, **official)
    _run(tmp_path, t, "tdmpc", 1, "tdmpc", {0: 0, 100000: 900}, final20=900)
    # finger-spin: two noback runs of the same setting -> ambiguous, left unpaired
    for folder in ("difftop_noback", "noback_copy"):
        _run(tmp_path, "finger-spin", folder, 1, "difftop_noback", {0: 0, 1000: 5})
    _run(tmp_path, "finger-spin", "difftop", 1, "difftop", {0: 0, 1000: 6})
    return tmp_path


def test_each_arm_is_paired_with_its_twin_seed_by_seed(root):
    pairs, notes = rl_table.twin_pairs(root)
    t = "reacher-easy"
    assert pairs[(t, "difftop", "difftop_noback")] == {1: (50.0, "final20"), 2: (-40.0, "final20"),
                                                       3: (90.0, "final20")}
    # no final20: the last env step both evaluated (50000, not the twin's extra 60000)
    assert pairs[(t, "difftop_barrier", "noback_barrier")] == {1: (150.0, "eval@50000"),
                                                               2: (60.0, "eval@50000")}
    assert pairs[(t, "difftop_null", "difftop_noback")] == {k: (float(k), "final20") for k in (1, 2, 3)}
    assert pairs[(t, "official", "official_noback")] == {1: (-50.0, "eval@20000")}
    assert len(pairs) == 4  # TD-MPC and the ambiguous finger-spin arm are in no pair
    assert any("difftop_barrier/seed3: no no-backward twin" in n for n in notes), notes
    assert any("finger-spin/difftop/seed1: 2 no-backward twins" in n for n in notes), notes
    at = rl_table.twin_pairs(root, at=100000)[0]
    assert at[(t, "difftop", "difftop_noback")][1] == (50.0, "eval@100000")
    assert (t, "official", "official_noback") not in at


def test_the_table_gives_the_mean_and_bootstrap_interval(root, capsys):
    assert rl_table.main([str(root), "--out", str(root / "t.md")]) == 0
    out = capsys.readouterr().out
    lo, hi = bootstrap_ci([50.0, -40.0, 90.0])
    row = (f"| reacher-easy | difftop - difftop_noback | 1, 2, 3 | final20 | +50.0, -40.0, +90.0 | "
           f"+33.3 [{lo:+.1f}, {hi:+.1f}] | 2 of 3 |")
    assert row in out, out
    assert ("| reacher-easy | official - official_noback | 1 | eval@20000 | -50.0 | -50.0 [-50.0, -50.0] "
            "| 0 of 1 |") in out
    assert "Not paired:" in out and (root / "t.md").read_text().strip() == out.strip()


def test_bootstrap_interval():
    assert bootstrap_ci([3.0]) == (3.0, 3.0) and bootstrap_ci([2.0] * 5) == (2.0, 2.0)
    x = np.random.default_rng(1).normal(10.0, 2.0, 400)
    lo, hi = bootstrap_ci(x)
    half = 1.96 * x.std() / np.sqrt(len(x))  # a large sample: close to the normal interval
    assert lo < x.mean() < hi and abs((hi - lo) / 2 - half) < 0.1 * half
    assert abs((lo + hi) / 2 - x.mean()) < 0.1 * half
    assert bootstrap_ci(x) == (lo, hi)  # seeded: a table is reproducible
    assert np.isnan(bootstrap_ci([])[0])
