"""``difftop demos``: generate successful expert demonstrations into a zarr replay buffer.

``difftop demos task=pusht episodes=200 out=data/pusht.zarr`` tries seeds ``seed, seed+1, ...``
with the task's expert, keeps only the successful attempts and appends each one to ``out`` as
soon as it is done (diffusion_policy's layout, plus ``meta/episode_seed`` and the task's
per-episode scalars). Running it again (``resume=true``, the default) continues where it stopped
until ``out`` holds ``episodes`` episodes. ``out=<name>.hdf5`` writes robomimic's layout instead.

Why every attempt is one atomic commit: the seed to try next must move with the episodes. When
the store recorded an episode and the next seed in two writes, a kill between them repeated the
episode on resume. Each attempt now ends in one :class:`ZarrEpisodeWriter` commit (a single
``os.replace`` of the store's attributes) that records the episode, if it succeeded, together
with ``next_seed`` and ``attempts``; a run killed at any instant, even with SIGKILL, resumes to
exactly the store an uninterrupted run writes (``tests/il/test_demos_crash.py``).

Why hdf5 goes through a zarr store: an hdf5 file cannot be appended to safely (a killed writer
can leave it unreadable). With ``out=x.hdf5`` the episodes are committed to the work store
``x.hdf5.partial.zarr``; when ``episodes`` are done it is written to ``x.hdf5`` (through a
temporary file and a rename) and removed. Continuing a finished ``x.hdf5`` with more
``episodes`` reads it back into a work store first.

Test hook: ``DIFFTOP_CRASH_AT=<point>:<n>`` kills this process with SIGKILL the ``n``-th time it
reaches ``<point>`` (``stage``, ``before_commit``, ``in_commit``, ``after_commit``: see
:class:`ZarrEpisodeWriter`; ``export``: the hdf5 written to its temporary name; ``cleanup``: the
hdf5 renamed, the work store not yet removed). Crash-safety tests use it; unset, nothing happens.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from itertools import count
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from difftop.data.dataset import HDF5_SUFFIXES
from difftop.data.zarr_io import ZarrEpisodeWriter
from difftop.errors import UserError
from difftop.il.experts import Rollout, demo_task_spec, load_demo_task
from difftop.utils.checks import (
    require_given,
    require_int,
    require_seed,
    require_writable_dir,
    require_writable_file,
)

log = logging.getLogger(__name__)

#: a demo task's attributes that must match to append to an existing dataset
SHAPING_ATTRS = ("image_size", "max_steps")
#: the test hook's environment variable (see the module docstring)
CRASH_ENV = "DIFFTOP_CRASH_AT"
CRASH_POINTS = ("stage", "before_commit", "in_commit", "after_commit", "export", "cleanup")

_worker_task: Any = None


def _init_worker(spec: str, options: dict) -> None:
    global _worker_task
    _worker_task = load_demo_task(spec, options)


def _run_seed(seed: int) -> tuple[int, Rollout, float]:
    t0 = time.perf_counter()
    r = _worker_task.rollout(seed)
    return seed, r, time.perf_counter() - t0


def _results(spec: str, options: dict, seeds: Iterator[int], workers: int, local: Any) -> Iterator[tuple]:
    """(seed, rollout, seconds) in seed order, from ``local`` (a demo task) or ``workers`` processes."""
    global _worker_task
    if workers <= 1:
        _worker_task = local
        for s in seeds:
            yield _run_seed(s)
        return
    # An executor (not multiprocessing.Pool, which re-spawns workers forever when their
    # initializer fails); 2 attempts per worker in flight, collected in seed order.
    ex = ProcessPoolExecutor(
        workers, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=(spec, options)
    )
    try:
        pending: deque = deque(ex.submit(_run_seed, next(seeds)) for _ in range(2 * workers))
        while True:
            yield pending.popleft().result()
            pending.append(ex.submit(_run_seed, next(seeds)))
    finally:
        ex.shutdown(wait=False, cancel_futures=True)


def _options(cfg: DictConfig) -> dict[str, Any]:
    section = cfg.experts.get(cfg.task)
    opts = OmegaConf.to_container(section, resolve=True) if section is not None else {}
    opts["images"] = bool(cfg.images)
    for k in ("max_steps", "image_size"):  # null: the demo task's own default (its eval horizon, camera size)
        if cfg.get(k) is not None:
            opts[k] = int(cfg[k])
    return opts


def crash_hook() -> Callable[[str], None]:
    """The ``DIFFTOP_CRASH_AT`` test hook (module docstring): a no-op when the variable is unset."""
    spec = os.environ.get(CRASH_ENV, "")
    if not spec:
        return lambda point: None
    point, _, n = spec.partition(":")
    if point not in CRASH_POINTS or not n.isdigit() or int(n) < 1:
        raise UserError(f"{CRASH_ENV} must be <point>:<n> with point in {', '.join(CRASH_POINTS)}, "
                        f"got {spec!r}")
    seen = [0]

    def hook(p: str) -> None:
        if p == point:
            seen[0] += 1
            if seen[0] == int(n):
                os.kill(os.getpid(), signal.SIGKILL)

    return hook


def _is_run_folder(path: Path) -> str | None:
    """What marks ``path`` as a difftop run folder, or None."""
    for marker in ("checkpoint", "checkpoint.pt"):
        if (path / marker).exists():
            return marker
    if (path / "config.yaml").is_file() and (path / "train.csv").is_file():
        return "config.yaml and train.csv"
    return None


def _check_store_dir(shown: str, path: Path) -> None:
    """``path`` (an existing directory) is empty or a replay buffer, never a run folder or other data."""
    marker = _is_run_folder(path)
    if marker:
        raise UserError(f"{shown} is a difftop run folder (it holds {marker}), not a dataset: "
                        "choose another out=")
    try:
        entries = [e.name for e in path.iterdir()]
    except OSError as e:
        raise UserError(f"{shown}: cannot list {path} ({e.strerror})") from e
    visible = {e for e in entries if not e.startswith(".")}
    if entries and (".zgroup" not in entries or visible - {"data", "meta"}):
        raise UserError(f"{shown} is a non-empty folder that is not a zarr replay buffer: choose another "
                        "out= (a new or empty folder, or a store difftop demos wrote)")


def _is_demos_hdf5(path: Path) -> bool:
    import h5py

    from difftop.data.hdf5_io import DIFFTOP_ATTR

    try:
        with h5py.File(path, "r") as f:
            record = json.loads(f["data"].attrs[DIFFTOP_ATTR])
    except (OSError, KeyError, TypeError, ValueError):
        return False
    return isinstance(record, dict) and "next_seed" in record.get("attrs", {})


def work_store(out: Path) -> Path:
    """The zarr store that ``out=<name>.hdf5`` is generated into before it is written."""
    return out.with_name(out.name + ".partial.zarr")


def _check_out(value: object) -> tuple[Path, bool]:
    """(the output path, whether it is hdf5); one-line errors for outputs that must not be written."""
    require_given("out", value)
    out = Path(str(value)).expanduser()
    shown = f"out={str(value)!r}"
    if out.suffix == ".zip":
        raise UserError(f"{out}: can only append to a zarr directory, not a zip")
    if out.is_dir():  # a store, whatever its name
        _check_store_dir(shown, out)
        require_writable_dir("out", value)
        return out, False
    if out.suffix in HDF5_SUFFIXES:
        require_writable_file("out", value)
        if out.exists() and not _is_demos_hdf5(out):
            raise UserError(f"{shown} is an existing file that difftop demos did not write: "
                            "choose another out=")
        work = work_store(out)
        if work.is_dir():
            _check_store_dir(f"{shown}'s work store {work}", work)
        elif work.exists():
            raise UserError(f"{shown}: {work} (its work store) is a file, not a directory")
        return out, True
    if out.exists() or out.is_symlink():
        raise UserError(f"{shown} is an existing file, not a zarr directory store: choose another out=")
    require_writable_dir("out", value)
    return out, False


def _remove_tree(path: Path) -> None:
    """Remove a directory by renaming it first, so that a kill never leaves half a store at ``path``."""
    if path.exists():
        trash = path.with_name(path.name + ".trash")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(path, trash)
        shutil.rmtree(trash)


def _import_hdf5(out: Path, work: Path) -> None:
    """Read a finished ``out`` back into its work store (built aside, then renamed into place)."""
    from difftop.data import load_dataset

    held = load_dataset(out)
    staging = work.with_name(work.name + ".import")
    shutil.rmtree(staging, ignore_errors=True)
    w = ZarrEpisodeWriter(staging)
    meta_keys = [k for k in held.episode_meta if not k.startswith("mask/") and k != "demo_index"]
    for i in range(held.n_episodes):
        w.append(held.episode(i), {k: held.episode_meta[k][i] for k in meta_keys})
    w.commit({k: v for k, v in held.attrs.items() if k != "total"})  # env_args too: the export writes it
    os.replace(staging, work)


def _export_hdf5(work: Path, out: Path, task: str, hook: Callable[[str], None]) -> None:
    """Write the work store to ``out`` in robomimic's layout, then remove the work store."""
    from difftop.data import load_zarr, save_robomimic

    ep = load_zarr(work)
    ep.episode_meta.update(split_masks(ep.n_episodes))
    tmp = out.with_name(out.name + ".export")
    env_args = ep.attrs.get("env_args") or {"env_name": task, "env_kwargs": {}}
    save_robomimic(ep, tmp, action_key="action", env_args=env_args)
    hook("export")
    os.replace(tmp, out)
    hook("cleanup")
    _remove_tree(work)


def split_masks(n: int, valid: float = 0.1) -> dict[str, np.ndarray]:
    """robomimic's ``mask/train`` / ``mask/valid``: a fixed random ``valid`` fraction (at least one
    episode once there are two) held out; it depends on ``n`` only, so a resumed file gets the split
    an uninterrupted run writes."""
    n_valid = max(1, round(valid * n)) if n >= 2 else 0
    is_valid = np.zeros(n, dtype=bool)
    is_valid[np.random.default_rng(0).permutation(n)[:n_valid]] = True
    return {"mask/train": ~is_valid, "mask/valid": is_valid}


def _hdf5_held(out: Path) -> tuple[int, dict]:
    """(episodes, attributes) of a finished ``out=<name>.hdf5``, without reading its arrays."""
    import h5py

    from difftop.data.hdf5_io import DIFFTOP_ATTR

    with h5py.File(out, "r") as f:
        record = json.loads(f["data"].attrs[DIFFTOP_ATTR])
        return sum(1 for k in f["data"] if k.startswith("demo_")), dict(record.get("attrs", {}))


def main(cfg: DictConfig) -> int:
    task = str(cfg.task)
    spec = demo_task_spec(task)
    require_int("episodes", cfg.episodes)
    require_int("workers", cfg.workers)
    require_seed("seed", cfg.seed)
    for k in ("max_steps", "image_size"):
        if cfg.get(k) is not None:
            require_int(k, cfg[k])
    resume = cfg.get("resume", True)
    if not isinstance(resume, bool):
        raise UserError(f"resume must be true or false, got {resume!r}")
    episodes, workers = int(cfg.episodes), int(cfg.workers)
    out, hdf5 = _check_out(cfg.out)  # before anything slow
    hook = crash_hook()
    options = _options(cfg)
    local = load_demo_task(spec, options)  # validates the options before writing

    store = work_store(out) if hdf5 else out
    if hdf5:
        out.with_name(out.name + ".export").unlink(missing_ok=True)  # a killed export's
        shutil.rmtree(store.with_name(store.name + ".trash"), ignore_errors=True)
        if not store.exists() and out.exists():
            held, held_attrs = _hdf5_held(out)
            if held_attrs.get("task", task) != task:
                raise UserError(f"{out} holds {held_attrs['task']} demos, not {task}: choose another out=")
            if not resume:
                raise UserError(f"{out} already holds {held} episodes: pass resume=true to continue it, "
                                "or choose another out=")
            if held >= episodes:
                print(f"{out}: already holds {held} >= {episodes} episodes; nothing to do")
                return 0
            _import_hdf5(out, store)

    writer = ZarrEpisodeWriter(store, hook)
    attrs = writer.attrs
    new_attrs = local.attrs()
    header = {**new_attrs, "task": task, "seed": int(cfg.seed), "next_seed": int(cfg.seed), "attempts": 0}
    changed = [k for k in ("task", *SHAPING_ATTRS) if k in attrs and attrs[k] != header.get(k)]
    if changed and not writer.n_episodes:
        attrs = {}  # a store with no episode yet, started with other settings: start it afresh
    if writer.n_episodes and not resume:
        raise UserError(f"{out} already holds {writer.n_episodes} episodes: pass resume=true to continue it, "
                        "or choose another out=")
    if writer.n_episodes and attrs.get("task", task) != task:
        raise UserError(f"{out} holds {attrs['task']} demos, not {task}: choose another out=")
    for k in SHAPING_ATTRS:  # settings that change what the stored arrays are
        if writer.n_episodes and k in attrs and k in new_attrs and attrs[k] != new_attrs[k]:
            raise UserError(f"{out} was written with {k}={attrs[k]}, not {new_attrs[k]}: choose another out=")
    next_seed = int(attrs.get("next_seed", cfg.seed))
    attempts = int(attrs.get("attempts", 0))
    done = writer.n_episodes
    if done >= episodes:
        if hdf5:
            _export_hdf5(store, out, task, hook)
        print(f"{out}: already holds {done} >= {episodes} episodes; nothing to do")
        return 0
    if done:
        print(f"{out}: continuing from {done} episodes, next seed {next_seed}")
    if "task" not in attrs:
        writer.commit(header, replace=True)

    from tqdm import tqdm

    tty = sys.stderr.isatty()
    bar = tqdm(
        total=episodes,
        initial=done,
        desc=f"demos {task}",
        unit="ep",
        disable=not cfg.progress or not tty,  # in a log file: one line per attempt instead
        file=sys.stderr,
        dynamic_ncols=True,
    )
    ok_run = tried_run = 0
    t_start = time.perf_counter()
    try:
        for seed, r, secs in _results(spec, options, count(next_seed), workers, local):
            attempts += 1
            tried_run += 1
            state = {"next_seed": seed + 1, "attempts": attempts}
            if r.success:  # the episode and the next seed, in one commit
                writer.append(r.steps, {"episode_seed": seed, **r.meta}, state)
                done += 1
                ok_run += 1
                bar.update(1)
            else:
                writer.commit(state)
            n = len(next(iter(r.steps.values()))) if r.steps else 0
            bar.set_postfix_str(f"ok {ok_run}/{tried_run} tried, last: seed {seed} {n} steps {secs:.1f}s")
            if cfg.progress and not tty:
                status = "ok" if r.success else "FAIL"
                print(f"[{done}/{episodes}] seed {seed}: {status} {n} steps {secs:.1f}s", flush=True)
            if done >= episodes:
                break
    finally:
        bar.close()
    wall = time.perf_counter() - t_start
    if hdf5:
        _export_hdf5(store, out, task, hook)
    print(
        f"{out}: {done} episodes ({writer.n_steps} steps); this run {ok_run}/{tried_run} attempts "
        f"succeeded in {wall:.0f}s ({wall / max(tried_run, 1):.1f}s per attempt)"
    )
    return 0
