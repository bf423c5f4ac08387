"""Sweep folders in ``difftop plot``: ``difftop plot <sweep folder>`` draws a whole sweep.

A sweep folder is what a multirun leaves (:mod:`difftop.launch`): ``multirun.yaml`` and one run folder
per job below it. The runs are found and grouped like any others (by task and method, mean +- std
over seeds: :mod:`difftop.plot`); what a sweep adds:

- the figure goes into the sweep folder (``<sweep>/curves.png``) unless ``out=`` is given;
- keys the sweep varied besides the seed, the task and the kind's own grouping keys (``lr=1e-3,3e-4``,
  ``pg_mode=online,batched``) name different methods, so an RL run's label gets them
  (``difftop lr=0.001``) instead of its seeds and those settings being averaged into one curve. IL runs
  are named by their policy alone (:func:`difftop.il.plot.run_label`); a note says which keys were
  averaged over.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = ["SWEEP_FILE", "is_sweep", "given_keys", "default_out", "swept_method_keys", "label_sweeps"]

SWEEP_FILE = "multirun.yaml"
#: swept keys that never tell methods apart: the seeds of one curve, the panels, how a run reports
NOT_METHOD = frozenset({"seed", "task", "label", "out_dir", "resume", "allow_change", "progress", "threads",
                        "device", "tensorboard", "video", "checkpoint_minutes"})
#: per kind, the keys its plotter already groups by
GROUPED = {"rl": frozenset({"agent", "obs"}), "il": frozenset({"policy", "obs", "base", "init"})}


def is_sweep(path: Path) -> bool:
    return path.is_dir() and (path / SWEEP_FILE).is_file()


def given_keys() -> list[str] | None:
    """The keys set on the command line, or None outside a Hydra app (as
    :func:`difftop.engine.rundir.explicit_keys`, without importing the engine and torch)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return [o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task]
    except Exception:  # not inside a Hydra app (a direct call from Python)
        return None


def default_out(out: str, paths: Sequence[str], given: Sequence[str] | None) -> str:
    """``out`` as given, or inside the sweep folder when the one path is a sweep and the command line
    (``given``: its keys; None outside one) did not set ``out``."""
    if given is None or "out" in given or len(paths) != 1 or not is_sweep(Path(paths[0])):
        return out
    return str(Path(paths[0]) / Path(str(out)).name)


def swept_method_keys(sweep: Path) -> list[str]:
    """The keys ``sweep`` varied (from its ``multirun.yaml``) that may tell methods apart."""
    from difftop.launch import swept_keys

    try:
        overrides = OmegaConf.load(sweep / SWEEP_FILE).hydra.overrides.task
        swept, _ = swept_keys([str(o) for o in overrides])
    except Exception:  # an unreadable sweep record only costs the finer grouping
        return []
    return [k for k in swept if k not in NOT_METHOD]


def _value(run_dir: Path, sweep: Path, cfg: DictConfig, key: str) -> str | None:
    """The run's value of ``key``: from its config, else (a config group such as ``preset``) from its
    job folder's name, ``key=value,...``."""
    value = OmegaConf.select(cfg, key, default=None)
    if value is not None:
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value)
        return str(value)
    name = run_dir.relative_to(sweep).parts[0] if run_dir != sweep else ""
    m = re.search(rf"(?:^|,){re.escape(key)}=([^,]*)", name)
    return m.group(1) if m else None


def label_sweeps(dirs: Sequence[Path], configs: dict[Path, DictConfig], kinds: dict[Path, str]) -> None:
    """Give the RL runs of sweep folders among ``dirs`` labels naming their swept method keys (the
    configs in memory only); say which swept keys IL runs are averaged over."""
    sweeps: dict[Path, list[str]] = {}
    noted: set[Path] = set()
    for d in dirs:
        sweep = next((p for p in d.parents if is_sweep(p)), None)
        if sweep is None:
            continue
        if sweep not in sweeps:
            sweeps[sweep] = swept_method_keys(sweep)
        keys = [k for k in sweeps[sweep] if k not in GROUPED.get(kinds[d], ())]
        if not keys:
            continue
        if kinds[d] != "rl":
            if sweep not in noted:
                noted.add(sweep)
                print(f"note: the IL runs in {sweep} are grouped by policy; its swept {', '.join(keys)} are "
                      f"averaged over (plot each value's runs separately to tell them apart)")
            continue
        cfg = configs[d]
        parts = [f"{k}={v}" for k in keys if (v := _value(d, sweep, cfg, k)) is not None]
        if parts:
            base = cfg.get("label") or cfg.get("agent")
            if isinstance(base, DictConfig):
                base = base.get("name")
            cfg.label = " ".join([str(base), *parts])
