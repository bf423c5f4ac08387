"""``difftop plot`` for imitation runs: evaluation metrics along training, mean +- std over seeds.

:mod:`difftop.plot` finds the run folders and sends IL runs here (``plot_runs``); the seed
aggregation and figure saving are :mod:`difftop.plot.curves`'.

An IL run directory (written by ``difftop il``) holds ``config.yaml`` with ``task``, ``obs``,
``policy`` and, for policies built on another, ``init`` and ``base`` (a run directory), and
``eval.csv`` with ``step`` and the rollout metrics. The metrics drawn are the columns the eval.csv
has, not a fixed list, since each task logs its own: ``success_rate`` and every ``mean_*`` column
(Push-T logs ``mean_max_coverage`` and ``mean_length``); ``metric=`` draws one of them only. Runs
are grouped by (task, obs, label); the label names the policy and what it starts from, e.g.
``difftop + bc``, ``residual + diffusion``, ``difftop (zero init)``, so the seeds of one
configuration (whose bases are that seed's base run) fall in one group. Each group is drawn as the
mean +- std (ddof 0) across seeds on the steps every seed reached, one column per (task, obs), one
row per metric; the summary lists each group's last common step and final mean / std of every
metric drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from difftop.errors import UserError
from difftop.plot.curves import aggregate, draw_band, group_by, numeric, pyplot, read_csv, save_figure

__all__ = ["ILRun", "is_metric", "run_label", "load_il_run", "plot_il", "plot_runs"]


@dataclass
class ILRun:
    path: Path
    task: str
    obs: str
    label: str
    seed: Any
    step: np.ndarray
    metrics: dict[str, np.ndarray]

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.task, self.obs, self.label)


def is_metric(column: str) -> bool:
    """An eval.csv column drawn as a curve: ``success_rate`` or a ``mean_*`` figure of the rollouts."""
    return column == "success_rate" or column.startswith("mean_")


def metric_name(column: str) -> str:
    """The axis label of a metric column: ``mean_max_coverage`` -> ``mean max coverage``."""
    return column.replace("_", " ")


def _base_name(base: str) -> str:
    """The base run's policy (from its config.yaml), else its directory name above ``seed<k>``."""
    path = Path(base)
    config = path / "config.yaml"
    if config.is_file():
        try:
            policy = OmegaConf.load(config).get("policy")
            if isinstance(policy, str):
                return policy
        except Exception:  # an unreadable base config only costs the nicer name
            pass
    return path.parent.name if path.name.startswith("seed") else path.name


def run_label(cfg: DictConfig) -> str:
    """``policy``, ``policy + base`` or ``policy (zero init)``: what distinguishes the runs."""
    policy = str(cfg.policy)
    if policy == "difftop" and cfg.get("policies", {}).get("difftop", {}).get("posterior_dim") == 0:
        policy = "difftop (no CVAE)"
    base = cfg.get("base")
    init = cfg.get("init")
    if base and (init in (None, "base") or not policy.startswith("difftop")):
        return f"{policy} + {_base_name(str(base))}"
    if policy.startswith("difftop") and init in ("zero", "random"):
        return f"{policy} ({init} init)"
    return policy


def load_il_run(run_dir: Path, cfg: DictConfig) -> ILRun | None:
    """The run in ``run_dir`` (its config already read); None while its eval.csv has no rows."""
    missing = [k for k in ("task", "obs", "policy") if k not in cfg]
    if missing:
        raise UserError(f"{run_dir / 'config.yaml'} lacks the key(s) {', '.join(missing)}")
    eval_csv = run_dir / "eval.csv"
    df = read_csv(eval_csv)
    if df.empty:
        return None
    metrics = [str(c) for c in df.columns if is_metric(str(c))]
    if "step" not in df.columns or not metrics:
        has = ", ".join(map(str, df.columns))
        raise UserError(f"{eval_csv} lacks the columns step and success_rate (or a mean_* metric; has {has})")
    df = numeric(df, ["step", *metrics], eval_csv).groupby("step", sort=True).mean()
    return ILRun(path=run_dir, task=str(cfg.task), obs=str(cfg.obs), label=run_label(cfg),
                 seed=cfg.get("seed"), step=df.index.to_numpy(float),
                 metrics={c: df[c].to_numpy(float) for c in metrics})


def _metrics(runs: Sequence[ILRun], metric: str | None) -> list[str]:
    """The metric columns to draw, in the runs' column order (``metric``: that one only)."""
    found = list(dict.fromkeys(m for r in runs for m in r.metrics))
    if metric is None:
        return found
    if metric not in found:
        raise UserError(f"metric={metric!r} is not a metric column of these runs' eval.csv "
                        f"(they have: {', '.join(found)})")
    return [metric]


def plot_il(runs: Sequence[ILRun], out: Path, dpi: int = 120, metric: str | None = None) -> pd.DataFrame:
    """Draw the groups of ``runs`` to ``out`` (one row per metric, or ``metric`` alone); returns the
    summary table."""
    metrics = _metrics(runs, metric)
    plt = pyplot()
    by_key = group_by(runs, lambda r: r.key)
    panels = sorted({k[:2] for k in by_key})
    labels = sorted({k[2] for k in by_key})
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    colours = {lab: cmap(i % cmap.N) for i, lab in enumerate(labels)}
    fig, axes = plt.subplots(len(metrics), len(panels), figsize=(5.2 * len(panels) + 2.4, 3.4 * len(metrics)),
                             squeeze=False)
    handles: dict[str, Any] = {}
    rows = []
    for key in sorted(by_key):
        members = by_key[key]
        j = panels.index(key[:2])
        row = {"task": key[0], "obs": key[1], "policy": key[2], "n_seeds": len(members),
               "seeds": " ".join(str(r.seed) for r in members)}
        for i, m in enumerate(metrics):
            c = aggregate([(r.step, r.metrics[m]) for r in members if m in r.metrics])
            if len(c.x):
                line = draw_band(axes[i, j], c, colours[key[2]], marker="o", ms=3, lw=1.5)
                handles.setdefault(key[2], line)
            row["last_step"], row[f"{m}_mean"], row[f"{m}_std"] = c.last
        rows.append(row)
    for j, (task, obs) in enumerate(panels):
        for i, m in enumerate(metrics):
            ax = axes[i, j]
            ax.set_title(f"{task} ({obs})" if i == 0 else "", fontsize=10)
            ax.set_xlabel("gradient steps", fontsize=9)
            ax.set_ylabel(metric_name(m) if j == 0 else "", fontsize=9)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=8)
    seeds = {lab: max(len(v) for k, v in by_key.items() if k[2] == lab) for lab in handles}
    fig.legend(list(handles.values()), [f"{lab} ({seeds[lab]})" for lab in handles], loc="center right",
               fontsize=8, title="policy (seeds)", title_fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 2.4 / (5.2 * len(panels) + 2.4), 1))
    save_figure(fig, out, dpi)
    return pd.DataFrame(rows)


def plot_runs(cfg: DictConfig, dirs: Sequence[Path], configs: dict[Path, DictConfig],
              out: Path) -> tuple[pd.DataFrame, int, int] | None:
    """Draw the IL runs in ``dirs`` to ``out``: (summary, runs, groups), None if no eval.csv has rows."""
    metric = cfg.get("metric")
    if metric is not None and (not isinstance(metric, str) or not metric):
        raise UserError(f"metric must be the name of an eval.csv column or null, got {metric!r}")
    runs = [r for r in (load_il_run(d, configs[d]) for d in dirs) if r is not None]
    if not runs:
        return None
    summary = plot_il(runs, out, int(cfg.dpi), metric)
    return summary, len(runs), len(summary)
