"""``difftop plot runs/a runs/b ... out=curves.png``: learning curves of any kind of run, mean +- std
over seeds.

Why a registry: RL and IL runs log different curves, and each kind's plotting lives with its kind
(:mod:`difftop.rl.plot`, :mod:`difftop.il.plot`); this module only finds the run folders, reads what
kind each holds and hands them to that kind's plotter, as ``difftop eval`` does through
``difftop.evaluate.EVALUATORS``. Neither kind imports the other; what both use is in
:mod:`difftop.plot.curves`.

A run's kind comes from its ``config.yaml`` (a ``kind`` key; else ``agent`` means RL, ``policy`` IL)
or, failing that, from its ``eval.csv`` columns (``episode_reward``: RL; ``success_rate`` or a
``mean_*`` metric: IL). One figure holds one kind. Each plotter is ``plot(cfg, dirs, configs)`` and
returns ``(summary, runs, groups)`` (``None`` when every eval.csv is still empty); the summary is
written beside the figure as ``<out stem>.csv``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from difftop.errors import UserError
from difftop.plot.curves import FIGURE_SUFFIXES, as_list, find_run_dirs, load_config, print_summary, read_csv
from difftop.utils.checks import require_int, require_writable_file

__all__ = ["PLOTTERS", "run_kind", "main"]

#: run kind -> ``"module:function"`` drawing runs of that kind (imported only when used)
PLOTTERS: dict[str, str] = {
    "rl": "difftop.rl.plot:plot_runs",
    "il": "difftop.il.plot:plot_runs",
}
#: how the kinds are named in messages
KIND_NAMES = {"rl": "RL", "il": "IL"}
#: ``x=``: the x axes of RL panels (IL runs are drawn against gradient steps only)
X_MODES = ("steps", "time", "both")


def run_kind(run_dir: Path, cfg: DictConfig) -> str:
    """``"rl"`` or ``"il"``: what the run in ``run_dir`` (config already read) holds."""
    kind = cfg.get("kind")
    if isinstance(kind, str) and kind in PLOTTERS:
        return kind
    if "agent" in cfg:
        return "rl"
    if "policy" in cfg:
        return "il"
    columns = [str(c) for c in read_csv(run_dir / "eval.csv").columns]
    if "episode_reward" in columns:
        return "rl"
    if "success_rate" in columns or any(c.startswith("mean_") for c in columns):
        return "il"
    raise UserError(f"cannot tell what kind of run {run_dir} is: its config.yaml names no agent (RL) or "
                    f"policy (IL) and its eval.csv has no episode_reward or success_rate column")


def check_out(value: Any) -> Path:
    """``out=`` names a figure file that can be written, and so can its summary CSV beside it; checked
    before any run is read, so a bad ``out`` costs nothing and overwrites nothing."""
    out = require_writable_file("out", value)
    if out.suffix.lower() not in FIGURE_SUFFIXES:
        raise UserError(f"out must end in {', '.join(FIGURE_SUFFIXES[:-1])} or {FIGURE_SUFFIXES[-1]}, "
                        f"got {str(value)!r}")
    summary = out.with_suffix(".csv")
    if summary.is_dir():
        raise UserError(f"out={str(value)!r}: its summary {summary} is a directory")
    return out


def main(cfg: DictConfig) -> int:
    """Plot the runs under ``cfg.runs`` to ``cfg.out`` with their kind's plotter; summary beside it (a
    sweep folder: :mod:`difftop.plot.sweep`)."""
    from difftop.plot.sweep import default_out, given_keys, label_sweeps

    paths = as_list(cfg.runs)
    out = check_out(default_out(cfg.out, paths, given_keys()))
    require_int("dpi", cfg.dpi, 1)
    if cfg.x not in X_MODES:
        raise UserError(f"x must be one of {', '.join(X_MODES)}, got {cfg.x!r}")
    dirs = find_run_dirs(paths)
    configs = {d: load_config(d) for d in dirs}
    kinds = {d: run_kind(d, configs[d]) for d in dirs}
    label_sweeps(dirs, configs, kinds)
    found = [k for k in PLOTTERS if k in kinds.values()]
    if len(found) > 1:
        names = " and ".join(KIND_NAMES.get(k, k) for k in found)
        raise UserError(f"{', '.join(paths)} hold both {names} runs; plot them separately")
    module, _, fn = PLOTTERS[found[0]].partition(":")
    result = getattr(importlib.import_module(module), fn)(cfg, dirs, configs, out)
    if result is None:
        raise UserError(f"every eval.csv under {', '.join(map(str, paths))} is empty")
    summary, n_runs, n_groups = result
    summary_path = out.with_suffix(".csv")
    summary.to_csv(summary_path, index=False, float_format="%.6g")
    print_summary(summary)
    print(f"saved {out} and {summary_path} ({n_runs} runs in {n_groups} groups)")
    return 0
