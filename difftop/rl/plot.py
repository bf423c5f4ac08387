"""``difftop plot``: learning curves of RL runs, mean +- std over seeds, beside published curves.

Imitation runs (a config with ``policy`` and no ``agent``) are drawn by :mod:`difftop.il.plot`
(success rate and coverage against gradient steps); one figure holds one kind.

A run directory holds ``config.yaml`` (keys ``task``, ``agent``, ``obs``, optionally ``seed`` and
``label``, which replaces the agent's name so that variants of one agent, e.g. ``pg_mode=batched``,
are drawn apart; an ``agent``/``task``/``obs`` given as a node is named by its ``name`` key) and
``eval.csv`` with the columns ``env_step, episode, wall_time, episode_reward`` (``wall_time``:
seconds since the run started). Each path given may be a run directory or any directory above run
directories: every ``eval.csv`` below it is used. Runs are grouped by (task, agent or label, obs);
each group is drawn as the mean +- std (numpy's ``std``, ddof 0) across its runs (seeds), against
environment steps and against wall-clock hours (the paper's Figs. 3 and 7), one panel per task, one
colour per agent.

Seeds evaluated at slightly different steps (or times) are put on a common grid: the union of
their x values within the range that every seed reached (from the largest first x to the smallest
last x), each seed linearly interpolated onto it. Where seeds share their eval steps this is
exact. Rows of one run with the same ``env_step`` (several eval episodes) are averaged first.

``reference=`` overlays published curves (grey, dashed, mean +- std over their seeds, on the
env-steps panels only): folder names in ``reference_dir`` (one ``<task>.csv`` per task), other
folders, or single CSV files. Their columns are recognised by name: step from ``env_step``,
``step`` or ``frame`` (DrQ-v2's frames are environment steps), return from ``episode_reward``,
``return`` or ``reward``, and ``seed``; a single file's task comes from its ``task`` column or else
from its file name. A summary CSV beside the figure (``<out stem>.csv``) lists each group's final
mean, std, number of seeds and last common step, and each reference's value at that step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, ListConfig, OmegaConf

from difftop.envs.dmc import task_key
from difftop.errors import UserError

#: The repository root: ``reference_dir`` falls back to a path relative to it.
REPO_ROOT = Path(__file__).resolve().parents[2]
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


@dataclass
class Curve:
    """Mean and std across seeds on a common grid."""

    x: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    n: int

    def at(self, x: float) -> tuple[float, float]:
        """Mean and std at ``x`` (linear interpolation; NaN outside the grid)."""
        if not len(self.x) or x < self.x[0] or x > self.x[-1]:
            return math.nan, math.nan
        return float(np.interp(x, self.x, self.mean)), float(np.interp(x, self.x, self.std))


def aggregate(curves: Sequence[tuple[np.ndarray, np.ndarray]]) -> Curve:
    """Mean +- std of several (x, y) curves on the union of their x within the range all of them reached."""
    curves = [(np.asarray(x, float), np.asarray(y, float)) for x, y in curves if len(x)]
    if not curves:
        return Curve(np.empty(0), np.empty(0), np.empty(0), 0)
    sorted_curves = []
    for x, y in curves:
        order = np.argsort(x, kind="stable")
        sorted_curves.append((x[order], y[order]))
    lo = max(x[0] for x, _ in sorted_curves)
    hi = min(x[-1] for x, _ in sorted_curves)
    if lo > hi:  # no x reached by every curve
        return Curve(np.empty(0), np.empty(0), np.empty(0), len(curves))
    grid = np.unique(np.concatenate([x[(x >= lo) & (x <= hi)] for x, _ in sorted_curves]))
    ys = np.stack([np.interp(grid, x, y) for x, y in sorted_curves])
    return Curve(grid, ys.mean(axis=0), ys.std(axis=0), len(curves))


# -- reading runs ------------------------------------------------------------------------------
def _name_of(value: Any, what: str, config: Path) -> str:
    if isinstance(value, DictConfig):
        if "name" not in value:
            raise UserError(f"{config}: `{what}` is a node without a `name` key")
        value = value.name
    if value is None or isinstance(value, ListConfig):
        raise UserError(f"{config}: `{what}` must be a name, got {value!r}")
    return str(value)


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise UserError(f"cannot read {path}: {str(e).strip().splitlines()[0]}") from None


def _numeric(df: pd.DataFrame, columns: Iterable[str], path: Path) -> pd.DataFrame:
    out = pd.DataFrame()
    for c in columns:
        values = pd.to_numeric(df[c], errors="coerce")
        if values.isna().any():
            raise UserError(f"{path}: column {c!r} has non-numeric or empty values")
        out[c] = values.astype(float)
    return out


def load_config(run_dir: Path) -> DictConfig:
    """A run directory's config.yaml (a clear error when it is missing or unreadable)."""
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise UserError(f"{run_dir} has an eval.csv but no config.yaml")
    try:
        cfg = OmegaConf.load(config)
    except Exception as e:  # yaml errors come in several types
        raise UserError(f"cannot read {config}: {str(e).strip().splitlines()[0]}") from None
    if not isinstance(cfg, DictConfig):
        raise UserError(f"{config} is not a mapping")
    return cfg


def load_run(run_dir: Path, cfg: DictConfig | None = None) -> Run | None:
    """The run in ``run_dir``; None if its eval.csv has no rows yet (a run that just started)."""
    config = run_dir / "config.yaml"
    cfg = load_config(run_dir) if cfg is None else cfg
    missing = [k for k in ("task", "agent", "obs") if k not in cfg]
    if missing:
        raise UserError(f"{config} lacks the key(s) {', '.join(missing)}")
    task, agent, obs = (_name_of(cfg[k], k, config) for k in ("task", "agent", "obs"))
    if cfg.get("label") is not None:
        agent = _name_of(cfg.label, "label", config)
    eval_csv = run_dir / "eval.csv"
    df = _read_csv(eval_csv)
    if df.empty:
        return None
    lacking = [c for c in EVAL_COLUMNS if c not in df.columns]
    if lacking:
        raise UserError(
            f"{eval_csv} lacks the column(s) {', '.join(lacking)} (has {', '.join(map(str, df.columns))})"
        )
    df = _numeric(df, EVAL_COLUMNS, eval_csv)
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


def find_run_dirs(paths: Sequence[str]) -> list[Path]:
    """Every directory with an eval.csv at or below ``paths`` (duplicates removed), in path order."""
    if not paths:
        raise UserError("no run directories given; usage: difftop plot runs/a runs/b ... out=curves.png")
    dirs: dict[Path, None] = {}
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise UserError(f"no such file or directory: {p}")
        if path.is_file():
            if path.name != "eval.csv":
                raise UserError(f"{p} is neither a run directory nor an eval.csv")
            found = [path]
        else:
            found = sorted(path.rglob("eval.csv"))
        if not found:
            raise UserError(f"no eval.csv found under {p}")
        for f in found:
            dirs.setdefault(f.parent.resolve(), None)
    return list(dirs)


# -- reading reference curves ------------------------------------------------------------------
def resolve_reference_dir(reference_dir: str) -> Path:
    """``reference_dir`` as given (relative to the cwd) if it exists, else relative to the repository."""
    path = Path(reference_dir).expanduser()
    if path.is_dir() or path.is_absolute():
        return path
    return (REPO_ROOT / path).resolve()


def _first(columns: Sequence[str], names: Sequence[str], path: Path, what: str) -> str:
    for n in names:
        if n in columns:
            return n
    raise UserError(f"reference {path}: no {what} column (expected one of {', '.join(names)})")


def _reference_curves(path: Path, task: str | None) -> dict[str, Curve]:
    """task -> Curve from one reference CSV (``task`` None: from its task column or file name)."""
    df = _read_csv(path)
    if df.empty:
        return {}
    cols = [str(c) for c in df.columns]
    step, ret = _first(cols, STEP_COLUMNS, path, "step"), _first(cols, RETURN_COLUMNS, path, "return")
    seed = "seed" if "seed" in cols else None
    data = _numeric(df, [step, ret], path)
    data["seed"] = df[seed].astype(str) if seed else "0"
    if task is not None:
        data["task"] = task
    elif "task" in cols:
        data["task"] = df["task"].astype(str).map(task_key)
    else:
        data["task"] = task_key(path.stem.removeprefix("dmc_"))
    out = {}
    for t, rows in data.groupby("task"):
        seeds = [(g[step].to_numpy(), g[ret].to_numpy()) for _, g in rows.groupby("seed")]
        seeds = [_mean_per_x(x, y) for x, y in seeds]
        out[str(t)] = aggregate(seeds)
    return out


def _mean_per_x(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xs, inverse = np.unique(x, return_inverse=True)
    return xs, np.bincount(inverse, weights=y) / np.bincount(inverse)


def load_references(
    specs: Sequence[str], reference_dir: Path, tasks: Iterable[str]
) -> dict[str, dict[str, Curve]]:
    """label -> task -> Curve for each reference spec (a name in reference_dir, a folder or a CSV)."""
    tasks = set(tasks)
    out: dict[str, dict[str, Curve]] = {}
    for spec in specs:
        named = reference_dir / spec
        path = named if named.is_dir() else Path(spec)
        if path.is_dir():
            curves = {}
            for csv in sorted(path.glob("*.csv")):
                t = task_key(csv.stem.removeprefix("dmc_"))
                if t in tasks:
                    curves.update(_reference_curves(csv, t))
            out[path.name] = curves
        elif path.is_file():
            curves = _reference_curves(path, None)
            out[path.parent.name or path.stem] = {t: c for t, c in curves.items() if t in tasks}
        else:
            avail = (
                sorted(p.name for p in reference_dir.iterdir() if p.is_dir())
                if reference_dir.is_dir()
                else []
            )
            where = (
                f"available in {reference_dir}: {', '.join(avail)}" if avail else f"{reference_dir} has none"
            )
            raise UserError(f"unknown reference {spec!r}; give a folder name or a CSV path ({where})")
    return out


# -- figure and summary ------------------------------------------------------------------------
def _task_order(tasks: Iterable[str]) -> list[str]:
    return sorted(set(tasks))


def _as_list(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, (ListConfig, list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def draw(
    groups: dict[tuple[str, str, str], dict[str, Curve]],
    references: dict[str, dict[str, Curve]],
    modes: Sequence[str],
    out: Path,
    dpi: int,
    clip_references: bool,
) -> None:
    """One panel per task and x mode (env-steps panels first, then wall-clock panels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
                (line,) = ax.plot(
                    c.x,
                    c.mean,
                    color=colours[agent],
                    linestyle=styles[obs],
                    lw=1.6,
                    marker="." if len(c.x) == 1 else None,
                )
                ax.fill_between(c.x, c.mean - c.std, c.mean + c.std, color=colours[agent], alpha=0.2, lw=0)
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
                    x, mu, sd = c.x[keep], c.mean[keep], c.std[keep]
                    (line,) = ax.plot(x, mu, color=greys[ref], linestyle="--", lw=1.2)
                    ax.fill_between(x, mu - sd, mu + sd, color=greys[ref], alpha=0.12, lw=0)
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
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)


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


def main(cfg: DictConfig) -> int:
    """Plot the runs under ``cfg.runs`` to ``cfg.out`` and write the summary beside it."""
    if cfg.x not in X_MODES:
        raise UserError(f"x must be one of {', '.join(X_MODES)}, got {cfg.x!r}")
    modes = X_MODES[cfg.x]
    out = Path(str(cfg.out))
    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise UserError(f"out must end in .png, .pdf or .svg, got {cfg.out!r}")
    paths = _as_list(cfg.runs)
    dirs = find_run_dirs(paths)
    configs = {d: load_config(d) for d in dirs}
    from difftop.il.plot import is_il_config

    il_dirs = [d for d in dirs if is_il_config(configs[d])]
    if il_dirs:
        if len(il_dirs) != len(dirs):
            raise UserError(f"{', '.join(paths)} hold both RL and IL runs; plot them separately")
        return _plot_il(dirs, configs, out, int(cfg.dpi), paths)
    runs = [r for r in (load_run(d, configs[d]) for d in dirs) if r is not None]
    if not runs:
        raise UserError(f"every eval.csv under {', '.join(map(str, paths))} is empty")
    by_key: dict[tuple[str, str, str], list[Run]] = {}
    for r in runs:
        by_key.setdefault(r.key, []).append(r)
    groups = {
        key: {
            "steps": aggregate([(r.step, r.reward) for r in members]),
            "time": aggregate([(r.hours, r.reward) for r in members]),
        }
        for key, members in by_key.items()
    }
    ref_dir = resolve_reference_dir(str(cfg.reference_dir))
    references = load_references(_as_list(cfg.reference), ref_dir, {k[0] for k in groups})
    draw(groups, references, modes, out, int(cfg.dpi), bool(cfg.clip_references))
    summary = summarise(by_key, groups, references)
    summary_path = out.with_suffix(".csv")
    summary.to_csv(summary_path, index=False, float_format="%.6g")
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(summary.drop(columns=["seeds"]).to_string(index=False))
    print(f"saved {out} and {summary_path} ({len(runs)} runs in {len(groups)} groups)")
    return 0


def _plot_il(dirs: Sequence[Path], configs: dict, out: Path, dpi: int, paths: Sequence[str]) -> int:
    """IL runs (``difftop il``): success / coverage along training, see :mod:`difftop.il.plot`."""
    from difftop.il.plot import load_il_run, plot_il

    runs = [r for r in (load_il_run(d, configs[d]) for d in dirs) if r is not None]
    if not runs:
        raise UserError(f"every eval.csv under {', '.join(map(str, paths))} is empty")
    summary = plot_il(runs, out, dpi)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(summary.drop(columns=["seeds"]).to_string(index=False))
    print(f"saved {out} and {out.with_suffix('.csv')} ({len(runs)} runs in {len(summary)} groups)")
    return 0
