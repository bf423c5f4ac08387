"""The RL comparison as a table: final returns per task and agent over seeds, and DiffTOP paired with
TD-MPC and with DiffTOP w/o backward seed by seed.

    .venv/bin/python -m difftop.diagnostics.rl_table results/rl/states/runs \
        [--out results/rl/states/cpu_states.md]

For every <root>/<task>/<agent>/seed<k>: the 5-episode evaluation at 100k env steps (eval.csv) and the
20-episode evaluation of the final checkpoint (final20/eval.json, env seeds 20000-20019). Only runs
that reached 100k count; mean ± std over seeds is the population std. "published" is TD-MPC's 100k
state return from the paper's reference curves (../shared/reference-curves/tdmpc-state). "hours" is
each run's wall-clock time to 100k: seeds ran at different times on different machines and loads
(seed 1's cartpole TD-MPC took 1.83 h, seed 2's 0.38 h), so compare times within a seed only.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

STEPS = 100_000
AGENTS = [("tdmpc", "TD-MPC"), ("difftop", "DiffTOP"), ("difftop_noback", "DiffTOP w/o backward")]
# TD-MPC, 100k, states: the figures; cartpole-swingup-sparse is the mean of the 5 seeds at 100k in
# ../shared/reference-curves/tdmpc-state (775, 766, 782, 788, 749)
PUBLISHED = {"cartpole-swingup": 859, "reacher-easy": 893, "finger-spin": 949, "cartpole-swingup-sparse": 772}
PAIRS = [("difftop", "tdmpc"), ("difftop", "difftop_noback"), ("difftop_noback", "tdmpc")]


def final_returns(run: Path) -> tuple[float, float, float] | None:
    """(return at 100k over 5 episodes, final20 mean, wall-clock hours to 100k) of a finished run."""
    try:
        with open(run / "eval.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        final20 = json.loads((run / "final20" / "eval.json").read_text())["mean"]
    except (OSError, KeyError, ValueError):
        return None
    if not rows or int(float(rows[-1]["env_step"])) != STEPS:
        return None
    return float(rows[-1]["episode_reward"]), float(final20), float(rows[-1]["wall_time"]) / 3600


def mean_std(xs: list[float]) -> str:
    return f"{statistics.fmean(xs):.1f} ± {statistics.pstdev(xs):.1f}"


def collect(root: Path) -> dict[str, dict[str, dict[int, tuple[float, float, float]]]]:
    """task -> agent -> seed -> (eval at 100k, final20, hours) for the finished runs under root."""
    out: dict = {}
    order = list(PUBLISHED)  # the three tasks of the comparison first, then any other by name
    for task_dir in sorted((p for p in root.iterdir() if p.is_dir()),
                           key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name)):
        for agent, _ in AGENTS:
            for run in sorted((task_dir / agent).glob("seed*")):
                if (r := final_returns(run)) is not None:
                    out.setdefault(task_dir.name, {}).setdefault(agent, {})[int(run.name[4:])] = r
    return out


def tables(root: Path) -> str:
    data, names = collect(root), dict(AGENTS)
    lines = ["| task | agent | seeds | 100k eval, per seed | 100k eval | final20, per seed | final20 "
             "| published TD-MPC | hours, per seed |", "|---|---|---|---|---|---|---|---|---|"]
    for task, agents in data.items():
        for agent, _ in AGENTS:
            runs = agents.get(agent)
            if not runs:
                continue
            seeds = sorted(runs)
            cols = []
            for i in (0, 1):  # the 100k evaluation, then final20
                xs = [runs[s][i] for s in seeds]
                cols += [", ".join(f"{x:.1f}" for x in xs), mean_std(xs)]
            lines.append(f"| {task} | {names[agent]} | {', '.join(map(str, seeds))} | {' | '.join(cols)} | "
                         f"{PUBLISHED.get(task, '-')} | {', '.join(f'{runs[s][2]:.2f}' for s in seeds)} |")
    lines += ["", "Paired on the same seed (final20 returns): A - B per seed, and in how many seeds A >= B",
              "", "| task | A - B | seeds | per seed | mean ± std | A >= B |", "|---|---|---|---|---|---|"]
    for task, agents in data.items():
        for a, b in PAIRS:
            seeds = sorted(set(agents.get(a, {})) & set(agents.get(b, {})))
            if not seeds:
                continue
            d = [agents[a][s][1] - agents[b][s][1] for s in seeds]
            lines.append(f"| {task} | {names[a]} - {names[b]} | {', '.join(map(str, seeds))} | "
                         f"{', '.join(f'{x:+.1f}' for x in d)} | {statistics.fmean(d):+.1f} ± "
                         f"{statistics.pstdev(d):.1f} | {sum(x >= 0 for x in d)} of {len(d)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="directory holding <task>/<agent>/seed<k>/")
    ap.add_argument("--out", type=Path, help="also write the tables to this file")
    args = ap.parse_args(argv)
    if not args.root.is_dir():
        print(f"error: {args.root} is not a directory", file=sys.stderr)
        return 2
    text = tables(args.root)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
