"""The task registry: one adapter module per task (or family), one line here.

To add a task, write ``difftop/tasks/<name>.py`` defining ``TASK = Task(...)`` (environment factory,
observation keys per observation type, metrics, expert) and add ``"<name>": "difftop.tasks.<name>:TASK"``
to :data:`TASKS`. ``difftop il task=<name>``, ``difftop demos task=<name>``, evaluation and plots then
know it. Modules are imported only when their task is asked for, so simulators load lazily.

RL tasks are the DeepMind Control Suite, any ``domain-task`` (:mod:`difftop.envs.dmc`).
"""

from __future__ import annotations

import importlib

from difftop.errors import UserError
from difftop.tasks.base import Metric, Task

__all__ = ["TASKS", "Metric", "Task", "get_task", "register_task"]

#: task name -> "module:attribute" of its :class:`Task`
TASKS: dict[str, str] = {
    "pusht": "difftop.tasks.pusht:TASK",
}

_loaded: dict[str, Task] = {}


def register_task(name: str, target: str) -> None:
    """Add a task at run time (a user's own module): ``register_task("mytask", "mypkg.tasks:TASK")``."""
    TASKS[name] = target
    _loaded.pop(name, None)


def get_task(name: str) -> Task:
    """The task ``name``; a UserError listing the valid ones when unknown."""
    if name not in TASKS:
        raise UserError(f"unknown IL task {name!r}; choose one of: {', '.join(sorted(TASKS))}")
    if name not in _loaded:
        module, _, attr = TASKS[name].partition(":")
        task = getattr(importlib.import_module(module), attr)
        if not isinstance(task, Task):
            raise TypeError(f"{TASKS[name]} is not a difftop.tasks.Task")
        _loaded[name] = task
    return _loaded[name]
