"""The task registry: one adapter module per task (or family), one line here.

To add a task, write ``difftop/tasks/<name>.py`` defining ``TASK = Task(...)`` (environment factory,
observation keys per observation type, metrics, expert) and add ``"<name>": "difftop.tasks.<name>:TASK"``
to :data:`TASKS`. ``difftop il task=<name>``, ``difftop demos task=<name>``, evaluation and plots then
know it. Modules are imported only when their task is asked for, so simulators load lazily.

A *family* names many tasks by a prefix: :data:`FAMILIES` maps ``"metaworld-"`` to a factory
``make_task(rest) -> Task``, so ``metaworld-<name>`` is any MetaWorld v3 task without one line each;
the factory's own error lists the valid names.

RL tasks are the DeepMind Control Suite, any ``domain-task`` (:mod:`difftop.envs.dmc`).
"""

from __future__ import annotations

import importlib

from difftop.errors import UserError
from difftop.tasks.base import Metric, Task

__all__ = ["FAMILIES", "TASKS", "Metric", "Task", "family_of", "get_task", "register_task"]

#: task name -> "module:attribute" of its :class:`Task`
TASKS: dict[str, str] = {
    "pusht": "difftop.tasks.pusht:TASK",
    "lift": "difftop.tasks.robomimic:LIFT",
    "can": "difftop.tasks.robomimic:CAN",
    "square": "difftop.tasks.robomimic:SQUARE",
    "transport": "difftop.tasks.robomimic:TRANSPORT",
    "toolhang": "difftop.tasks.robomimic:TOOLHANG",
    "maniskill-pickcube": "difftop.tasks.maniskill:PICKCUBE",
    "maniskill-stackcube": "difftop.tasks.maniskill:STACKCUBE",
    "maniskill-peginsertionside": "difftop.tasks.maniskill:PEGINSERTIONSIDE",
}

#: name prefix -> "module:factory"; ``factory(name_without_prefix)`` returns the :class:`Task`
FAMILIES: dict[str, str] = {
    "metaworld-": "difftop.tasks.metaworld:make_task",
}

_loaded: dict[str, Task] = {}


def family_of(name: str) -> str | None:
    """The :data:`FAMILIES` prefix that ``name`` starts with (a plain :data:`TASKS` name wins), or None."""
    if name in TASKS:
        return None
    return next((p for p in FAMILIES if name.startswith(p) and len(name) > len(p)), None)


def register_task(name: str, target: str) -> None:
    """Add a task at run time (a user's own module): ``register_task("mytask", "mypkg.tasks:TASK")``."""
    TASKS[name] = target
    _loaded.pop(name, None)


def get_task(name: str) -> Task:
    """The task ``name``; a UserError listing the valid ones when unknown."""
    prefix = family_of(name)
    if name not in TASKS and prefix is None:
        names = [*sorted(TASKS), *(f"{p}<name>" for p in sorted(FAMILIES))]
        raise UserError(f"unknown IL task {name!r}; choose one of: {', '.join(names)}")
    if name not in _loaded and prefix is not None:
        module, _, attr = FAMILIES[prefix].partition(":")
        task = getattr(importlib.import_module(module), attr)(name[len(prefix):])
        if not isinstance(task, Task):
            raise TypeError(f"{FAMILIES[prefix]}({name[len(prefix):]!r}) is not a difftop.tasks.Task")
        _loaded[name] = task
    if name not in _loaded:
        module, _, attr = TASKS[name].partition(":")
        task = getattr(importlib.import_module(module), attr)
        if not isinstance(task, Task):
            raise TypeError(f"{TASKS[name]} is not a difftop.tasks.Task")
        _loaded[name] = task
    return _loaded[name]
