"""Q_s's TD loss on one step of each sub-trajectory (qs_horizon=1, the pixel default) against all H
steps (the official release, the state default), DiffTOP from states, seed by seed.

    .venv/bin/python results/rl/qs-horizon/qs_horizon_table.py [--out results/rl/qs-horizon/qs_horizon.md]

All H: results/rl/states/runs/<task>/difftop/seed<k> (the issue-4 comparison). One step:
results/rl/qs-horizon/runs/<task>/difftop/seed<k> (`ROOT=runs/cpu-qs1 OVERRIDES="qs_horizon=1" bash
tools/run_rl_cpu.sh <task> difftop <seeds>`), otherwise the same command and preset (cpu).
Returns: the 20-episode evaluation of the final (100k) checkpoint, seeds 20000-20019.
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from difftop.diagnostics.rl_table import final_returns

HERE = Path(__file__).resolve().parent
ALL_H = HERE.parent / "states" / "runs"
ONE = HERE / "runs"
TASKS = ("cartpole-swingup", "reacher-easy", "finger-spin")


def fmt(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.1f} ± {statistics.pstdev(xs):.1f}" if xs else "-"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    args = ap.parse_args()
    lines = ["| task | seeds | all H: final20 per seed | all H | qs_horizon=1: final20 per seed "
             "| qs_horizon=1 | one - all, per seed | hours, all H / one |",
             "|---|---|---|---|---|---|---|---|"]
    for task in TASKS:
        seeds = sorted(int(p.name[4:]) for p in (ONE / task / "difftop").glob("seed*"))
        pairs = []
        for s in seeds:
            a = final_returns(ALL_H / task / "difftop" / f"seed{s}")
            b = final_returns(ONE / task / "difftop" / f"seed{s}")
            if a and b:
                pairs.append((s, a, b))
        if not pairs:
            continue
        alls, ones = [p[1][1] for p in pairs], [p[2][1] for p in pairs]
        lines.append(
            f"| {task} | {', '.join(str(p[0]) for p in pairs)} | {', '.join(f'{x:.1f}' for x in alls)} | "
            f"{fmt(alls)} | {', '.join(f'{x:.1f}' for x in ones)} | {fmt(ones)} | "
            f"{', '.join(f'{b - a:+.1f}' for a, b in zip(alls, ones))} | "
            f"{', '.join(f'{p[1][2]:.2f} / {p[2][2]:.2f}' for p in pairs)} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
