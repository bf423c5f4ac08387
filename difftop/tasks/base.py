"""What a task is: everything the commands need to know of one environment, in one place.

Why one object: training (dataset windows), acting (environment histories), demonstrations (the
expert) and reporting (evaluation columns, plots) must agree on the same observation keys and the
same metrics; a task that declares them once cannot have them disagree between commands.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from difftop.errors import UserError

__all__ = ["Metric", "Task"]


@dataclass(frozen=True)
class Metric:
    """An episode metric read from the environment's ``info`` dicts.

    ``reduce``: how the per-step values make the episode's value: ``max`` (e.g. Push-T's coverage:
    the best coverage reached), ``last`` or ``sum``. Evaluations report ``mean_<name>`` and
    ``std_<name>`` over episodes; plots draw the ``mean_`` columns.
    """

    name: str
    info_key: str
    reduce: str = "max"

    def __post_init__(self):
        if self.reduce not in ("max", "last", "sum"):
            raise ValueError(f"metric {self.name}: reduce must be max, last or sum, got {self.reduce!r}")

    def update(self, current: float, value: float) -> float:
        if self.reduce == "max":
            return max(current, value)
        if self.reduce == "sum":
            return current + value
        return value


def _no_derive(data: Any, obs_type: str) -> None:
    return None


@dataclass(frozen=True)
class Task:
    """One task. ``make_env(obs_type, max_steps, image_size)`` builds a gymnasium env whose ``info`` has
    ``success`` and every metric's ``info_key`` (at reset too); ``env_obs(obs, obs_type)`` turns its
    observation into the dataset keys of ``obs_keys[obs_type]``; ``derive(data, obs_type)`` adds keys a
    dataset may lack; ``expert`` is the ``"module:Class"`` of its demonstration generator (or None)."""

    name: str
    obs_keys: dict[str, tuple[str, ...]]
    make_env: Callable[..., Any]
    env_obs: Callable[[Any, str], dict[str, np.ndarray]]
    derive: Callable[[Any, str], None] = _no_derive
    metrics: tuple[Metric, ...] = ()
    expert: str | None = None
    description: str = ""
    extra: dict = field(default_factory=dict)
    #: the frame of the policy's actions; a policy trained in another frame (a checkpoint from before a
    #: task changed it) would act on the wrong numbers without a word, so rollouts and bases check it
    action_frame: str = "absolute"

    def keys(self, obs_type: str) -> tuple[str, ...]:
        if obs_type not in self.obs_keys:
            raise UserError(f"task {self.name} has no observation type {obs_type!r}; "
                            f"choose one of: {', '.join(self.obs_keys)}")
        return self.obs_keys[obs_type]

    def eval_columns(self) -> tuple[str, ...]:
        """The evaluation CSV's metric columns, in order."""
        cols = ["success_rate"]
        for m in self.metrics:
            cols += [f"mean_{m.name}", f"std_{m.name}"]
        return (*cols, "mean_length")
