"""Robomimic's robosuite tasks: ``lift``, ``can``, ``square``, ``transport``, ``toolhang``.

Panda arm(s) under the BASIC composite controller (OSC pose deltas, :mod:`difftop.envs.robosuite`),
robomimic's evaluation horizons (400 steps; 700 for Transport and ToolHang) and cameras.

- ``obs=state``: ``{"state": float32}``, robomimic's low-dim keys concatenated in this order:
  ``robot0_eef_pos`` (3), ``robot0_eef_quat`` (4), ``robot0_gripper_qpos`` (2) (and ``robot1_*``
  for Transport), then ``object`` (robosuite's ``object-state``).
- ``obs=image``: ``{"state": the proprio keys only, "<camera>_image": (3, S, S) uint8}``, S = 84;
  cameras ``agentview`` + ``robot0_eye_in_hand`` (ToolHang: ``sideview``, as robomimic's ToolHang
  images; Transport: ``shouldercamera0/1`` + both wrists).

Why one ``state`` vector rather than the separate keys: a robomimic file (difftop's or an official
one) is trained with ``obs_keys=[robot0_eef_pos, robot0_eef_quat, ...]``, which the loader
concatenates into ``state`` (:mod:`difftop.data.dataset`); rollouts then give the policy the same
keys. Demos written by ``difftop demos`` keep robomimic's separate keys in the file and
:func:`_derive` concatenates them when ``obs_keys`` is not given. :data:`STATE_KEYS` lists the
order for ``obs_keys``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from difftop.tasks.base import Task

__all__ = ["SPECS", "STATE_KEYS", "LIFT", "CAN", "SQUARE", "TRANSPORT", "TOOLHANG"]


@dataclass(frozen=True)
class RobomimicSpec:
    """What differs between the five tasks."""

    task: str
    env_name: str
    robots: tuple[str, ...]
    cameras: tuple[str, ...]
    horizon: int
    env_configuration: str | None = None

    @property
    def proprio_keys(self) -> tuple[str, ...]:
        return tuple(f"robot{i}_{k}" for i in range(len(self.robots))
                     for k in ("eef_pos", "eef_quat", "gripper_qpos"))

    def state_keys(self, obs_type: str) -> tuple[str, ...]:
        return (*self.proprio_keys, "object") if obs_type == "state" else self.proprio_keys

    @property
    def image_keys(self) -> tuple[str, ...]:
        return tuple(f"{c}_image" for c in self.cameras)

    def make_env(self, obs_type: str, max_steps: int, image_size: int | None = None, **kwargs: Any) -> Any:
        from difftop.envs.robosuite import RobosuiteEnv

        return RobosuiteEnv(self.env_name, robots=self.robots,
                            cameras=self.cameras if obs_type == "image" else (),
                            image_size=image_size or 84, max_steps=max_steps,
                            env_configuration=self.env_configuration, **kwargs)

    def env_obs(self, obs: dict[str, np.ndarray], obs_type: str) -> dict[str, np.ndarray]:
        low = {**obs, "object": obs["object-state"]} if "object-state" in obs else obs
        out = {"state": np.concatenate([np.asarray(low[k], np.float32).reshape(-1)
                                        for k in self.state_keys(obs_type)])}
        if obs_type == "image":
            out.update({k: obs[k] for k in self.image_keys})
        return out

    def derive(self, data: Any, obs_type: str) -> None:
        keys = self.state_keys(obs_type)
        if "state" not in data.data and all(k in data.data for k in keys):
            data.data["state"] = np.concatenate(
                [np.asarray(data[k], np.float32).reshape(len(data[k]), -1) for k in keys], axis=1)


SPECS: dict[str, RobomimicSpec] = {
    "lift": RobomimicSpec("lift", "Lift", ("Panda",), ("agentview", "robot0_eye_in_hand"), 400),
    "can": RobomimicSpec("can", "PickPlaceCan", ("Panda",), ("agentview", "robot0_eye_in_hand"), 400),
    "square": RobomimicSpec("square", "NutAssemblySquare", ("Panda",),
                            ("agentview", "robot0_eye_in_hand"), 400),
    "transport": RobomimicSpec(
        "transport", "TwoArmTransport", ("Panda", "Panda"),
        ("shouldercamera0", "shouldercamera1", "robot0_eye_in_hand", "robot1_eye_in_hand"), 700, "opposed"),
    "toolhang": RobomimicSpec("toolhang", "ToolHang", ("Panda",), ("sideview", "robot0_eye_in_hand"), 700),
}

#: the ``obs_keys`` that give each task's ``state`` from a robomimic file, in order
STATE_KEYS = {name: {t: s.state_keys(t) for t in ("state", "image")} for name, s in SPECS.items()}

#: the tasks' scripted experts (results/il/robomimic-images/experts.md gives their success rates)
_EXPERTS = {"lift": "Lift", "can": "Can", "square": "Square", "transport": "Transport",
            "toolhang": "ToolHang"}


def _task(name: str, description: str) -> Task:
    spec = SPECS[name]
    return Task(
        name=name,
        obs_keys={"state": ("state",), "image": ("state", *spec.image_keys)},
        make_env=spec.make_env,
        env_obs=spec.env_obs,
        derive=spec.derive,
        expert=f"difftop.il.experts.robosuite_experts:{_EXPERTS[name]}DemoTask" if name in _EXPERTS else None,
        description=description,
        extra={"horizon": spec.horizon, "env_name": spec.env_name},
    )


LIFT = _task("lift", "robomimic Lift (robosuite 1.5): lift the cube")
CAN = _task("can", "robomimic Can (robosuite PickPlaceCan): move the can into its bin")
SQUARE = _task("square", "robomimic Square (robosuite NutAssemblySquare): fit the square nut on its peg")
TRANSPORT = _task("transport", "robomimic Transport (robosuite TwoArmTransport): a two-arm hammer hand-over")
TOOLHANG = _task("toolhang", "robomimic ToolHang (robosuite): assemble the frame, hang the tool on it")
