"""MetaWorld v3 tasks (metaworld 3.1.1) as gymnasium envs, with state or point-cloud observations.

Why a wrapper of our own: MetaWorld's goal-observable classes freeze the object and goal positions
after construction and ignore ``reset(seed=...)``; its ``render`` gives gymnasium's depth, a raw
z-buffer. Here every ``reset(seed)`` draws a fresh, reproducible layout (``seeded_rand_vec`` on the
env's own RNG), and point clouds come from one ``mujoco.Renderer`` with depth rendering (metric
depth), back-projected with the camera's intrinsics and pose (:mod:`difftop.envs.pointcloud`),
cropped to the workspace without the table top, and farthest-point sampled, as DP3 does.

Observations: ``obs_type="state"`` gives MetaWorld's 39-d vector (hand, gripper, objects, goal);
``obs_type="pointcloud"`` gives ``{"point_cloud": (num_points, 3 or 6), "agent_pos": (9,)}`` (hand
position and both fingertips, DP3's proprio state). ``info["success"]`` is present at reset too; an
episode ends (``terminated``) at its first success, since later steps cannot change the result.

The camera defaults are DP3's (``corner2`` moved to MoDem's position, 512 points, xyz only); the
renderer runs without shadows or multisampling (several times faster, and no depth blended across
edges). Corner cameras are rolled by 180 degrees, so ``render()`` turns its RGB frames upright; the
point cloud needs no flip, it uses the camera's true pose.
"""

from __future__ import annotations

import atexit
import functools
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from difftop.envs.pointcloud import crop_points, depth_to_points, farthest_point_sample
from difftop.errors import UserError

os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering, before mujoco is imported

__all__ = ["MetaWorldEnv", "PointCloudSpec", "make_metaworld", "metaworld_tasks", "scripted_policy"]

OBS_TYPES = ("state", "pointcloud")


@dataclass(frozen=True)
class PointCloudSpec:
    """How the point cloud is made. ``camera_pos`` None keeps the model's camera position.

    The crop keeps the workspace above the table top (z > 5 mm): the table would otherwise take
    most of the sampled points.
    """

    camera: str = "corner2"
    camera_pos: tuple[float, float, float] | None = (0.75, 0.075, 0.7)
    size: int = 84
    num_points: int = 512
    rgb: bool = False
    crop_low: tuple[float, float, float] = (-0.6, 0.25, 0.005)
    crop_high: tuple[float, float, float] = (0.6, 1.1, 0.7)


def metaworld_tasks() -> list[str]:
    """The v3 task names (``assembly``, ``pick-place``, ...), as ``task=metaworld-<name>`` takes them."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return sorted(k.removesuffix("-v3") for k in ALL_V3_ENVIRONMENTS)


def _check_name(name: str) -> None:
    names = metaworld_tasks()
    if name not in names:
        raise UserError(f"unknown MetaWorld task {name!r}; choose one of: {', '.join(names)}")


def scripted_policy(name: str) -> Any:
    """MetaWorld's own scripted expert for task ``name`` (``get_action(state_obs) -> (4,)``)."""
    from metaworld.policies import ENV_POLICY_MAP

    _check_name(name)
    return ENV_POLICY_MAP[f"{name}-v3"]()


def _close_renderer(ref: weakref.ref) -> None:
    renderer = ref()
    if renderer is not None:
        renderer.close()


class MetaWorldEnv(gym.Env):
    """One MetaWorld v3 task (see the module docstring). ``max_steps``: episode length limit."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, name: str, obs_type: str = "state", max_steps: int = 200,
                 points: PointCloudSpec | None = None):
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

        _check_name(name)
        if obs_type not in OBS_TYPES:
            raise UserError(f"unknown MetaWorld obs_type {obs_type!r}; choose one of: {', '.join(OBS_TYPES)}")
        if int(max_steps) < 1:
            raise UserError(f"max_steps must be >= 1, got {max_steps}")
        self.name, self.obs_type, self.max_steps = name, obs_type, int(max_steps)
        self.points = points or PointCloudSpec()
        if self.points.num_points < 1 or self.points.size < 8:
            raise UserError(f"point cloud needs num_points >= 1 and size >= 8, got {self.points}")
        self.env = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{name}-v3-goal-observable"]()
        self.env._freeze_rand_vec = False  # a new layout at every reset ...
        self.env.seeded_rand_vec = True  # ... drawn from the env's RNG, so reset(seed) repeats it
        self.env.max_path_length = self.max_steps + 1  # the limit is ours (MetaWorld raises past its own)
        import mujoco

        model = self.env.model
        self._cam = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, self.points.camera)
        if self._cam < 0:
            cams = [model.camera(i).name for i in range(model.ncam)]
            raise UserError(f"MetaWorld has no camera {self.points.camera!r}; choose one of: "
                            f"{', '.join(cams)}")
        if self.points.camera_pos is not None:
            model.cam_pos[self._cam] = np.asarray(self.points.camera_pos, dtype=np.float64)
        model.vis.quality.shadowsize = 0
        model.vis.quality.offsamples = 0
        self._renderer = None
        self._steps = 0
        self.state = np.zeros(39)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        if obs_type == "state":
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (39,), np.float32)
        else:
            d = 6 if self.points.rgb else 3
            self.observation_space = gym.spaces.Dict({
                "point_cloud": gym.spaces.Box(-np.inf, np.inf, (self.points.num_points, d), np.float32),
                "agent_pos": gym.spaces.Box(-np.inf, np.inf, (9,), np.float32),
            })

    # ---- rendering
    def _render(self, depth: bool) -> np.ndarray:
        import mujoco

        if self._renderer is None:  # one per env, reused; closed in close(), or at exit
            s = self.points.size
            self._renderer = mujoco.Renderer(self.env.model, s, s)
            # registered after mujoco's EGL platform, so it runs before that is torn down (an env never
            # closed would free its context after EGL is gone: errors at exit)
            self._at_exit = functools.partial(_close_renderer, weakref.ref(self._renderer))
            atexit.register(self._at_exit)
        r = self._renderer
        if depth:
            r.enable_depth_rendering()
        else:
            r.disable_depth_rendering()
        r.update_scene(self.env.data, camera=self._cam)
        return r.render()

    def point_cloud(self) -> np.ndarray:
        """The current point cloud ``(num_points, 3 or 6)`` float32, world frame (rgb in [0, 1])."""
        p = self.points
        data = self.env.data
        depth = self._render(depth=True)
        pts = depth_to_points(depth, float(self.env.model.cam_fovy[self._cam]), data.cam_xpos[self._cam],
                              data.cam_xmat[self._cam])
        if p.rgb:
            pts = np.concatenate([pts, self._render(depth=False).reshape(-1, 3) / 255.0], 1)
        pts = crop_points(pts, p.crop_low, p.crop_high)
        if len(pts) == 0:  # nothing in the workspace (a broken camera setting): all points at the crop centre
            centre = (np.asarray(p.crop_low) + np.asarray(p.crop_high)) / 2
            pts = np.concatenate([centre, np.zeros(3 if p.rgb else 0)])[None]
        # a fixed start point: the cloud is a function of the scene alone
        return pts[farthest_point_sample(pts, p.num_points, seed=0)].astype(np.float32)

    def agent_pos(self) -> np.ndarray:
        """Hand position and the two fingertips ``(9,)`` (DP3's MetaWorld proprio state)."""
        e = self.env
        return np.concatenate([e.get_endeff_pos(), e._get_site_pos("rightEndEffector"),
                               e._get_site_pos("leftEndEffector")]).astype(np.float32)

    def render(self) -> np.ndarray:
        """An upright RGB frame ``(size, size, 3)`` uint8 from the point-cloud camera."""
        return np.ascontiguousarray(self._render(depth=False)[::-1, ::-1])

    # ---- gymnasium API
    def _obs(self) -> Any:
        if self.obs_type == "state":
            return self.state.astype(np.float32)
        return {"point_cloud": self.point_cloud(), "agent_pos": self.agent_pos()}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self.env.seed(int(seed))
        self.state, _ = self.env.reset()
        self._steps = 0
        return self._obs(), {"success": False}

    def step(self, action: Sequence[float] | np.ndarray):
        a = np.clip(np.asarray(action, dtype=np.float32).reshape(4), -1.0, 1.0)
        self.state, reward, _, _, info = self.env.step(a)
        self._steps += 1
        success = bool(info.get("success", 0.0))
        info = {**info, "success": success}
        return self._obs(), float(reward), success, self._steps >= self.max_steps, info

    def close(self) -> None:
        if self._renderer is not None:
            atexit.unregister(self._at_exit)
            self._renderer.close()
            self._renderer = None
        self.env.close()


def make_metaworld(name: str, obs_type: str = "state", max_steps: int = 200, **points: Any) -> MetaWorldEnv:
    """A :class:`MetaWorldEnv`; ``points`` are :class:`PointCloudSpec` fields (camera, num_points, ...)."""
    fields = set(PointCloudSpec.__dataclass_fields__)
    unknown = sorted(set(points) - fields)
    if unknown:
        raise UserError(f"unknown point-cloud option(s) {unknown}; valid: {', '.join(sorted(fields))}")
    spec = PointCloudSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in points.items()})
    return MetaWorldEnv(name, obs_type, max_steps, spec)
