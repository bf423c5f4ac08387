"""``difftop plot`` for RL runs: returns vs environment steps and wall-clock, mean +- std over seeds,
beside published curves.

:mod:`difftop.plot` finds the run folders and sends RL runs here (``plot_runs``); the seed
aggregation, reference curves and figure saving are :mod:`difftop.plot.curves`'.

A run directory holds ``config.yaml`` (keys ``task``, ``agent``, ``obs``, optionally ``seed`` and
``label``, which replaces the agent's name so that variants of one agent, e.g. ``pg_mode=batched``,
are drawn apart; an ``agent``/``task``/``obs`` given as a node is named by its ``name`` key) and
``eval.csv`` with the columns ``env_step, episode, wall_time, episode_reward`` (``wall_time``:
seconds since the run started). Runs are grouped by (task, agent or label, obs); each group is
drawn as the mean +- std (numpy's ``std``, ddof 0) across its runs (seeds), against environment
steps and against wall-clock hours (the paper's Figs. 3 and 7), one panel per task, one colour per
agent. Seeds evaluated at slightly different steps (or times) are put on a common grid
(:func:`difftop.plot.curves.aggregate`). Rows of one run with the same ``env_step`` (several eval
episodes) are averaged first.

``reference=`` overlays published curves (grey, dashed, mean +- std over their seeds, on the
env-steps panels only): folder names in ``reference_dir`` (one ``<task>.csv`` per task), other
folders, or single CSV files. Their columns are recognised by name: step from ``env_step``,
``step`` or ``frame`` (DrQ-v2's frames are environment steps), return from ``episode_reward``,
``return`` or ``reward``, and ``seed``; a single file's task comes from its ``task`` column or else
from its file name. The summary lists each group's final mean, std, number of seeds and last
common step, and each reference's value at that step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, ListConfig

from difftop.envs.dmc import task_key
from difftop.errors import UserError
from difftop.plot.curves import (
    REPO_ROOT,
    Curve,
    aggregate,
    as_list,
    draw_band,
    group_by,
    load_references,
    numeric,
    pyplot,
    read_csv,
    resolve_reference_dir,
    save_figure,
)

__all__ = ["Run", "load_run", "draw", "summarise", "plot_runs",
           "REPO_ROOT", "Curve", "aggregate", "resolve_reference_dir"]  # the last four: older imports

EVAL_COLUMNS = ("env_step", "wall_time", "episode_reward")
STEP_COLUMNS = ("env_step", "step", "frame")
RETURN_COLUMNS = ("episode_reward", "return", "reward")
X_MODES = {"steps": ("steps",), "time": ("time",), "both": ("steps", "time")}


@dataclass
class Run:
    """One run: its group key and its eval curve (one row per eval step)."""

    path: Path
    task: str
    agent: str
    obs: str
    seed: Any
    step: np.ndarray
    hours: np.ndarray
    reward: np.ndarray

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.task, self.agent, self.obs)


def _name_of(value: Any, what: str, config: Path) -> str:
    if isinstance(value, DictConfig):
        if "name" not in value:
            raise UserError(f"{config}: `{what}` is a node without a `name` key")
        value = value.name
    if value is None or isinstance(value, ListConfig):
        raise UserError(f"{config}: `{what}` must be a name, got {value!r}")
    return str(value)


def load_run(run_dir: Path, cfg: DictConfig) -> Run | None:
    """The run in ``run_dir`` (its config already read); None if its eval.csv has no rows yet."""
    config = run_dir / "config.yaml"
    missing = [k for k in ("task", "agent", "obs") if k not in cfg]
    if missing:
        raise UserError(f"{config} lacks the key(s) {', '.join(missing)}")
    task, agent, obs = (_name_of(cfg[k], k, config) for k in ("task", "agent", "obs"))
    if cfg.get("label") is not None:
        agent = _name_of(cfg.label, "label", config)
    eval_csv = run_dir / "eval.csv"
    df = read_csv(eval_csv)
    if df.empty:
        return None
    lacking = [c for c in EVAL_COLUMNS if c not in df.columns]
    if lacking:
        raise UserError(
            f"{eval_csv} lacks the column(s) {', '.join(lacking)} (has {', '.join(map(str, df.columns))})"
        )
    df = numeric(df, EVAL_COLUMNS, eval_csv)
    # several eval episodes at one step: mean return, time when the last one finished
    per_step = df.groupby("env_step", sort=True).agg(
        wall_time=("wall_time", "max"), reward=("episode_reward", "mean")
    )
    return Run(
        path=run_dir,
        task=task_key(task),
        agent=agent,
        obs=obs,
        seed=cfg.get("seed"),
        step=per_step.index.to_numpy(float),
        hours=per_step["wall_time"].to_numpy(float) / 3600.0,
        reward=per_step["reward"].to_numpy(float),
    )


def _task_order(tasks: Iterable[str]) -> list[str]:
    return sorted(set(tasks))


def draw(
    groups: dict[tuple[str, str, str], dict[str, Curve]],
    references: dict[str, dict[str, Curve]],
    modes: Sequence[str],
    out: Path,
    dpi: int,
    clip_references: bool,
) -> None:
    """One panel per task and x mode (env-steps panels first, then wall-clock panels)."""
    plt = pyplot()
    tasks = _task_order(k[0] for k in groups)
    agents = sorted({k[1] for k in groups})
    obs_kinds = sorted({k[2] for k in groups})
    # The same agent keeps its colour in every figure: the known agents have fixed ones.
    fixed = {"difftop": 0, "difftop_noback": 1, "tdmpc": 2}
    others = [a for a in agents if a not in fixed]
    index = {a: fixed[a] if a in fixed else (3 + others.index(a)) % 10 for a in agents}
    colours = {a: plt.get_cmap("tab10")(i) for a, i in index.items()}
    styles = {o: s for o, s in zip(obs_kinds, ["-", ":", "-.", (0, (5, 1))] * 8)}
    greys = {r: str(0.15 + 0.5 * i / max(1, len(references) - 1)) for i, r in enumerate(references)}
    ncols = min(len(tasks), 4)
    block = math.ceil(len(tasks) / ncols)
    fig, axes = plt.subplots(
        block * len(modes), ncols, figsize=(4.2 * ncols, 3.2 * block * len(modes)), squeeze=False
    )
    handles: dict[str, Any] = {}
    for m, mode in enumerate(modes):
        for i in range(block * ncols):
            ax = axes[m * block + i // ncols, i % ncols]
            if i >= len(tasks):
                ax.axis("off")
                continue
            task = tasks[i]
            xmax = 0.0
            for (t, agent, obs), curves in sorted(groups.items()):
                c = curves[mode]
                if t != task or not len(c.x):
                    continue
                label = agent if len(obs_kinds) == 1 else f"{agent} ({obs})"
                line = draw_band(ax, c, colours[agent], linestyle=styles[obs], lw=1.6,
                                 marker="." if len(c.x) == 1 else None)
                handles.setdefault(label, line)
                xmax = max(xmax, float(c.x[-1]))
            if mode == "steps":
                for ref, per_task in references.items():
                    c = per_task.get(task)
                    if c is None or not len(c.x):
                        continue
                    keep = c.x <= xmax * 1.02 if clip_references and xmax > 0 else np.ones(len(c.x), bool)
                    if clip_references and xmax > 0:  # keep the first point past the end: no gap
                        keep |= np.arange(len(c.x)) == np.searchsorted(c.x, xmax)
                    shown = Curve(c.x[keep], c.mean[keep], c.std[keep], c.n)
                    line = draw_band(ax, shown, greys[ref], alpha=0.12, linestyle="--", lw=1.2)
                    handles.setdefault(ref, line)
                if clip_references and xmax > 0:
                    ax.set_xlim(0, xmax)
            ax.set_title(task, fontsize=10)
            ax.set_xlabel("environment steps" if mode == "steps" else "wall-clock hours", fontsize=9)
            if i % ncols == 0:
                ax.set_ylabel("episode return", fontsize=9)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=8)
            if mode == "steps":
                ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
    # As many legend entries per row as fit the figure's width (~2 per panel column, labels such as
    # difftop_batched_c0.1 included), and room below the panels for every row of them.
    legend_cols = max(1, min(len(handles), 6, 2 * ncols))
    legend_rows = math.ceil(len(handles) / legend_cols)
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="lower center",
        ncol=legend_cols,
        fontsize=9,
        frameon=False,
    )
    fig_height = fig.get_size_inches()[1]
    fig.tight_layout(rect=(0, min(0.4, (0.1 + 0.25 * legend_rows) / fig_height), 1, 1))
    save_figure(fig, out, dpi)


def summarise(
    runs: dict[tuple[str, str, str], list[Run]],
    groups: dict[tuple[str, str, str], dict[str, Curve]],
    references: dict[str, dict[str, Curve]],
) -> pd.DataFrame:
    """Per group: final mean/std at the last step all its seeds reached; per reference: its value there."""
    rows = []
    last_step: dict[str, float] = {}  # task -> the furthest last common step of its groups
    order = {t: i for i, t in enumerate(_task_order(k[0] for k in groups))}
    for key in sorted(groups, key=lambda k: (order[k[0]], k[1], k[2])):
        task, agent, obs = key
        c = groups[key]["steps"]
        members = runs[key]
        step = float(c.x[-1]) if len(c.x) else math.nan
        if len(c.x):
            last_step[task] = max(last_step.get(task, step), step)
        rows.append({
            "source": "run", "task": task, "agent": agent, "obs": obs, "n_seeds": len(members),
            "seeds": " ".join(str(r.seed) for r in members), "last_step": step,
            "final_mean": float(c.mean[-1]) if len(c.x) else math.nan,
            "final_std": float(c.std[-1]) if len(c.x) else math.nan,
            "hours_mean": float(np.mean([r.hours[-1] for r in members])),
        })  # fmt: skip
    for ref, per_task in references.items():
        for task, step in last_step.items():
            c = per_task.get(task)
            if c is None:
                continue
            mean, std = c.at(step)
            rows.append({
                "source": "reference", "task": task, "agent": ref, "obs": "", "n_seeds": c.n, "seeds": "",
                "last_step": step, "final_mean": mean, "final_std": std, "hours_mean": math.nan,
            })  # fmt: skip
    return pd.DataFrame(rows)


def plot_runs(cfg: DictConfig, dirs: Sequence[Path], configs: dict[Path, DictConfig],
              out: Path) -> tuple[pd.DataFrame, int, int] | None:
    """Draw the RL runs in ``dirs`` to ``out``: (summary, runs, groups), None if no eval.csv has rows."""
    if cfg.get("metric") not in (None, "episode_reward"):
        raise UserError(f"metric={cfg.metric!r}: RL runs are drawn by their one metric, episode_reward")
    runs = [r for r in (load_run(d, configs[d]) for d in dirs) if r is not None]
    if not runs:
        return None
    by_key = group_by(runs, lambda r: r.key)
    groups = {
        key: {
            "steps": aggregate([(r.step, r.reward) for r in members]),
            "time": aggregate([(r.hours, r.reward) for r in members]),
        }
        for key, members in by_key.items()
    }
    ref_dir = resolve_reference_dir(str(cfg.reference_dir))
    references = load_references(as_list(cfg.reference), ref_dir, {k[0] for k in groups},
                                 x_columns=STEP_COLUMNS, y_columns=RETURN_COLUMNS, task_key=task_key)
    draw(groups, references, X_MODES[str(cfg.x)], out, int(cfg.dpi), bool(cfg.clip_references))
    return summarise(by_key, groups, references), len(runs), len(groups)
