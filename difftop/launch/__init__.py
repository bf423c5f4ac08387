"""Sweeps: where each job of a multirun (``difftop rl -m task=a,b seed=1,2``) writes its run.

Why: a run folder is one experiment, and a sweep is many; so that the jobs of one sweep never share
a folder and the sweep can be plotted as one thing, every job's run lives in its own folder under
the sweep folder, named after the settings that vary between the jobs:

    <hydra.sweep.dir>/seed=1,task=cartpole-swingup/    config.yaml, train.csv, eval.csv, checkpoint/
    <hydra.sweep.dir>/multirun.yaml                    the sweep (Hydra)
    <hydra.sweep.dir>/.submitit/                       job logs and pickles (submitit launchers)

- :func:`sweep_args` (before Hydra starts): the job folder name, ``hydra.sweep.subdir`` =
  ``${hydra.job.override_dirname}`` (``configs/_hydra.yaml``), is limited to the swept keys (a
  command line's fixed settings would make it too long for a file name and say nothing), and to
  the job number when nothing is swept.
- :func:`job_config` (in each job of ``difftop rl`` / ``difftop il``): ``out_dir`` defaults to that
  folder; an ``out_dir=`` given on the command line is kept (it may interpolate the swept keys, e.g.
  ``out_dir='runs/${task}/s${seed}'``). ``resume`` defaults to true: a job started again (requeued
  after a pre-emption, restarted by the scheduler, or the same sweep run again with the same
  ``hydra.sweep.dir``) continues its own run from its checkpoint; a first start finds none and starts.

With the submitit launchers (:mod:`difftop.launch.submitit`, :func:`register_launchers`) every job is
a process of its own, whose exit code the sweep never sees: a job that fails there raises
:class:`JobFailed`, which Hydra reports in the sweep's process as one line, and the sweep exits 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.errors import CompactHydraException

__all__ = ["EXCLUDE_KEY", "SUBDIR_KEY", "JobFailed", "sweep_args", "swept_keys", "job_config",
           "in_multirun", "register_launchers"]

EXCLUDE_KEY = "hydra.job.config.override_dirname.exclude_keys"
SUBDIR_KEY = "hydra.sweep.subdir"
#: never part of a job folder's name, so that ``resume=true`` given to a sweep run again keeps the folders
ALWAYS_EXCLUDED = ("resume",)


class JobFailed(CompactHydraException):
    """A sweep job in a process of its own failed (its ``error:`` line is in its log too); Hydra prints
    just this message in the sweep's process, after the job's overrides."""


def swept_keys(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """(swept keys, fixed keys) of the task overrides among ``overrides`` (Hydra's override syntax)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    swept, fixed = [], []
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        if o.is_hydra_override():
            continue
        (swept if o.is_sweep_override() else fixed).append(o.key_or_group)
    return swept, fixed


def _quoted_list(keys: Sequence[str]) -> str:
    return "[" + ",".join("'" + k.replace("\\", "\\\\").replace("'", "\\'") + "'" for k in keys) + "]"


def _raise(message: str) -> None:
    raise ValueError(message)


def sweep_args(args: Sequence[str]) -> list[str]:
    """Hydra's arguments with the job folder naming of a multirun added (see the module docstring);
    unchanged for a single run, or when the command line sets the naming itself or cannot be parsed
    (Hydra then reports it)."""
    args = list(args)
    try:
        from hydra._internal.utils import get_args_parser

        parser = get_args_parser()
        parser.error = _raise  # type: ignore[method-assign]  # no usage text: Hydra reports bad flags
        parsed = parser.parse_args(args)
        if not parsed.multirun:
            return args
        given = {o.split("=", 1)[0].lstrip("+~") for o in parsed.overrides}
        if given & {EXCLUDE_KEY, SUBDIR_KEY}:
            return args
        swept, fixed = swept_keys(parsed.overrides)
    except Exception:  # a bad flag or bad override syntax
        return args
    added = [f"{EXCLUDE_KEY}={_quoted_list([*dict.fromkeys([*fixed, *ALWAYS_EXCLUDED])])}"]
    if not swept:
        added.append(f"{SUBDIR_KEY}=${{hydra.job.num}}")
    # Hydra's argparse takes the overrides as one run of positional arguments: put these with them
    i = next((j for j, w in enumerate(args) if "=" in w and not w.startswith("-")), len(args))
    return [*args[:i], *added, *args[i:]]


def in_multirun() -> bool:
    """True inside a job of a multirun (any launcher)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # not inside a Hydra app
        return False


def job_config(cfg: Any) -> Any:
    """``cfg`` of a multirun job of a run-engine command (``difftop rl`` / ``il``: a config with both
    ``out_dir`` and ``resume``) with ``out_dir`` set to the job's folder and ``resume=true``, each unless
    the command line gave it. Other commands (benchmarks, ``eval``) and single runs are left as they are."""
    if "out_dir" not in cfg or "resume" not in cfg or not in_multirun():
        return cfg
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from difftop.engine.rundir import explicit_keys

    given = explicit_keys() or []
    with open_dict(cfg):
        if "out_dir" not in given:
            cfg.out_dir = str(HydraConfig.get().runtime.output_dir)
        if "resume" not in given:
            cfg.resume = True
    return cfg


def register_launchers() -> None:
    """difftop's ``submitit_slurm`` / ``submitit_local`` launcher configs, when the ``cluster`` extra
    (hydra-submitit-launcher) is installed; without it Hydra lists the launchers it has."""
    try:
        from difftop.launch.submitit import register
    except ImportError:
        return
    register()
