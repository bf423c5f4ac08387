"""Scripted and planning experts that generate demonstrations, one module per task family.

A demo task is built by :func:`make_demo_task` from its name and its config section and has
``rollout(seed) -> Rollout`` (one attempt from the env's reset with that seed) and ``attrs()``
(what to record about the generator in the dataset). To add a task (robosuite, metaworld, ...),
write a module with such a class and add it to :data:`DEMO_TASKS`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from difftop.errors import UserError

#: task name -> "module:class" of its demo task
DEMO_TASKS: dict[str, str] = {
    "pusht": "difftop.il.experts.pusht_task:PushTDemoTask",
}


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
    if name not in DEMO_TASKS:
        raise UserError(f"no expert for task {name!r}; valid tasks: {', '.join(sorted(DEMO_TASKS))}")
    return load_demo_task(DEMO_TASKS[name], options)


def load_demo_task(spec: str, options: Mapping[str, Any] | None = None) -> DemoTask:
    """The demo task class ``"module:Class"`` built with ``options`` (worker processes use this)."""
    module, _, cls = spec.partition(":")
    return getattr(importlib.import_module(module), cls)(**dict(options or {}))
