"""ManiSkill3 tabletop tasks on the CPU: ``maniskill-pickcube``, ``maniskill-stackcube``,
``maniskill-peginsertionside``.

- ``obs=pointcloud``: ``{"point_cloud": (1200, 6), "agent_pos": (D,)}`` (the paper's 1200 points; xyz in
  the world frame + rgb, background/ground/table removed by segmentation; see :mod:`difftop.envs.maniskill`);
- ``obs=state``: ``{"state": (S,)}``, ManiSkill's privileged flat state.

Actions (8,): the arm's ``pd_joint_pos`` targets *relative to the current joint positions*, then the
gripper (``actions="delta"`` of :mod:`difftop.envs.maniskill`, which says why). The demonstrations store
the motion planner's absolute targets (:mod:`difftop.il.experts.maniskill_experts`); :func:`_derive`
converts them when a dataset is loaded for training, and the env adds the joint positions back, so the
conversion is exact. Every env needs the Vulkan driver that ``make venv`` unpacks (``tools/fetch_mesa.sh``).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from difftop.tasks.base import Metric, Task

__all__ = ["ACTION_FRAME", "PEGINSERTIONSIDE", "PICKCUBE", "STACKCUBE"]

#: the frame the tasks' policies act in (see the module docstring)
ACTION_FRAME = "delta"


def _make_env(name: str, obs_type: str, max_steps: int, image_size: int | None = None) -> Any:
    from difftop.envs.maniskill import make_maniskill

    return make_maniskill(name, obs_type, max_steps, actions=ACTION_FRAME)  # image_size: the task's camera


def _derive(data: Any, obs_type: str) -> None:
    """The stored absolute targets as the tasks' relative ones (once per loaded dataset)."""
    from difftop.envs.maniskill import delta_actions

    if data.attrs.get("action_frame", "absolute") == ACTION_FRAME:
        return
    qpos = data["agent_pos"] if "agent_pos" in data.data else data["state"]  # both lead with qpos
    data.data["action"] = delta_actions(data["action"], qpos)
    data.attrs["action_frame"] = ACTION_FRAME


def _env_obs(obs: Any, obs_type: str) -> dict[str, np.ndarray]:
    if obs_type == "state":
        return {"state": obs["state"]}
    return {"point_cloud": obs["point_cloud"], "agent_pos": obs["agent_pos"]}


def _task(name: str, expert: str, description: str, metrics: tuple[Metric, ...] = ()) -> Task:
    return Task(
        name=f"maniskill-{name}",
        obs_keys={"pointcloud": ("point_cloud", "agent_pos"), "state": ("state",)},
        make_env=functools.partial(_make_env, name),
        env_obs=_env_obs,
        derive=_derive,
        metrics=metrics,
        action_frame=ACTION_FRAME,
        expert=f"difftop.il.experts.maniskill_experts:{expert}",
        description=description,
    )


#: whether the (first) cube was ever held in an episode: progress short of success, which evaluations report
#: beside the success rate (ManiSkill's own ``is_grasped`` check)
PICKCUBE = _task("pickcube", "PickCubeDemoTask", "ManiSkill3 PickCube-v1: lift a cube to a goal position",
                 (Metric("grasped", "is_grasped", "max"),))
STACKCUBE = _task("stackcube", "StackCubeDemoTask", "ManiSkill3 StackCube-v1: stack a cube on another",
                  (Metric("grasped", "is_cubeA_grasped", "max"),))
PEGINSERTIONSIDE = _task("peginsertionside", "PegInsertionSideDemoTask",
                         "ManiSkill3 PegInsertionSide-v1: insert a peg sideways into a box's hole")
