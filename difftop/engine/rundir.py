"""Opening a run folder: start it, refuse to overwrite it, or resume it with the settings it began with.

Why the saved settings win on resume: a run is one experiment; silently continuing it with another
learning rate would make its curve a mix of two. A setting given on the command line that differs
from the run's is refused unless ``allow_change=[key, ...]`` names it, and then it is said so. Keys
that only say how far to go or how to report (``steps``, ``eval_every``, ``progress``, ...) may
always change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from difftop.errors import UserError
from difftop.utils.checkpoint import CheckpointError, find_checkpoint, load_checkpoint

__all__ = ["RunSpec", "open_run", "explicit_keys"]

#: keys every run may change on resume: where and how it runs, how it reports
ALWAYS_OVERRIDABLE = ("out_dir", "resume", "allow_change", "progress", "threads", "device", "tensorboard",
                      "logger")


@dataclass(frozen=True)
class RunSpec:
    """What the engine needs to know of a kind of run."""

    kind: str  # "rl" | "il": what checkpoints hold, checked on load
    step_key: str  # the CSV column counting progress: "env_step" | "step"
    overridable: tuple[str, ...] = ()  # keys a resumed run may change freely (how far, how to report)
    weights: tuple[tuple[str, ...], ...] = field(default_factory=tuple)  # checkpoint subtrees of weights


def explicit_keys() -> list[str] | None:
    """The keys given on the command line (Hydra overrides), or None outside a Hydra app."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = HydraConfig.get().overrides.task
    except Exception:  # not inside a Hydra app (a direct call from Python)
        return None
    keys = []
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if "@" in key:  # a group choice (preset@pkg): not a key of the config
            continue
        keys.append(key)
    return keys


def _select(cfg: Any, key: str) -> Any:
    value = OmegaConf.select(cfg, key, default="<absent>")
    if isinstance(value, DictConfig) or OmegaConf.is_list(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _has_run(out: Path) -> bool:
    """A committed checkpoint is there (a half-written first one, cut off by a kill, is not a run)."""
    return out.is_dir() and find_checkpoint(out) is not None


def open_run(cfg: DictConfig, spec: RunSpec) -> tuple[DictConfig, dict | None]:
    """(config to run, checkpoint state or None) for the run in ``cfg.out_dir``.

    A checkpoint there without ``resume=true`` is refused (a run is never overwritten); with it the
    saved config is the run's, except for ``spec.overridable`` keys and keys named in
    ``allow_change``. ``resume=true`` with no checkpoint yet starts the run, so job scripts can always
    pass it. Reads only: nothing in the folder is changed here.
    """
    out = Path(cfg.out_dir)
    if not _has_run(out):
        if cfg.get("resume"):
            print(f"resume=true: no checkpoint in {out} yet, starting the run")
        return cfg, None
    if not cfg.get("resume"):
        raise UserError(f"{out} already holds a run (its checkpoint); pass resume=true to continue it "
                        f"or choose another out_dir")
    try:
        state = load_checkpoint(find_checkpoint(out) or out, kind=spec.kind)
    except CheckpointError as e:
        raise UserError(f"resume: {e}") from None
    saved = OmegaConf.create(state["config"])
    allowed = [str(k) for k in (cfg.get("allow_change") or [])]
    free = (*ALWAYS_OVERRIDABLE, *spec.overridable)
    given = explicit_keys()
    keys = given if given is not None else [str(k) for k in cfg.keys()]
    changed = []
    for key in keys:
        if key.split(".")[0] in free or key.split(".")[0] == "hydra":
            continue
        mine, theirs = _select(cfg, key), _select(saved, key)
        if theirs == "<absent>" or mine == theirs:
            continue
        if key not in allowed:
            raise UserError(f"resume: {key}={mine!r} differs from the run's {theirs!r}; drop {key}= to "
                            f"resume as the run began, or allow_change=[{key}] to go on with the new value")
        changed.append((key, theirs, mine))
    run = OmegaConf.merge(cfg, saved)  # keys new since the run began take today's defaults
    for key in free:
        if key in cfg:
            run[key] = cfg[key]
    for key, old, new in changed:
        OmegaConf.update(run, key, new, force_add=True)
        print(f"resume: {key} changes from {old!r} to {new!r} (allow_change)")
    return run, state
