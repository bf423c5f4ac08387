"""``difftop demos``: generate successful expert demonstrations into a zarr replay buffer.

``difftop demos task=pusht episodes=200 out=data/pusht.zarr`` tries seeds ``seed, seed+1, ...``
with the task's expert, keeps only the successful attempts and appends each one to ``out`` as
soon as it is done (diffusion_policy's layout, plus ``meta/episode_seed`` and the task's
per-episode scalars). Killing the command loses at most the attempts in progress; running it
again continues where it stopped (the next seed to try is stored in the zarr's attributes)
until ``out`` holds ``episodes`` episodes.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from itertools import count
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from difftop.data.zarr_io import ZarrEpisodeWriter
from difftop.errors import UserError
from difftop.il.experts import DEMO_TASKS, Rollout, load_demo_task

log = logging.getLogger(__name__)

#: a demo task's attributes that must match to append to an existing dataset
SHAPING_ATTRS = ("image_size", "max_steps")

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
    opts.update(max_steps=int(cfg.max_steps), images=bool(cfg.images), image_size=int(cfg.image_size))
    return opts


def main(cfg: DictConfig) -> int:
    task = str(cfg.task)
    if task not in DEMO_TASKS:
        raise UserError(f"no expert for task {task!r}; valid tasks: {', '.join(sorted(DEMO_TASKS))}")
    episodes, workers = int(cfg.episodes), int(cfg.workers)
    if episodes < 1 or workers < 1:
        raise UserError(f"episodes and workers must be >= 1, got episodes={episodes}, workers={workers}")
    out = Path(str(cfg.out))
    options = _options(cfg)
    local = load_demo_task(DEMO_TASKS[task], options)  # validates the options before writing

    writer = ZarrEpisodeWriter(out)
    attrs = dict(writer.attrs)
    if writer.n_episodes and attrs.get("task", task) != task:
        raise UserError(f"{out} holds {attrs['task']} demos, not {task}: choose another out=")
    new_attrs = local.attrs()
    for k in SHAPING_ATTRS:  # settings that change what the stored arrays are
        if writer.n_episodes and k in attrs and k in new_attrs and attrs[k] != new_attrs[k]:
            raise UserError(f"{out} was written with {k}={attrs[k]}, not {new_attrs[k]}: choose another out=")
    next_seed = int(attrs.get("next_seed", cfg.seed))
    attempts = int(attrs.get("attempts", 0))
    done = writer.n_episodes
    if done >= episodes:
        print(f"{out}: already holds {done} >= {episodes} episodes; nothing to do")
        return 0
    if done:
        print(f"{out}: continuing from {done} episodes, next seed {next_seed}")
    if not attrs:
        writer.attrs.update({**new_attrs, "task": task, "seed": int(cfg.seed)})

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
        for seed, r, secs in _results(DEMO_TASKS[task], options, count(next_seed), workers, local):
            attempts += 1
            tried_run += 1
            if r.success:
                writer.append(r.steps, {"episode_seed": seed, **r.meta})
                done += 1
                ok_run += 1
                bar.update(1)
            writer.attrs.update({"next_seed": seed + 1, "attempts": attempts})
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
    print(
        f"{out}: {done} episodes ({writer.n_steps} steps); this run {ok_run}/{tried_run} attempts "
        f"succeeded in {wall:.0f}s ({wall / max(tried_run, 1):.1f}s per attempt)"
    )
    return 0
