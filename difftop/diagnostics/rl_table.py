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

Then every DiffTOP arm is paired with its no-backward twin (issue 31): for each run folder
<root>/<task>/<dir>/seed<k> whose config.yaml has ``agent: difftop`` (any directory name, e.g. a
``label``led arm such as difftop_barrier, official or difftop_null), the ``difftop_noback`` run with the same
seed and the same setting (``TWIN_KEYS``: task, obs, variant, trajopt solver and bounds, distractors, model
size, action repeat). Why pair: seeds of one task differ by hundreds of return, so only the difference
within a seed says what the loss through the solve did. Each pair is compared on final20 when both runs
have it, else on the last env step both evaluated (``--at STEP``: that step's eval.csv row); the table
gives the mean difference over seeds with a 95% percentile bootstrap interval (difftop.diagnostics._stats).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import yaml

from difftop.diagnostics._stats import bootstrap_ci

STEPS = 100_000
AGENTS = [("tdmpc", "TD-MPC"), ("difftop", "DiffTOP"), ("difftop_noback", "DiffTOP w/o backward")]
# TD-MPC, 100k, states: the figures; cartpole-swingup-sparse is the mean of the 5 seeds at 100k in
# ../shared/reference-curves/tdmpc-state (775, 766, 782, 788, 749)
PUBLISHED = {"cartpole-swingup": 859, "reacher-easy": 893, "finger-spin": 949, "cartpole-swingup-sparse": 772}
PAIRS = [("difftop", "tdmpc"), ("difftop", "difftop_noback"), ("difftop_noback", "tdmpc")]
#: config keys an arm and its no-backward twin share (with the seed), and their values when a run's config
#: predates them
TWIN_KEYS = {"task": None, "obs": "state", "variant": "difftop", "trajopt.solver": "lbfgs",
             "trajopt.bounds": "project", "distractors": 0, "latent_dim": None, "mlp_dim": None,
             "action_repeat": None}


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


def _get(cfg: dict, key: str, default=None):
    for part in key.split("."):
        cfg = cfg.get(part) if isinstance(cfg, dict) else None
    return default if cfg is None else cfg


def read_run(run: Path) -> dict | None:
    """A run folder's agent, seed, twin key, eval returns by env step and final20 mean (None: no config)."""
    try:
        cfg = yaml.safe_load((run / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(cfg, dict) or "agent" not in cfg:
        return None
    evals = {}
    try:
        with open(run / "eval.csv", newline="") as f:
            evals = {int(float(r["env_step"])): float(r["episode_reward"]) for r in csv.DictReader(f)}
    except (OSError, KeyError, ValueError):
        pass
    try:
        final20 = float(json.loads((run / "final20" / "eval.json").read_text())["mean"])
    except (OSError, KeyError, ValueError, TypeError):
        final20 = None
    seed = int(cfg.get("seed", run.name[4:] if run.name[4:].isdigit() else -1))
    key = tuple(_get(cfg, k, d) for k, d in TWIN_KEYS.items())
    return {"path": run, "agent": cfg["agent"], "seed": seed, "key": key, "evals": evals, "final20": final20}


def compare_pair(a: dict, b: dict, at: int | None) -> tuple[float, str] | None:
    """(a's return - b's, what was compared) for one seed pair, or None when they share no measurement."""
    if at is not None:
        if at in a["evals"] and at in b["evals"]:
            return a["evals"][at] - b["evals"][at], f"eval@{at}"
        return None
    if a["final20"] is not None and b["final20"] is not None:
        return a["final20"] - b["final20"], "final20"
    common = set(a["evals"]) & set(b["evals"])
    if not common:
        return None
    step = max(common)
    return a["evals"][step] - b["evals"][step], f"eval@{step}"


def twin_pairs(root: Path, at: int | None = None) -> tuple[dict, list[str]]:
    """((task, arm dir, twin dir) -> {seed: (difference, measure)}, notes on arms left unpaired)."""
    runs = [r for task_dir in sorted(p for p in root.iterdir() if p.is_dir())
            for arm_dir in sorted(p for p in task_dir.iterdir() if p.is_dir())
            for seed_dir in sorted(arm_dir.glob("seed*")) if (r := read_run(seed_dir)) is not None]
    twins: dict = {}
    for r in runs:
        if r["agent"] == "difftop_noback":
            twins.setdefault((r["key"], r["seed"]), []).append(r)
    out: dict = {}
    notes = []
    for r in runs:
        if r["agent"] != "difftop":
            continue
        where = f"{r['path'].parent.parent.name}/{r['path'].parent.name}/{r['path'].name}"
        found = twins.get((r["key"], r["seed"]), [])
        if len(found) != 1:
            notes.append(f"{where}: {'no' if not found else len(found)} no-backward twin"
                         f"{'s' if found else ''} with the same setting ({', '.join(TWIN_KEYS)}) and seed"
                         + (": " + ", ".join(str(t["path"]) for t in found) if found else ""))
            continue
        twin = found[0]
        d = compare_pair(r, twin, at)
        if d is None:
            notes.append(f"{where}: no evaluation in common with its twin {twin['path']}")
            continue
        key = (r["path"].parent.parent.name, r["path"].parent.name, twin["path"].parent.name)
        out.setdefault(key, {})[r["seed"]] = d
    return out, notes


def twin_table(root: Path, at: int | None = None) -> str:
    """Each DiffTOP arm minus its no-backward twin, per task: per seed, mean and 95% bootstrap interval."""
    pairs, notes = twin_pairs(root, at)
    lines = ["Each DiffTOP arm paired with its no-backward twin (same task, seed and setting): arm - twin "
             "per seed, mean with a 95% bootstrap interval over seeds", "",
             "| task | arm - twin | seeds | compared on | per seed | mean [95% CI] | arm > twin |",
             "|---|---|---|---|---|---|---|"]
    for (task, arm, twin), by_seed in pairs.items():
        seeds = sorted(by_seed)
        d = np.array([by_seed[s][0] for s in seeds])
        lo, hi = bootstrap_ci(d)
        measures = ", ".join(sorted({by_seed[s][1] for s in seeds}))
        lines.append(f"| {task} | {arm} - {twin} | {', '.join(map(str, seeds))} | {measures} | "
                     f"{', '.join(f'{x:+.1f}' for x in d)} | {d.mean():+.1f} [{lo:+.1f}, {hi:+.1f}] | "
                     f"{int((d > 0).sum())} of {len(d)} |")
    if notes:
        lines += ["", "Not paired:", *[f"- {n}" for n in notes]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="directory holding <task>/<agent>/seed<k>/")
    ap.add_argument("--out", type=Path, help="also write the tables to this file")
    ap.add_argument("--at", type=int, default=None,
                    help="pair the twins on this env step's evaluation (default: final20, else the last "
                         "common step)")
    args = ap.parse_args(argv)
    if not args.root.is_dir():
        print(f"error: {args.root} is not a directory", file=sys.stderr)
        return 2
    text = tables(args.root) + "\n\n" + twin_table(args.root, args.at)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
