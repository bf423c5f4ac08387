"""``difftop plot`` for imitation runs: evaluation curves along training, mean +- std over seeds.

An IL run directory (written by ``difftop il``) holds ``config.yaml`` with ``task``, ``obs``,
``policy`` and, for policies built on another, ``init`` and ``base`` (a run directory), and
``eval.csv`` with ``step`` and the rollout metrics (``success_rate``; Push-T adds
``mean_max_coverage``). Runs are grouped by (task, obs, label); the label names the policy and what
it starts from, e.g. ``difftop + bc``, ``residual + diffusion``, ``difftop (zero init)``, so the
seeds of one configuration (whose bases are that seed's base run) fall in one group. Each group is
drawn as the mean +- std (ddof 0) across seeds on the steps every seed reached (:func:`aggregate`),
one column per (task, obs), one row per metric; a summary CSV beside the figure lists each group's
last common step and final mean / std of every metric.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from difftop.errors import UserError

#: Metrics drawn, in row order, when an eval.csv has them.
METRICS = (("mean_max_coverage", "mean max coverage"), ("success_rate", "success rate"))


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


def is_il_config(cfg: Any) -> bool:
    """An IL run's config names a ``policy`` and no RL ``agent``."""
    return isinstance(cfg, DictConfig) and "policy" in cfg and "agent" not in cfg


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
    from difftop.rl.plot import _numeric, _read_csv

    missing = [k for k in ("task", "obs") if k not in cfg]
    if missing:
        raise UserError(f"{run_dir / 'config.yaml'} lacks the key(s) {', '.join(missing)}")
    eval_csv = run_dir / "eval.csv"
    df = _read_csv(eval_csv)
    if df.empty:
        return None
    cols = ["step", *(m for m, _ in METRICS if m in df.columns)]
    if "step" not in df.columns or len(cols) == 1:
        has = ", ".join(map(str, df.columns))
        raise UserError(f"{eval_csv} lacks the columns step and success_rate (has {has})")
    df = _numeric(df, cols, eval_csv).groupby("step", sort=True).mean()
    return ILRun(path=run_dir, task=str(cfg.task), obs=str(cfg.obs), label=run_label(cfg),
                 seed=cfg.get("seed"), step=df.index.to_numpy(float),
                 metrics={c: df[c].to_numpy(float) for c in cols[1:]})


def plot_il(runs: Sequence[ILRun], out: Path, dpi: int = 120) -> pd.DataFrame:
    """Draw the groups of ``runs`` to ``out``; returns the summary table (also written beside it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from difftop.rl.plot import aggregate

    by_key: dict[tuple[str, str, str], list[ILRun]] = {}
    for r in runs:
        by_key.setdefault(r.key, []).append(r)
    panels = sorted({k[:2] for k in by_key})
    metrics = [(m, name) for m, name in METRICS if any(m in r.metrics for r in runs)]
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
        for i, (m, _) in enumerate(metrics):
            have = [r for r in members if m in r.metrics]
            c = aggregate([(r.step, r.metrics[m]) for r in have])
            if len(c.x):
                ax = axes[i, j]
                (line,) = ax.plot(c.x, c.mean, color=colours[key[2]], marker="o", ms=3, lw=1.5)
                handles.setdefault(key[2], line)
                ax.fill_between(c.x, c.mean - c.std, c.mean + c.std, color=colours[key[2]], alpha=0.2, lw=0)
            row["last_step"] = float(c.x[-1]) if len(c.x) else math.nan
            row[f"{m}_mean"] = float(c.mean[-1]) if len(c.x) else math.nan
            row[f"{m}_std"] = float(c.std[-1]) if len(c.x) else math.nan
        rows.append(row)
    for j, (task, obs) in enumerate(panels):
        for i, (_, name) in enumerate(metrics):
            ax = axes[i, j]
            ax.set_title(f"{task} ({obs})" if i == 0 else "", fontsize=10)
            ax.set_xlabel("gradient steps", fontsize=9)
            ax.set_ylabel(name if j == 0 else "", fontsize=9)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=8)
    seeds = {lab: max(len(v) for k, v in by_key.items() if k[2] == lab) for lab in handles}
    fig.legend(list(handles.values()), [f"{lab} ({seeds[lab]})" for lab in handles], loc="center right",
               fontsize=8, title="policy (seeds)", title_fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 2.4 / (5.2 * len(panels) + 2.4), 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    summary = pd.DataFrame(rows)
    summary.to_csv(out.with_suffix(".csv"), index=False, float_format="%.6g")
    return summary
