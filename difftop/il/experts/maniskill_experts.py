"""ManiSkill3 demonstrations from ManiSkill's own motion planner (``mani_skill.examples.motionplanning``).

Why plan first and observe by replay: the planner (mplib screw motions, ``pd_joint_pos``) solves an
episode in 0.1-2 s without observations, while a point-cloud step costs 0.1-0.3 s of CPU rendering.
An attempt therefore plans on an ``obs_mode="none"`` env, recording the actions, and only a
successful plan is replayed from the same ``reset(seed)`` in the observation env, which records the
observation before each action until the first success (where evaluation stops too). CPU physics is
deterministic, so the replay is the planned episode; an attempt whose replay does not succeed within
``max_steps`` is a failure all the same, so every kept episode is solved in the env a policy is
evaluated in.

Each step records ``state`` (ManiSkill's flat privileged state vector), ``env_state`` (the simulator
state, for exact restarts), the ``action`` (8,) and, with ``images=true``, ``point_cloud`` (n, 6) and
``agent_pos`` (see :mod:`difftop.envs.maniskill`).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from difftop.errors import UserError
from difftop.il.experts import Rollout

__all__ = ["ManiSkillDemoTask", "PegInsertionSideDemoTask", "PickCubeDemoTask", "StackCubeDemoTask"]


class _ActionRecorder(gym.Wrapper):
    """Records every action the planner sends (as float32), from each reset on."""

    def reset(self, **kwargs: Any):
        self.actions: list[np.ndarray] = []
        return self.env.reset(**kwargs)

    def step(self, action: Any):
        self.actions.append(np.asarray(action, dtype=np.float32).reshape(-1))
        return self.env.step(action)


def _solver(task: str):
    from mani_skill.examples.motionplanning.panda import solutions

    return {"pickcube": solutions.solvePickCube, "stackcube": solutions.solveStackCube,
            "peginsertionside": solutions.solvePegInsertionSide}[task]


class ManiSkillDemoTask:
    """The motion planner of ManiSkill task ``task`` (see the module docstring).

    ``image_size`` is accepted for ``difftop demos``' common options and not used (the clouds come
    from the task's camera). ``n_points``/``colors``: the clouds' size and rgb channels.
    """

    task = ""

    def __init__(self, max_steps: int = 200, images: bool = True, image_size: int | None = None,
                 n_points: int = 1200, colors: bool = True):
        from difftop.envs.maniskill import ENV_IDS, make_maniskill, make_raw

        if int(max_steps) < 1 or int(n_points) < 1:
            raise UserError(f"max_steps and n_points must be >= 1, got {max_steps} and {n_points}")
        self.name = f"maniskill-{self.task}"
        self.max_steps, self.images = int(max_steps), bool(images)
        self.n_points, self.colors = int(n_points), bool(colors)
        self.plan_env = _ActionRecorder(make_raw(ENV_IDS[self.task], "none"))
        self.env = make_maniskill(self.task, "pointcloud" if self.images else "state", self.max_steps,
                                  n_points=self.n_points, colors=self.colors, render=False)
        self.state_env = None if not self.images else make_maniskill(self.task, "state", self.max_steps,
                                                                      render=False)
        self.solve = _solver(self.task)

    def plan(self, seed: int) -> np.ndarray | None:
        """The planner's actions ``(T, 8)`` from ``reset(seed)``, or None when it fails."""
        try:
            res = self.solve(self.plan_env, seed=int(seed), debug=False, vis=False)
        except Exception:  # noqa: BLE001  (mplib raises anything when no plan exists; that attempt fails)
            return None
        if isinstance(res, int) or not bool(np.asarray(res[-1]["success"]).reshape(-1)[0]):
            return None
        return np.stack(self.plan_env.actions) if self.plan_env.actions else None

    def rollout(self, seed: int) -> Rollout:
        actions = self.plan(seed)
        if actions is None:
            return Rollout({}, False)
        envs = [self.env] + ([self.state_env] if self.state_env is not None else [])
        obs = [e.reset(seed=int(seed))[0] for e in envs]
        keys = ["state", "env_state", "action", *(["point_cloud", "agent_pos"] if self.images else [])]
        steps: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        success = False
        for a in actions[: self.max_steps]:
            for o in obs:
                for k, v in o.items():
                    steps[k].append(v)
            steps["env_state"].append(envs[0].get_state())
            steps["action"].append(a)
            results = [e.step(a) for e in envs]
            obs = [r[0] for r in results]
            success = bool(results[0][4]["success"])
            if success:
                break
        n = len(steps["action"])
        return Rollout({k: np.stack(v) for k, v in steps.items()}, success,
                       {"episode_length": float(n), "plan_length": float(len(actions))})

    def attrs(self) -> dict[str, Any]:
        from difftop.envs.maniskill import CROP_HIGH, CROP_LOW, DROP_ACTORS, ENV_IDS

        return {
            "env": f"ManiSkill3 {ENV_IDS[self.task]} (mani-skill 3.0.1, sapien 3.0.3), CPU sim and render, "
                   "pd_joint_pos",
            "max_steps": self.max_steps,
            "image_size": None,
            "expert": f"mani_skill.examples.motionplanning.panda.solutions ({self.task}), replayed",
            "point_cloud": {"num_points": self.n_points, "rgb": self.colors, "crop_low": list(CROP_LOW),
                            "crop_high": list(CROP_HIGH), "dropped": list(DROP_ACTORS),
                            "frame": "world"} if self.images else None,
            "keys": {
                "state": "ManiSkill obs_mode=state flat vector",
                "env_state": "ManiSkill get_state() simulator state",
                "action": "(8,) float32 pd_joint_pos targets: 7 joints + gripper (1 open, -1 closed)",
                "point_cloud": f"({self.n_points}, {6 if self.colors else 3}) float32 xyz + rgb"
                if self.images else None,
                "agent_pos": "qpos, qvel, then the task's extra observations" if self.images else None,
            },
        }


class PickCubeDemoTask(ManiSkillDemoTask):
    task = "pickcube"


class StackCubeDemoTask(ManiSkillDemoTask):
    task = "stackcube"


class PegInsertionSideDemoTask(ManiSkillDemoTask):
    task = "peginsertionside"
