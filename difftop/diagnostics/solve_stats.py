"""Per-run summary of DiffTOP's solves and PG steps from train.csv (the figures quoted in README.md).

For each run directory given (or found below the given folders): the mean solve iterations, the
fraction of acting solves flagged (not converged by max_iters, or damped / inexact backward) over
the whole run and over its last 15% of env steps, and how many per-episode PG gradient norms
(before clipping) exceeded 1000.

    .venv/bin/python -m difftop.diagnostics.solve_stats \
        results/rl/pg-gradient/runs-memory results/rl/pg-gradient/runs-iters20 results/rl/states/runs
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", help="run directories or folders above them")
    args = ap.parse_args(argv)
    runs = sorted({p.parent for a in args.paths for p in Path(a).rglob("train.csv")})
    print("| run | max_iters | env steps | solve iterations | flagged (all) | flagged (last 15%) "
          "| episodes with PG grad norm > 1000 |")
    print("|---|---|---|---|---|---|---|")
    for run in runs:
        t = pd.read_csv(run / "train.csv")
        if "solve_flagged" not in t or t["solve_flagged"].isna().all():
            continue  # TD-MPC: no solves
        t = t.dropna(subset=["solve_flagged"])
        cfg = (run / "config.yaml").read_text() if (run / "config.yaml").exists() else ""
        max_iters = next((ln.split(":")[1].strip() for ln in cfg.splitlines()
                          if ln.strip().startswith("max_iters:")), "?")
        last = t[t.env_step >= 0.85 * t.env_step.max()]
        pg = t["pg_grad_norm"].dropna() if "pg_grad_norm" in t else pd.Series(dtype=float)
        big = f"{int((pg > 1000).sum())} of {len(pg)}" if len(pg) else "-"
        print(f"| {run} | {max_iters} | {int(t.env_step.max())} | {t.solve_iters.mean():.1f} "
              f"| {t.solve_flagged.mean():.2f} | {last.solve_flagged.mean():.2f} | {big} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
