"""Scripted and planning experts that generate demonstrations, one module per task family.

A demo task is built by :func:`make_demo_task` from its name and its config section and has
``rollout(seed) -> Rollout`` (one attempt from the env's reset with that seed) and ``attrs()``
(what to record about the generator in the dataset). A task (:mod:`difftop.tasks`) names its demo
task class in its ``expert`` field.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from difftop.errors import UserError


def demo_task_spec(name: str) -> str:
    """The ``"module:Class"`` of task ``name``'s demo task (its ``expert`` in :mod:`difftop.tasks`); a
    UserError listing the tasks that have one otherwise."""
    from difftop.tasks import FAMILIES, TASKS, family_of, get_task

    if family_of(name) and get_task(name).expert:  # metaworld-<name>: its family's error when unknown
        return get_task(name).expert
    with_expert = sorted(n for n in TASKS if get_task(n).expert)
    if name not in with_expert:
        with_expert += [f"{p}<name>" for p in sorted(FAMILIES)]
        raise UserError(f"no expert for task {name!r}; valid tasks: {', '.join(with_expert)}")
    return get_task(name).expert


@dataclass
class Rollout:
    """One expert attempt: per-step arrays (observation before the action, the action), success,
    and per-episode scalars to store (``episode_<name>`` in the dataset's meta)."""

    steps: dict[str, np.ndarray]
    success: bool
    meta: dict[str, float] = field(default_factory=dict)


class DemoTask(Protocol):
    name: str

    def rollout(self, seed: int) -> Rollout: ...

    def attrs(self) -> dict[str, Any]: ...


def make_demo_task(name: str, options: Mapping[str, Any] | None = None) -> DemoTask:
    """The demo task ``name`` configured by ``options``; UserError listing the valid tasks."""
    return load_demo_task(demo_task_spec(name), options)


def load_demo_task(spec: str, options: Mapping[str, Any] | None = None) -> DemoTask:
    """The demo task class ``"module:Class"`` built with ``options`` (worker processes use this)."""
    module, _, cls = spec.partition(":")
    return getattr(importlib.import_module(module), cls)(**dict(options or {}))


@dataclass
class ExpertRate:
    """An expert's attempts over seeds ``0..n-1``: successes, lengths of the successful episodes, seconds
    per attempt, and the seeds that failed (what ``results/il/*_experts.py`` tabulate)."""

    successes: int = 0
    lengths: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


def expert_rate(task: DemoTask, seeds: int) -> ExpertRate:
    """One ``rollout(seed)`` per seed ``0..seeds-1``, as ``difftop demos`` attempts them, timed."""
    rate = ExpertRate()
    for seed in range(seeds):
        t0 = time.perf_counter()
        r = task.rollout(seed)
        rate.seconds.append(time.perf_counter() - t0)
        if r.success:
            rate.successes += 1
            rate.lengths.append(len(r.steps["action"]))
        else:
            rate.failed.append(seed)
    return rate
