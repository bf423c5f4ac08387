"""`difftop bench rl` smoke run: one tiny round of every row, table and files written."""

import csv
import os

from difftop.cli import main

os.environ.setdefault("MUJOCO_GL", "egl")


def test_bench_rl_writes_a_table(tmp_path, capsys):
    over = '["mlp_dim=16","enc_dim=8","latent_dim=4","batch_size=8","num_samples=8","num_elites=2",' \
           '"iterations=1","episode_length=200","trajopt.max_iters=3","pg_batch_size=2"]'
    assert main(["bench", "rl", f"overrides={over}", "rounds=1", "warmup=0", "steps_per_round=1",
                 "buffer_episodes=2", f"out_dir={tmp_path}", "tag=_t", "rl_preset=quick"]) == 0
    out = capsys.readouterr().out
    assert "ratio vs TD-MPC" in out and "rl_preset=quick" in out
    with open(tmp_path / "rl_t.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["row"] for r in rows][0] == "tdmpc" and len(rows) == 7
    assert rows[-1]["row"] == "difftop (official)"
    assert float(rows[0]["ratio_vs_tdmpc"]) == 1.0
    assert all(float(r["env_steps_per_s"]) > 0 for r in rows)


def test_bench_rl_unknown_preset_is_one_line(tmp_path, capsys):
    assert main(["bench", "rl", "rl_preset=nope", f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown rl_preset 'nope'" in err and "quick" in err


def test_bench_rl_unknown_row_is_one_line(tmp_path, capsys):
    assert main(["bench", "rl", "rows=[tdmpc,foo]", f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown bench rl rows ['foo']" in err and "difftop_noback" in err
    assert not list(tmp_path.iterdir())  # nothing written
