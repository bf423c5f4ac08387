"""MetaWorld v3 tasks, ``task=metaworld-<name>`` (any of the 50; an unknown name lists them).

- ``obs=state``: ``{"state": (39,)}`` (MetaWorld's goal-observable vector);
- ``obs=pointcloud``: ``{"point_cloud": (512, 3), "agent_pos": (9,)}`` (DP3's setting: corner2
  camera, farthest-point sampled, world frame; see :mod:`difftop.envs.metaworld`).

Demonstrations come from MetaWorld's scripted policies (:mod:`difftop.il.experts.metaworld_experts`).
The point-cloud settings are the task's, fixed, so that demonstrations and evaluation rollouts see
the same clouds.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from difftop.tasks.base import Task

__all__ = ["make_task"]


def _make_env(name: str, obs_type: str, max_steps: int, image_size: int | None = None) -> Any:
    from difftop.envs.metaworld import make_metaworld

    return make_metaworld(name, obs_type, max_steps)  # image_size: the clouds' camera is the task's


def _env_obs(obs: Any, obs_type: str) -> dict[str, np.ndarray]:
    if obs_type == "state":
        return {"state": np.asarray(obs, dtype=np.float32)}
    return {"point_cloud": obs["point_cloud"], "agent_pos": obs["agent_pos"]}


def make_task(name: str) -> Task:
    """The :class:`Task` of MetaWorld v3 task ``name`` (e.g. ``assembly``); UserError when unknown."""
    from difftop.envs.metaworld import metaworld_tasks

    names = metaworld_tasks()
    if name not in names:
        from difftop.errors import UserError

        raise UserError(f"unknown MetaWorld task {name!r}; choose metaworld-<name> with one of: "
                        f"{', '.join(names)}")
    return Task(
        name=f"metaworld-{name}",
        obs_keys={"state": ("state",), "pointcloud": ("point_cloud", "agent_pos")},
        make_env=functools.partial(_make_env, name),
        env_obs=_env_obs,
        expert=f"difftop.il.experts.metaworld_experts:{name}",
        description=f"MetaWorld v3 {name} (metaworld 3.1.1), goal observable, random resets",
    )
