"""Push-T (gym-pusht 0.1.8, pymunk) as a gymnasium environment with difftop's conventions.

``make_pusht(obs="state")`` wraps ``gym_pusht.envs.PushTEnv`` (the entry point of the gymnasium id
``gym_pusht/PushT-v0``):

- **Actions**: float32 ``(2,)``, the target position of the circular agent in the env's own pixel
  coordinates, ``[0, 512]^2`` (clipped to that box). A PD controller (k_p=100, k_v=20, ten 0.01 s
  physics steps per action, 10 Hz) drives the agent toward it; the agent is kinematic, so walls do
  not stop it, but they stop the T block.
- **Observations** (``obs=``): ``"state"`` float32 ``(5,)`` ``[agent_x, agent_y, block_x, block_y,
  block_angle mod 2pi]`` (the layout of diffusion_policy's Push-T state); ``"keypoints"`` float32
  ``(18,)``: the 8 corners of the T's two rectangles (gym-pusht's ``get_keypoints`` order, x/y
  interleaved) then the agent position; ``"pixels"`` uint8 ``(3, S, S)`` channel-first, S =
  ``render_size`` (96); ``"state+pixels"`` a dict ``{"state": (5,), "pixels": (3, S, S)}``.
- **Reward / info**: the env's reward ``clip(coverage / 0.95, 0, 1)``; ``info["coverage"]`` is
  the fraction of the goal T covered by the block, ``info["success"]`` is the env's own success
  test ``coverage > 0.95`` (diffusion_policy's threshold); an episode terminates on success and is
  truncated after ``max_steps`` actions.
- ``render()`` returns an RGB frame ``(video_size, video_size, 3)`` with the last action marked.

The env cannot be deep-copied (pymunk's cffi objects do not pickle), so :func:`get_sim_state` /
:func:`set_sim_state` save and restore the true simulator state instead (see their docs for how
exact that is).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from difftop.errors import UserError

OBS_TYPES: tuple[str, ...] = ("state", "keypoints", "pixels", "state+pixels")
ACTION_LOW, ACTION_HIGH = 0.0, 512.0
SUCCESS_THRESHOLD = 0.95  # gym-pusht's and diffusion_policy's
GOAL_POSE = np.array([256.0, 256.0, np.pi / 4])  # gym-pusht's fixed goal (x, y, angle)
AGENT_RADIUS = 15.0
SIM_STATE_DIM = 10
SIM_STATE_FIELDS: tuple[str, ...] = (
    "agent_x", "agent_y", "agent_vx", "agent_vy",
    "block_x", "block_y", "block_angle", "block_vx", "block_vy", "block_omega",
)  # fmt: skip


def _raw(env: Any) -> Any:
    """The underlying ``gym_pusht`` ``PushTEnv`` of an adapter, a gymnasium wrapper or itself."""
    if isinstance(env, PushT):
        return env.raw
    return getattr(env, "unwrapped", env)


def get_sim_state(env: Any) -> np.ndarray:
    """The true simulator state, float64 ``(10,)`` in the order of :data:`SIM_STATE_FIELDS`.

    The block's angle is not wrapped (pymunk's value) and its position is the body origin (the
    middle of the T's bar top edge), as in the state observation.
    """
    raw = _raw(env)
    a, b = raw.agent, raw.block
    return np.array(
        [*a.position, *a.velocity, *b.position, b.angle, *b.velocity, b.angular_velocity], dtype=np.float64
    )


def set_sim_state(env: Any, state: np.ndarray) -> None:
    """Put ``env`` in the simulator state ``state`` (from :func:`get_sim_state`), in a fresh space.

    The pymunk space is rebuilt, so the result does not depend on the env's history: two envs
    restored from the same state roll out bit-identically under the same actions. A rollout
    from the restored state equals the original env's own continuation exactly when no contact
    was active when the state was saved; otherwise they differ slightly, because pymunk keeps
    the contact solver's warm-start impulses internally and cannot save them.
    """
    s = np.asarray(state, dtype=np.float64).reshape(-1)
    if s.shape[0] != SIM_STATE_DIM or not np.all(np.isfinite(s)):
        raise ValueError(f"a Push-T simulator state is {SIM_STATE_DIM} finite numbers, got {state!r}")
    raw = _raw(env)
    raw._setup()
    raw.agent.position = (float(s[0]), float(s[1]))
    raw.agent.velocity = (float(s[2]), float(s[3]))
    # pymunk rotates a body about its centre of gravity: set the angle before the position so
    # that the body origin lands exactly where it was (gym-pusht's reset does the reverse).
    raw.block.angle = float(s[6])
    raw.block.position = (float(s[4]), float(s[5]))
    raw.block.velocity = (float(s[7]), float(s[8]))
    raw.block.angular_velocity = float(s[9])
    raw._last_action = None
    raw.n_contact_points = 0


def has_contacts(env: Any) -> bool:
    """Whether the block currently touches the agent or a wall (restores are then approximate)."""
    found: list[int] = []
    _raw(env).block.each_arbiter(lambda arb: found.append(1))
    return bool(found)


# The T in its body frame (gym-pusht's add_tee with scale 30, length 4): a 120x30 bar at y in
# [0, 30] and a 30x90 stem at y in [30, 120]; corners in get_keypoints' order (pymunk's
# vertex order). The centre of gravity is (0, 45).
T_CORNERS = np.array(
    [[-60, 0], [60, 0], [60, 30], [-60, 30], [-15, 30], [15, 30], [15, 120], [-15, 120]], dtype=np.float64
)


def block_keypoints(pose: np.ndarray) -> np.ndarray:
    """The 8 T corners ``(..., 8, 2)`` of block poses ``(..., 3)`` = (x, y, angle), vectorised.

    Same corners and order as gym-pusht's ``get_keypoints`` (bar: 4, then stem: 4).
    """
    pose = np.asarray(pose, dtype=np.float64)
    c, s = np.cos(pose[..., 2:3]), np.sin(pose[..., 2:3])
    x = c * T_CORNERS[:, 0] - s * T_CORNERS[:, 1] + pose[..., 0:1]
    y = s * T_CORNERS[:, 0] + c * T_CORNERS[:, 1] + pose[..., 1:2]
    return np.stack([x, y], axis=-1)


class PushT(gym.Env):
    """Push-T with difftop's observation convention (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        obs: str = "state",
        seed: int | None = 0,
        max_steps: int = 300,
        render_size: int = 96,
        video_size: int = 256,
    ) -> None:
        if obs not in OBS_TYPES:
            raise UserError(f"unknown Push-T observation type {obs!r}; valid: {', '.join(OBS_TYPES)}")
        if int(max_steps) < 1 or int(render_size) < 8 or int(video_size) < 8:
            raise UserError(
                f"Push-T needs max_steps >= 1 and image sizes >= 8, got max_steps={max_steps}, "
                f"render_size={render_size}, video_size={video_size}"
            )
        from gym_pusht.envs import PushTEnv  # imports pygame/pymunk: only when an env is built

        self.raw = PushTEnv(
            obs_type="state",
            render_mode="rgb_array",
            observation_width=int(render_size),
            observation_height=int(render_size),
            visualization_width=int(video_size),
            visualization_height=int(video_size),
        )
        self.obs_type = obs
        self.max_steps = int(max_steps)
        self.render_mode = "rgb_array"
        self._seed = seed
        self._first_reset = True
        self.elapsed_steps = 0
        self.action_space = spaces.Box(ACTION_LOW, ACTION_HIGH, shape=(2,), dtype=np.float32)
        size = int(render_size)
        state = spaces.Box(
            np.zeros(5, np.float32), np.array([512, 512, 512, 512, 2 * np.pi], np.float32), dtype=np.float32
        )
        pixels = spaces.Box(0, 255, shape=(3, size, size), dtype=np.uint8)
        if obs == "state":
            self.observation_space = state
        elif obs == "keypoints":
            self.observation_space = spaces.Box(-1024.0, 1536.0, shape=(18,), dtype=np.float32)
        elif obs == "pixels":
            self.observation_space = pixels
        else:
            self.observation_space = spaces.Dict({"state": state, "pixels": pixels})

    # -- observations -------------------------------------------------------------------------
    def state(self) -> np.ndarray:
        """The 5-dim state observation (float32)."""
        r = self.raw
        return np.array([*r.agent.position, *r.block.position, r.block.angle % (2 * np.pi)], dtype=np.float32)

    def keypoints(self) -> np.ndarray:
        """The T's 8 corners ``(8, 2)`` float32 (gym-pusht's order)."""
        return np.asarray(self.raw.get_keypoints(self.raw._block_shapes), dtype=np.float32)

    def pixels(self) -> np.ndarray:
        """The ``render_size`` RGB observation, uint8 channel-first ``(3, S, S)``."""
        return np.ascontiguousarray(self.raw._render(visualize=False).transpose(2, 0, 1))

    def coverage(self) -> float:
        """Fraction of the goal T covered by the block (gym-pusht's ``_get_coverage``)."""
        return float(self.raw._get_coverage())

    def _obs(self) -> Any:
        if self.obs_type == "state":
            return self.state()
        if self.obs_type == "keypoints":
            agent = np.asarray(self.raw.agent.position, dtype=np.float32)
            return np.concatenate([self.keypoints().reshape(-1), agent])
        if self.obs_type == "pixels":
            return self.pixels()
        return {"state": self.state(), "pixels": self.pixels()}

    # -- gymnasium API ------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[Any, dict]:
        """Reset to a random (seeded) start; the first reset without a seed uses the factory's."""
        if seed is None and self._first_reset:
            seed = self._seed
        self._first_reset = False
        super().reset(seed=seed)
        self.raw.reset(seed=seed, options=options)
        self.elapsed_steps = 0
        cov = self.coverage()
        return self._obs(), {"coverage": cov, "success": cov > SUCCESS_THRESHOLD}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(2), ACTION_LOW, ACTION_HIGH)
        _, reward, terminated, _, info = self.raw.step(a)
        self.elapsed_steps += 1
        cov = float(info["coverage"])
        out = {
            "coverage": cov,
            "success": bool(info["is_success"]),
            "n_contacts": info["n_contacts"],
        }
        truncated = self.elapsed_steps >= self.max_steps and not terminated
        return self._obs(), float(reward), bool(terminated), bool(truncated), out

    def render(self) -> np.ndarray:
        """An RGB frame ``(video_size, video_size, 3)`` uint8 with the last action marked."""
        return self.raw.render()

    def close(self) -> None:
        self.raw.close()

    # -- true simulator state -----------------------------------------------------------------
    def get_sim_state(self) -> np.ndarray:
        """See :func:`get_sim_state`."""
        return get_sim_state(self.raw)

    def set_sim_state(self, state: np.ndarray) -> None:
        """See :func:`set_sim_state`; the step counter is left alone."""
        set_sim_state(self.raw, state)


def make_pusht(
    obs: str = "state",
    seed: int | None = 0,
    max_steps: int = 300,
    render_size: int = 96,
    video_size: int = 256,
) -> PushT:
    """A Push-T environment with difftop's conventions (see the module docstring)."""
    return PushT(obs=obs, seed=seed, max_steps=max_steps, render_size=render_size, video_size=video_size)
