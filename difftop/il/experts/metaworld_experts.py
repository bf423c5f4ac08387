"""MetaWorld demonstrations from the scripted policies that ship in ``metaworld.policies``.

The task's ``expert`` is ``"difftop.il.experts.metaworld_experts:<name>"``: this module resolves any
attribute that is a MetaWorld task name to a :class:`MetaWorldDemoTask` bound to it (PEP 562), so
one class serves all 50 tasks and worker processes rebuild it from the same spec.

An attempt runs the expert on the state vector from ``reset(seed)`` until its first success (an
episode counts as solved once it succeeds, and evaluation stops there too) or ``max_steps``; failures
are discarded by ``difftop demos``. Each step records the observation before the action: ``state``
(39,), ``agent_pos`` (9,), with ``images=true`` the ``point_cloud`` (512, 3) of the task's camera,
and the ``action`` (4,).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np

from difftop.errors import UserError
from difftop.il.experts import Rollout

__all__ = ["MetaWorldDemoTask"]


class MetaWorldDemoTask:
    """MetaWorld's scripted expert for task ``env_name`` (see the module docstring).

    ``image_size`` is accepted for ``difftop demos``' common options and not used: the clouds come
    from the task's own camera settings, the ones its evaluation rollouts use.
    """

    def __init__(self, env_name: str, max_steps: int = 300, images: bool = True,
                 image_size: int | None = None):
        from difftop.envs.metaworld import make_metaworld, scripted_policy

        if int(max_steps) < 1:
            raise UserError(f"max_steps must be >= 1, got {max_steps}")
        self.name = f"metaworld-{env_name}"
        self.env_name, self.max_steps, self.images = env_name, int(max_steps), bool(images)
        self.env = make_metaworld(env_name, "pointcloud" if self.images else "state", self.max_steps)
        self.policy = scripted_policy(env_name)

    def rollout(self, seed: int) -> Rollout:
        env = self.env
        obs, info = env.reset(seed=int(seed))
        keys = ["state", "agent_pos", *(["point_cloud"] if self.images else []), "action"]
        steps: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        success, t = bool(info["success"]), 0
        while not success and t < self.max_steps:
            with warnings.catch_warnings():  # "Constant(s) may be too high": MetaWorld clips them anyway
                warnings.simplefilter("ignore", UserWarning)
                action = np.asarray(self.policy.get_action(env.state), dtype=np.float32)
            steps["state"].append(env.state.astype(np.float32))
            steps["agent_pos"].append(env.agent_pos())
            if self.images:
                steps["point_cloud"].append(obs["point_cloud"])
            steps["action"].append(np.clip(action, -1.0, 1.0))
            obs, _, _, _, info = env.step(action)
            success, t = bool(info["success"]), t + 1
        if t == 0:  # solved at reset: nothing to learn from, and no steps to store
            return Rollout({}, False)
        return Rollout({k: np.stack(v) for k, v in steps.items()}, success, {"episode_length": float(t)})

    def attrs(self) -> dict[str, Any]:
        p = self.env.points
        return {
            "env": f"metaworld {self.env_name}-v3-goal-observable (metaworld 3.1.1), seeded random resets",
            "max_steps": self.max_steps,
            "image_size": p.size if self.images else None,
            "expert": f"metaworld.policies.ENV_POLICY_MAP['{self.env_name}-v3']",
            "point_cloud": {"camera": p.camera, "camera_pos": list(p.camera_pos or []), "depth_size": p.size,
                            "num_points": p.num_points, "rgb": p.rgb, "crop_low": list(p.crop_low),
                            "crop_high": list(p.crop_high)} if self.images else None,
            "keys": {
                "state": "(39,) float32 MetaWorld goal-observable observation",
                "agent_pos": "(9,) float32 hand, right and left fingertip positions",
                "point_cloud": "(512, 3) float32 world-frame points, farthest-point sampled" if self.images
                else None,
                "action": "(4,) float32 hand delta xyz and gripper, in [-1, 1]",
            },
        }


def __getattr__(name: str) -> Any:
    """``<task name>`` -> a :class:`MetaWorldDemoTask` factory bound to it (unknown: AttributeError)."""
    from difftop.envs.metaworld import metaworld_tasks

    if name.startswith("__") or name not in metaworld_tasks():
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return functools.partial(MetaWorldDemoTask, name)
