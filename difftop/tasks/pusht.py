"""Push-T (gym-pusht): push the T-shaped block onto its target; success at 95% coverage.

- ``obs=state``: ``{"state": (5,)}`` (agent x, y, block x, y, angle);
- ``obs=image``: ``{"img": (3, S, S) uint8, "agent_pos": (2,)}`` (diffusion_policy's image setting;
  ``agent_pos`` is derived from the dataset's ``state`` when the file lacks it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from difftop.tasks.base import Metric, Task


def _make_env(obs_type: str, max_steps: int, image_size: int | None = None) -> Any:
    from difftop.envs.pusht import make_pusht

    env_obs = "state" if obs_type == "state" else "state+pixels"
    return make_pusht(env_obs, seed=None, max_steps=max_steps, render_size=image_size or 96)


def _env_obs(obs: Any, obs_type: str) -> dict[str, np.ndarray]:
    if obs_type == "state":
        return {"state": np.asarray(obs, dtype=np.float32)}
    return {"img": obs["pixels"], "agent_pos": np.asarray(obs["state"][:2], dtype=np.float32)}


def _derive(data: Any, obs_type: str) -> None:
    if obs_type == "image" and "agent_pos" not in data.data:
        data.data["agent_pos"] = np.ascontiguousarray(data["state"][:, :2], dtype=np.float32)


TASK = Task(
    name="pusht",
    obs_keys={"state": ("state",), "image": ("img", "agent_pos")},
    make_env=_make_env,
    env_obs=_env_obs,
    derive=_derive,
    metrics=(Metric("max_coverage", "coverage", "max"),),
    expert="difftop.il.experts.pusht_task:PushTDemoTask",
    description="Push-T (gym-pusht), the paper's imitation benchmark",
)
