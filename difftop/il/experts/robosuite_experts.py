"""Scripted experts for Robomimic's robosuite tasks, on privileged simulator state.

robosuite ships no experts and the official datasets cannot be downloaded here, so demonstrations
come from waypoint/servo controllers that read object and gripper poses from the simulator:

- each expert is a generator of OSC-pose delta actions (:class:`Arm.servo` turns a world-frame
  target pose into the controller's base-frame deltas), a sequence of phases (approach, descend,
  grasp, carry, align, place, release) that end on reaching their target or on a step budget;
- per-episode randomness (drawn from the episode seed only): speed, hover heights, small grasp
  offsets and gripper hold times, so demos are not identical;
- :class:`RobosuiteDemoTask` rolls an expert out, records robomimic's keys per step and keeps the
  attempt only if the task's own success test passes before ``max_steps``.

Tasks: Lift, Can (pick and place in its bin), Square (grasp the nut's handle, turn it square to the
peg, lower it over the peg, release). Transport and ToolHang: see their classes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from difftop.errors import UserError
from difftop.il.experts import Rollout

__all__ = ["Arm", "RobosuiteDemoTask", "LiftDemoTask", "CanDemoTask", "SquareDemoTask",
           "TransportDemoTask", "ToolHangDemoTask", "EXPERTS"]

OPEN, CLOSE = -1.0, 1.0
POS_SCALE, ROT_SCALE = 0.05, 0.5  # OSC_POSE output_max: metres / radians per unit action


def rot_z(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def axis_angle(r: np.ndarray) -> np.ndarray:
    """The rotation vector of rotation matrix ``r`` (log map)."""
    cos = np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos)
    if angle < 1e-6:
        return np.zeros(3)
    w = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    if np.pi - angle < 1e-3:  # near pi: the axis from the symmetric part
        axis = np.sqrt(np.maximum((np.diag(r) + 1.0) / 2.0, 0.0))
        axis *= np.sign(w + (w == 0))
        return axis / max(np.linalg.norm(axis), 1e-9) * angle
    return w / (2.0 * np.sin(angle)) * angle


def top_down(yaw: float) -> np.ndarray:
    """A gripper pointing straight down with its fingers closing along world direction ``yaw``."""
    x = np.array([np.cos(yaw), np.sin(yaw), 0.0])
    z = np.array([0.0, 0.0, -1.0])
    return np.stack([x, np.cross(z, x), z], axis=1)


def wrap(angle: float, period: float = 2 * np.pi) -> float:
    """``angle`` wrapped into ``[-period/2, period/2)``."""
    return (angle + period / 2) % period - period / 2


def yaw_of(mat: np.ndarray) -> float:
    return float(np.arctan2(mat[1, 0], mat[0, 0]))


class Arm:
    """One Panda of a :class:`~difftop.envs.robosuite.RobosuiteEnv`: its end effector's world pose
    and the OSC-pose action (7,) that servos it toward a target pose."""

    def __init__(self, env: Any, index: int = 0) -> None:
        self.sim = env.env.sim
        robot = env.env.robots[index]
        self.site = robot.eef_site_id["right"]
        self.base = self.sim.model.body_name2id(robot.robot_model.root_body)
        fingers = [n for n in (self.sim.model.body_id2name(i) for i in range(self.sim.model.nbody))
                   if n.startswith(f"gripper{index}_right_") and n.endswith(("leftfinger", "rightfinger"))]
        self.fingers = sorted(self.sim.model.body_name2id(n) for n in fingers)

    @property
    def pos(self) -> np.ndarray:
        return self.sim.data.site_xpos[self.site].copy()

    @property
    def mat(self) -> np.ndarray:
        return self.sim.data.site_xmat[self.site].reshape(3, 3).copy()

    @property
    def base_mat(self) -> np.ndarray:
        return self.sim.data.body_xmat[self.base].reshape(3, 3)

    @property
    def opening(self) -> float:
        """Distance between the two finger bodies (m)."""
        a, b = (self.sim.data.body_xpos[i] for i in self.fingers)
        return float(np.linalg.norm(a - b))

    def servo(self, pos: np.ndarray, mat: np.ndarray | None, grip: float, speed: float = 1.0) -> np.ndarray:
        """Proportional step toward (``pos``, ``mat``) in world coordinates, capped at ``speed``."""
        rb = self.base_mat
        d = rb.T @ (np.asarray(pos) - self.pos) / POS_SCALE
        n = np.linalg.norm(d)
        if n > speed:
            d *= speed / n
        w = np.zeros(3)
        if mat is not None:
            w = rb.T @ axis_angle(np.asarray(mat) @ self.mat.T) / ROT_SCALE
            nw = np.linalg.norm(w)
            if nw > speed:
                w *= speed / nw
        return np.concatenate([d, w, [grip]])

    def error(self, pos: np.ndarray, mat: np.ndarray | None) -> tuple[float, float]:
        """(position error m, orientation error rad) to a target pose."""
        ang = 0.0 if mat is None else float(np.linalg.norm(axis_angle(np.asarray(mat) @ self.mat.T)))
        return float(np.linalg.norm(np.asarray(pos) - self.pos)), ang


Target = Callable[[], tuple[np.ndarray, np.ndarray | None]]


class Script:
    """Phase helpers shared by the experts: each yields actions of the whole robot set (one arm's
    7-D block per arm; the other arms hold still with their gripper as last commanded)."""

    def __init__(self, env: Any, rng: np.random.Generator) -> None:
        self.env, self.rng = env, rng
        self.arms = [Arm(env, i) for i in range(len(env.env.robots))]
        self.grip = [OPEN] * len(self.arms)
        self.speed = float(rng.uniform(0.6, 1.0))

    def _full(self, i: int, a: np.ndarray) -> np.ndarray:
        out = []
        for j in range(len(self.arms)):
            out.append(a if j == i else np.r_[np.zeros(6), self.grip[j]])
        return np.concatenate(out)

    def move(self, target: Target, grip: float, tol: float = 0.01, ang_tol: float = 0.08, steps: int = 80,
             speed: float | None = None, arm: int = 0,
             until: Callable[[], bool] | None = None) -> Iterator[np.ndarray]:
        """Servo ``arm`` to ``target()`` (re-read every step) until within tolerance, ``until()`` or
        ``steps``."""
        self.grip[arm] = grip
        v = self.speed if speed is None else speed
        for _ in range(steps):
            pos, mat = target()
            e_pos, e_ang = self.arms[arm].error(pos, mat)
            if (e_pos < tol and e_ang < ang_tol) or (until is not None and until()):
                return
            yield self._full(arm, self.arms[arm].servo(pos, mat, grip, v))

    def hold(self, grip: float, steps: int, arm: int = 0) -> Iterator[np.ndarray]:
        """Keep ``arm`` where it is for ``steps`` steps with the gripper at ``grip`` (grasp, release)."""
        self.grip[arm] = grip
        pos, mat = self.arms[arm].pos, self.arms[arm].mat
        for _ in range(steps):
            yield self._full(arm, self.arms[arm].servo(pos, mat, grip, self.speed))

    def hold_steps(self) -> int:
        return int(self.rng.integers(6, 12))


# -- experts ---------------------------------------------------------------------------------------
def _body(env: Any, body_id: int) -> tuple[np.ndarray, np.ndarray]:
    d = env.env.sim.data
    return d.body_xpos[body_id].copy(), d.body_xmat[body_id].reshape(3, 3).copy()


def _grasp_yaw(current: float, axis_yaw: float, period: float) -> float:
    """The yaw equivalent to ``axis_yaw`` (modulo ``period``) nearest the gripper's ``current`` yaw."""
    return current + wrap(axis_yaw - current, period)


def lift_expert(env: Any, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Top-down grasp of the cube with the fingers square to a face, then lift 10-15 cm."""
    s = Script(env, rng)
    arm, cube = s.arms[0], env.env.cube_body_id
    pos0, mat0 = _body(env, cube)
    yaw = _grasp_yaw(yaw_of(arm.mat), yaw_of(mat0), np.pi / 2)
    ori = top_down(yaw)
    off = np.r_[rng.uniform(-0.004, 0.004, 2), 0.0]
    hover = rng.uniform(0.06, 0.1)
    yield from s.move(lambda: (_body(env, cube)[0] + off + [0, 0, hover], ori), OPEN, tol=0.015, ang_tol=0.1)
    yield from s.move(lambda: (_body(env, cube)[0] + off + [0, 0, -0.005], ori), OPEN, tol=0.006, steps=60,
                      speed=0.5 * s.speed)
    yield from s.hold(CLOSE, s.hold_steps())
    top = arm.pos + [0, 0, rng.uniform(0.10, 0.15)]
    yield from s.move(lambda: (top, ori), CLOSE, steps=80)
    yield from s.hold(CLOSE, 20)


def can_expert(env: Any, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Top-down grasp of the can, carry it high over its target bin, lower it and let go."""
    e = env.env
    s = Script(env, rng)
    arm = s.arms[0]
    can = e.obj_body_id["Can"]
    goal = e.target_bin_placements[e.object_to_id["can"]].copy()
    ori = top_down(yaw_of(arm.mat))
    off = np.r_[rng.uniform(-0.004, 0.004, 2), rng.uniform(0.0, 0.01)]
    hover = rng.uniform(0.08, 0.12)
    yield from s.move(lambda: (_body(env, can)[0] + off + [0, 0, hover], ori), OPEN, tol=0.015)
    yield from s.move(lambda: (_body(env, can)[0] + off, ori), OPEN, tol=0.006, steps=60, speed=0.5 * s.speed)
    yield from s.hold(CLOSE, s.hold_steps())
    # the bin's far corner is at the edge of the Panda's reach: drop in its near part instead
    lo = np.array([e.bin2_pos[0], e.bin2_pos[1]])  # the can's quadrant starts here (robosuite not_in_bin)
    assert np.all(goal[:2] > lo)
    drop = lo + rng.uniform([0.05, 0.05], [0.1, 0.1])
    carry = goal[2] + rng.uniform(0.17, 0.22)
    yield from s.move(lambda: (np.r_[arm.pos[:2], carry], ori), CLOSE, tol=0.02, steps=60)
    above = np.r_[drop, carry]
    yield from s.move(lambda: (above, ori), CLOSE, tol=0.02, steps=100)
    low = np.r_[drop, goal[2] + rng.uniform(0.09, 0.12)]
    yield from s.move(lambda: (low, ori), CLOSE, tol=0.02, steps=50)
    yield from s.hold(OPEN, s.hold_steps())
    yield from s.move(lambda: (low + [0, 0, 0.12], ori), OPEN, tol=0.015, steps=60)
    yield from s.hold(OPEN, 20)


def square_expert(env: Any, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Grasp the square nut's handle across it, lift, turn the nut square to the peg (modulo 90
    degrees) while carrying it above the peg, lower it over the peg, release, back off."""
    e = env.env
    s = Script(env, rng)
    arm = s.arms[0]
    nut_id = e.obj_body_id[e.nuts[0].name]
    handle = e.object_site_ids[0]
    peg = e.sim.data.body_xpos[e.peg1_body_id].copy()

    def handle_pos() -> np.ndarray:
        return e.sim.data.site_xpos[handle].copy()

    nut_pos, nut_mat = _body(env, nut_id)
    along = handle_pos()[:2] - nut_pos[:2]
    across = np.arctan2(along[1], along[0]) + np.pi / 2  # fingers close across the handle
    ori = top_down(_grasp_yaw(yaw_of(arm.mat), across, np.pi))
    inward = rng.uniform(-0.01, 0.004)  # along the handle, toward the nut (negative) or out
    off = np.r_[along / np.linalg.norm(along) * inward, 0.0]
    hover = rng.uniform(0.06, 0.09)
    yield from s.move(lambda: (handle_pos() + off + [0, 0, hover], ori), OPEN, tol=0.012, ang_tol=0.08)
    yield from s.move(lambda: (handle_pos() + off + [0, 0, -0.005], ori), OPEN, tol=0.01, steps=40,
                      speed=0.5 * s.speed)
    yield from s.hold(CLOSE, s.hold_steps())
    lift_z = peg[2] + rng.uniform(0.17, 0.2)
    yield from s.move(lambda: (np.r_[arm.pos[:2], lift_z], None), CLOSE, tol=0.02, steps=50)

    def carried(z: float, jitter: np.ndarray) -> Target:
        """The gripper pose that puts the nut's centre at (peg + jitter, z), square to the peg."""

        def target() -> tuple[np.ndarray, np.ndarray]:
            p_nut, r_nut = _body(env, nut_id)
            turn = rot_z(wrap(-yaw_of(r_nut), np.pi / 2))  # the peg is axis-aligned
            p_eef, r_eef = arm.pos, arm.mat
            goal_nut = np.r_[peg[:2] + jitter, z]
            return goal_nut - turn @ (p_nut - p_eef), turn @ r_eef

        return target

    jitter = rng.uniform(-0.002, 0.002, 2)
    yield from s.move(carried(lift_z, jitter), CLOSE, tol=0.006, ang_tol=0.03, steps=150)
    yield from s.move(carried(peg[2] + 0.13, jitter), CLOSE, tol=0.004, ang_tol=0.03, steps=60,
                      speed=0.5 * s.speed)
    seated = e.table_offset[2] + 0.04  # robosuite's on_peg wants the nut below table + 0.05
    yield from s.move(carried(peg[2] - 0.02, jitter), CLOSE, tol=0.004, ang_tol=0.05, steps=60,
                      speed=0.4 * s.speed, until=lambda: e.sim.data.body_xpos[nut_id][2] < seated)
    yield from s.hold(OPEN, s.hold_steps())
    up = arm.pos + [0, 0, 0.12]
    yield from s.move(lambda: (up, None), OPEN, tol=0.015, steps=60)
    yield from s.hold(OPEN, 10)


# -- demo tasks ------------------------------------------------------------------------------------
class RobosuiteDemoTask:
    """Roll a scripted expert out from ``reset(seed)`` and record robomimic's keys per step.

    Per step (the observation before the action): ``robot<i>_eef_pos``, ``robot<i>_eef_quat``,
    ``robot<i>_gripper_qpos``, ``object``, ``<camera>_image`` (with ``images``), ``action``,
    ``states`` (MuJoCo's flattened state, for replay), ``rewards`` and ``dones`` (robosuite's
    sparse reward after the action; 1 on the last step). The episode ends at the first success;
    an attempt without one within ``max_steps`` (default: the task's evaluation horizon) fails.
    The expert's randomness comes from the episode seed only, so results do not depend on the
    order seeds are tried in or on the worker that runs them.
    """

    name = ""
    expert: Callable[[Any, np.random.Generator], Iterator[np.ndarray]]

    def __init__(self, max_steps: int | None = None, images: bool = True, image_size: int | None = None,
                 cameras: list[str] | None = None) -> None:
        from difftop.tasks.robomimic import SPECS, RobomimicSpec

        spec = SPECS[self.name]
        if cameras is not None:
            if isinstance(cameras, str) or not cameras:
                raise UserError(f"cameras must be a non-empty list of camera names, got {cameras!r}")
            spec = RobomimicSpec(spec.task, spec.env_name, spec.robots, tuple(str(c) for c in cameras),
                                 spec.horizon, spec.env_configuration)
        self.spec = spec
        self.max_steps = int(max_steps) if max_steps is not None else spec.horizon
        if self.max_steps < 1:
            raise UserError(f"max_steps must be >= 1, got {max_steps}")
        self.images = bool(images)
        self.image_size = int(image_size) if image_size is not None else 84
        self.obs_type = "image" if self.images else "state"
        self.env = spec.make_env(self.obs_type, self.max_steps, self.image_size)
        self.low_dim = (*spec.proprio_keys, "object")

    def rollout(self, seed: int) -> Rollout:
        env = self.env
        rng = np.random.default_rng([int(seed), 29])
        obs, info = env.reset(seed=int(seed))
        actions = type(self).expert(env, rng)
        rec: dict[str, list] = {k: [] for k in (*self.low_dim, "action", "states", "rewards", "dones")}
        if self.images:
            rec.update({k: [] for k in self.spec.image_keys})
        success = False
        for _ in range(self.max_steps):
            a = next(actions, None)
            if a is None:
                break
            obs = {**obs, "object": obs["object-state"]}
            for k in self.low_dim:
                rec[k].append(np.asarray(obs[k], np.float64))
            if self.images:
                for k in self.spec.image_keys:
                    rec[k].append(obs[k])
            rec["states"].append(env.get_state())
            rec["action"].append(np.asarray(a, np.float32))
            obs, reward, _, _, info = env.step(a)
            rec["rewards"].append(float(reward))
            success = bool(info["success"])
            rec["dones"].append(int(success))
            if success:
                break
        if not rec["action"]:
            return Rollout({}, False)
        rec["dones"][-1] = 1
        steps = {k: np.stack(v) if k not in ("rewards", "dones") else np.asarray(v) for k, v in rec.items()}
        steps["rewards"] = steps["rewards"].astype(np.float64)
        steps["dones"] = steps["dones"].astype(np.int64)
        return Rollout(steps, success, {"episode_length": float(len(rec["action"]))})

    def env_args(self) -> dict[str, Any]:
        """robomimic's ``data.attrs["env_args"]``: enough to rebuild the env with robosuite."""
        kw = dict(self.env.env_kwargs)
        kw.update(has_offscreen_renderer=self.images, use_camera_obs=self.images, use_object_obs=True,
                  camera_names=list(self.spec.cameras) if self.images else [], camera_depths=False,
                  camera_heights=self.image_size, camera_widths=self.image_size, render_gpu_device_id=-1)
        kw["robots"] = list(self.spec.robots)
        return {"env_name": self.spec.env_name, "type": 1, "env_kwargs": kw}

    def attrs(self) -> dict[str, Any]:
        return {
            "env": f"robosuite {self.spec.env_name} (robosuite 1.5.2, Panda, BASIC/OSC_POSE)",
            "max_steps": self.max_steps,
            "image_size": self.image_size if self.images else None,
            "cameras": list(self.spec.cameras) if self.images else [],
            "expert": f"{type(self).__name__}: scripted servo on privileged state (robosuite_experts)",
            "env_args": self.env_args(),
            "keys": {
                "robot<i>_eef_pos/_eef_quat/_gripper_qpos, object": "robomimic's low-dim keys",
                "<camera>_image": "(H, W, 3) uint8 RGB, upright" if self.images else None,
                "action": f"({7 * len(self.spec.robots)},) OSC_POSE deltas + gripper in [-1, 1]",
                "states": "MuJoCo flattened [time, qpos, qvel] before the action",
            },
        }


class LiftDemoTask(RobosuiteDemoTask):
    name, expert = "lift", staticmethod(lift_expert)


class CanDemoTask(RobosuiteDemoTask):
    name, expert = "can", staticmethod(can_expert)


class SquareDemoTask(RobosuiteDemoTask):
    name, expert = "square", staticmethod(square_expert)


class TransportDemoTask(RobosuiteDemoTask):
    name = "transport"

    @staticmethod
    def expert(env: Any, rng: np.random.Generator) -> Iterator[np.ndarray]:
        from difftop.il.experts.robosuite_hard import transport_expert

        return transport_expert(env, rng)


class ToolHangDemoTask(RobosuiteDemoTask):
    name = "toolhang"

    @staticmethod
    def expert(env: Any, rng: np.random.Generator) -> Iterator[np.ndarray]:
        from difftop.il.experts.robosuite_hard import toolhang_expert

        return toolhang_expert(env, rng)


#: task name -> demo task class
EXPERTS = {c.name: c for c in (LiftDemoTask, CanDemoTask, SquareDemoTask, TransportDemoTask,
                               ToolHangDemoTask)}
