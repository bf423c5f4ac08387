"""Curve utilities shared by every kind of run that ``difftop plot`` draws (RL returns, IL metrics).

Why one module: RL and IL plots read run folders, group seeds, draw mean +- std bands and save
figures the same way; keeping that here lets :mod:`difftop.rl.plot` and :mod:`difftop.il.plot`
depend on it instead of on each other.

- Run folders: :func:`find_run_dirs` (every ``eval.csv`` at or below the paths given),
  :func:`load_config` (the run's ``config.yaml``), :func:`read_csv` / :func:`numeric`.
- Seeds: :func:`group_by` and :func:`aggregate`, the mean +- std (numpy's ``std``, ddof 0) on the
  union of the seeds' x values within the range every seed reached, each seed linearly interpolated
  onto it (exact where seeds share their eval steps).
- Reference curves: :func:`load_references` reads published curves (one CSV per task in a folder,
  or single CSV files) with the column names given by the caller.
- Figures: :func:`draw_band` and :func:`save_figure`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from omegaconf import DictConfig, ListConfig, OmegaConf

from difftop.errors import UserError

__all__ = ["REPO_ROOT", "FIGURE_SUFFIXES", "Curve", "aggregate", "mean_per_x", "group_by", "read_csv",
           "numeric", "load_config", "find_run_dirs", "as_list", "resolve_reference_dir", "load_references",
           "pyplot", "draw_band", "save_figure", "print_summary"]

#: The repository root: ``reference_dir`` falls back to a path relative to it.
REPO_ROOT = Path(__file__).resolve().parents[2]
#: Figure formats ``out=`` may name.
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")

T = TypeVar("T")


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

    @property
    def last(self) -> tuple[float, float, float]:
        """(x, mean, std) at the last common x; NaNs for an empty curve (summaries keep a row)."""
        if not len(self.x):
            return math.nan, math.nan, math.nan
        return float(self.x[-1]), float(self.mean[-1]), float(self.std[-1])


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


def mean_per_x(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique x and the mean y at each (several eval episodes logged at one step)."""
    xs, inverse = np.unique(x, return_inverse=True)
    return xs, np.bincount(inverse, weights=y) / np.bincount(inverse)


def group_by(items: Iterable[T], key: Callable[[T], Hashable]) -> dict[Any, list[T]]:
    """``key(item) -> [items]`` in first-seen order: the seeds of one configuration."""
    out: dict[Any, list[T]] = {}
    for item in items:
        out.setdefault(key(item), []).append(item)
    return out


# -- run folders -------------------------------------------------------------------------------
def read_csv(path: Path) -> pd.DataFrame:
    """A CSV as a frame (empty when the file is); an unreadable one is a one-line error."""
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise UserError(f"cannot read {path}: {str(e).strip().splitlines()[0]}") from None


def numeric(df: pd.DataFrame, columns: Iterable[str], path: Path) -> pd.DataFrame:
    """``columns`` of ``df`` as floats; a blank or text cell is an error naming the column."""
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


def as_list(value: Any) -> list[str]:
    """A config value that may be null, one word or a list, as a list of strings."""
    if value is None or value == "":
        return []
    if isinstance(value, (ListConfig, list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


# -- reference curves --------------------------------------------------------------------------
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


def _reference_curves(path: Path, task: str | None, x_columns: Sequence[str], y_columns: Sequence[str],
                      task_key: Callable[[str], str]) -> dict[str, Curve]:
    """task -> Curve from one reference CSV (``task`` None: from its task column or file name)."""
    df = read_csv(path)
    if df.empty:
        return {}
    cols = [str(c) for c in df.columns]
    x, y = _first(cols, x_columns, path, "step"), _first(cols, y_columns, path, "value")
    data = numeric(df, [x, y], path)
    data["seed"] = df["seed"].astype(str) if "seed" in cols else "0"
    if task is not None:
        data["task"] = task
    elif "task" in cols:
        data["task"] = df["task"].astype(str).map(task_key)
    else:
        data["task"] = task_key(path.stem.removeprefix("dmc_"))
    out = {}
    for t, rows in data.groupby("task"):
        seeds = [mean_per_x(g[x].to_numpy(), g[y].to_numpy()) for _, g in rows.groupby("seed")]
        out[str(t)] = aggregate(seeds)
    return out


def load_references(specs: Sequence[str], reference_dir: Path, tasks: Iterable[str], *,
                    x_columns: Sequence[str], y_columns: Sequence[str],
                    task_key: Callable[[str], str] = str) -> dict[str, dict[str, Curve]]:
    """label -> task -> Curve for each reference spec (a folder name in ``reference_dir``, a folder, or a
    CSV). Columns are recognised by name: x from the first of ``x_columns`` present, y likewise, and
    ``seed``; a folder holds one ``<task>.csv`` per task, a single file's task comes from its ``task``
    column or else from its file name (both through ``task_key``). Tasks not in ``tasks`` are dropped."""
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
                    curves.update(_reference_curves(csv, t, x_columns, y_columns, task_key))
            out[path.name] = curves
        elif path.is_file():
            curves = _reference_curves(path, None, x_columns, y_columns, task_key)
            out[path.parent.name or path.stem] = {t: c for t, c in curves.items() if t in tasks}
        else:
            avail = (sorted(p.name for p in reference_dir.iterdir() if p.is_dir())
                     if reference_dir.is_dir() else [])
            where = (f"available in {reference_dir}: {', '.join(avail)}" if avail
                     else f"{reference_dir} has none")
            raise UserError(f"unknown reference {spec!r}; give a folder name or a CSV path ({where})")
    return out


# -- figures -----------------------------------------------------------------------------------
def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend: plots are written to files, often with no display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_band(ax: Any, curve: Curve, color: Any, *, alpha: float = 0.2, **line: Any) -> Any:
    """The mean line and a mean +- std band of ``curve`` on ``ax``; returns the line (for the legend)."""
    (handle,) = ax.plot(curve.x, curve.mean, color=color, **line)
    ax.fill_between(curve.x, curve.mean - curve.std, curve.mean + curve.std, color=color, alpha=alpha, lw=0)
    return handle


def save_figure(fig: Any, out: Path, dpi: int) -> None:
    """Write ``fig`` to ``out`` (its folder created) and free it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    pyplot().close(fig)


def print_summary(summary: pd.DataFrame) -> None:
    """The summary table on stdout, wide enough for one row per group (the seeds column left out)."""
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(summary.drop(columns=["seeds"], errors="ignore").to_string(index=False))
