"""robosuite 1.5 (Robomimic's tasks) as a gymnasium environment with difftop's conventions.

``RobosuiteEnv("NutAssemblySquare", cameras=("agentview", "robot0_eye_in_hand"))`` wraps
``robosuite.make`` directly: robomimic 0.3.0's own wrapper imports ``mujoco_py`` and cannot run
with robosuite 1.5.

- **Control**: each robot is a Panda under the BASIC composite controller (OSC_POSE, delta
  inputs in the robot's base frame: ``[dx, dy, dz]`` scaled to 5 cm, ``[rx, ry, rz]`` axis-angle
  scaled to 0.5 rad, gripper ``-1`` open / ``+1`` closed), 20 Hz; actions are clipped to
  ``[-1, 1]``. Two-arm tasks concatenate the robots' 7-D actions.
- **Observations**: robosuite's own dict (``robot0_eef_pos``, ``robot0_eef_quat``,
  ``robot0_gripper_qpos``, ``object-state``, ...) plus ``<camera>_image`` per camera, uint8
  channel-first ``(3, S, S)`` and upright (robosuite renders in OpenGL's bottom-up order).
- **Rendering** is ours, not robosuite's camera observables, for two reasons measured on this
  CPU (``shared/notes/environments.md``): offscreen multisampling off, a 1024 shadow map and no
  shadows/reflections make two 84x84 cameras ~4x faster, and these model settings must be in
  place before the GL context is made; and frames once stayed byte-identical between steps, so
  every frame is checked against the previous step's (:meth:`RobosuiteEnv._check_fresh`).
- **Seeding**: the model is built once (``hard_reset=False``) from ``model_seed`` (robosuite draws
  object sizes, e.g. Lift's cube, when it builds the model: a fixed seed makes every instance the
  same scene); ``reset(seed=s)`` reseeds the generator robosuite's object placement and robot
  initialisation noise draw from, in place, so the same seed gives the same initial state whatever
  ran before and in whichever process.
- **State**: :meth:`get_state` / :meth:`set_state` are robomimic's ``states``: MuJoCo's
  flattened ``[time, qpos, qvel]``.
- **Info**: ``success`` (the task's own ``_check_success``) at reset and every step; an
  episode terminates on success (robomimic's evaluation) and is truncated after ``max_steps``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from difftop.errors import UserError

__all__ = ["RobosuiteEnv", "make_robosuite"]

#: offscreen settings that made 84x84 cameras ~4x faster here (environments.md)
FAST_RENDER = {"offsamples": 0, "shadowsize": 1024}
#: a gripper moved this far (m) since the previous frame: not every camera's frame may stay the same
#: (a pixel of an 84x84 agentview frame spans ~1 cm of the table; smaller motions may not show)
FRESH_MOTION = 0.02


def _import_robosuite() -> Any:
    """robosuite, imported headless, without its per-controller warnings on every env built and
    PyOpenGL's shutdown notice (neither says anything about our use)."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    import robosuite

    for name in ("robosuite_logs", "OpenGL"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.ERROR)
        for h in logger.handlers:
            h.setLevel(logging.ERROR)
    return robosuite


class RobosuiteEnv(gym.Env):
    """One robosuite task (see the module docstring). ``cameras`` empty: no renderer is made
    (state observations at full simulator speed); :meth:`render` then makes one on first use."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        env_name: str,
        robots: Sequence[str] = ("Panda",),
        cameras: Sequence[str] = (),
        image_size: int = 84,
        max_steps: int = 400,
        env_configuration: str | None = None,
        fast_render: bool = True,
        render_camera: str = "agentview",
        video_size: int = 256,
        model_seed: int = 0,
        **env_kwargs: Any,
    ) -> None:
        if int(image_size) < 8:
            raise UserError(f"image_size must be >= 8, got {image_size}")
        if int(max_steps) < 1:
            raise UserError(f"max_steps must be >= 1, got {max_steps}")
        suite = _import_robosuite()
        from robosuite import macros
        from robosuite.controllers import load_composite_controller_config

        self.env_name, self.robots = env_name, tuple(robots)
        self.cameras, self.image_size = tuple(cameras), int(image_size)
        self.max_steps, self.fast_render = int(max_steps), bool(fast_render)
        self.render_camera, self.video_size = render_camera, int(video_size)
        controller = load_composite_controller_config(controller="BASIC", robot=self.robots[0])
        kwargs = dict(
            robots=list(self.robots) if len(self.robots) > 1 else self.robots[0],
            controller_configs=controller, has_renderer=False, has_offscreen_renderer=False,
            use_camera_obs=False, ignore_done=True, hard_reset=False, reward_shaping=False,
            control_freq=20, seed=int(model_seed), **env_kwargs,
        )
        if env_configuration is not None:
            kwargs["env_configuration"] = env_configuration
        try:
            self.env = suite.make(env_name, **kwargs)
        except Exception as e:  # robosuite raises plain exceptions for unknown names
            raise UserError(f"robosuite cannot make {env_name!r} ({type(e).__name__}: {e})") from e
        model = self.env.sim.model
        names = [model.camera_id2name(i) for i in range(model.ncam)]
        unknown = [c for c in (*self.cameras, render_camera) if c not in names]
        if unknown:
            raise UserError(f"{env_name} has no camera {unknown[0]!r}; cameras: {', '.join(names)}")
        self._flip = macros.IMAGE_CONVENTION == "opengl"
        self._ctx: Any = None
        self.env_kwargs = {**{k: v for k, v in kwargs.items() if k != "controller_configs"},
                           "controller_configs": controller}
        self._eef_sites = [r.eef_site_id["right"] for r in self.env.robots]
        self._last_frames: dict[str, bytes] = {}
        self._last_eef: np.ndarray | None = None
        self._t = 0
        low, high = self.env.action_spec
        self.action_space = spaces.Box(np.maximum(low, -1.0).astype(np.float32),
                                       np.minimum(high, 1.0).astype(np.float32), dtype=np.float32)
        obs = self._observe(self.env.reset(), check=False)
        self.observation_space = spaces.Dict({
            k: spaces.Box(0, 255, v.shape, np.uint8) if v.dtype == np.uint8
            else spaces.Box(-np.inf, np.inf, v.shape, np.float64) for k, v in obs.items()
        })

    # -- rendering --------------------------------------------------------------------------------
    def _context(self) -> Any:
        """The offscreen render context, made on first use with the fast settings applied first."""
        if self._ctx is None:
            import mujoco
            from robosuite.utils.binding_utils import MjRenderContextOffscreen

            m = self.env.sim.model._model
            if self.fast_render:
                m.vis.quality.offsamples = FAST_RENDER["offsamples"]
                m.vis.quality.shadowsize = FAST_RENDER["shadowsize"]
            self._ctx = MjRenderContextOffscreen(self.env.sim, device_id=-1)
            if self.fast_render:
                self._ctx.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
                self._ctx.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            self._ctx.vopt.geomgroup[0] = 0  # visual meshes only, as robosuite's cameras
            self._ctx.vopt.geomgroup[1] = 1
        return self._ctx

    def _frame(self, camera: str, size: int) -> np.ndarray:
        """``(size, size, 3)`` uint8, upright."""
        self._context().gl_ctx.make_current()
        img = self.env.sim.render(camera_name=camera, width=size, height=size)
        return np.ascontiguousarray(img[::-1] if self._flip else img)

    def _check_fresh(self, frames: dict[str, np.ndarray], eef: np.ndarray) -> None:
        """Guard against the stale-frame glitch: when every camera's frame is byte-identical to the
        previous step's although a gripper moved by :data:`FRESH_MOTION` or more, the frames are
        rendered again; identical twice is an error, never data.

        Why every camera and the grippers only: one camera may rightly not change (an arm moving
        above agentview's field, a wrist camera over the plain table), which a first version that
        watched any body in any camera stopped a long demo run for."""
        if self._last_eef is None or np.abs(eef - self._last_eef).max() < FRESH_MOTION:
            return
        if any(self._last_frames.get(c) != f.tobytes() for c, f in frames.items()):
            return
        frames.update({c: self._frame(c, self.image_size) for c in frames})
        if all(self._last_frames[c] == f.tobytes() for c, f in frames.items()):
            raise RuntimeError(f"{self.env_name}: cameras {', '.join(frames)} gave the same frames twice "
                               "while the gripper moved (stale offscreen buffer)")

    def _observe(self, raw: dict[str, Any], check: bool = True) -> dict[str, np.ndarray]:
        obs = {k: np.asarray(v) for k, v in raw.items()}
        if self.cameras:
            eef = self.env.sim.data.site_xpos[self._eef_sites].copy()
            frames = {c: self._frame(c, self.image_size) for c in self.cameras}
            if check:
                self._check_fresh(frames, eef)
            self._last_frames = {c: f.tobytes() for c, f in frames.items()}
            self._last_eef = eef
            for c, f in frames.items():
                obs[f"{c}_image"] = np.ascontiguousarray(f.transpose(2, 0, 1))
        return obs

    def render(self) -> np.ndarray:
        """An upright RGB frame ``(video_size, video_size, 3)`` of ``render_camera`` (for videos)."""
        return self._frame(self.render_camera, self.video_size)

    # -- gymnasium --------------------------------------------------------------------------------
    def success(self) -> bool:
        return bool(self.env._check_success())

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:  # in place: robosuite's samplers hold this very generator
            self.env.rng.bit_generator.state = np.random.default_rng(int(seed)).bit_generator.state
        self._t = 0
        self._last_frames, self._last_eef = {}, None
        obs = self._observe(self.env.reset(), check=False)
        return obs, {"success": self.success()}

    def step(self, action: np.ndarray):
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0)
        if a.shape != self.action_space.shape:
            raise ValueError(f"{self.env_name}: action shape {a.shape}, expected {self.action_space.shape}")
        raw, reward, _, _ = self.env.step(a)
        self._t += 1
        ok = self.success()
        info = {"success": ok}
        return self._observe(raw), float(reward), ok, self._t >= self.max_steps, info

    def get_state(self) -> np.ndarray:
        """MuJoCo's flattened ``[time, qpos, qvel]`` (robomimic's ``states``)."""
        return np.asarray(self.env.sim.get_state().flatten(), dtype=np.float64)

    def set_state(self, state: np.ndarray) -> None:
        """Restore a :meth:`get_state` vector (replay). As with robomimic's ``reset_to``, the
        gripper's command ramp (robosuite's ``current_action``, saturating within ~5 steps of a
        constant command) is controller state, not simulator state, and is not restored."""
        self.env.sim.set_state_from_flattened(np.asarray(state, dtype=np.float64))
        self.env.sim.forward()

    def observe(self) -> dict[str, np.ndarray]:
        """The observation of the current simulator state (after :meth:`set_state`)."""
        return self._observe(self.env._get_observations(force_update=True), check=False)

    def close(self) -> None:
        self._ctx = None  # the sim owns it and frees it with itself
        if self.env.sim is not None:
            self.env.close()


def make_robosuite(env_name: str, **kwargs: Any) -> RobosuiteEnv:
    """:class:`RobosuiteEnv` (kept as a function so tasks can name it as their factory)."""
    return RobosuiteEnv(env_name, **kwargs)
