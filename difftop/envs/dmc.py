"""DeepMind Control Suite tasks as gymnasium environments, with TD-MPC's conventions.

``make_env("cartpole-swingup", obs="state")`` gives a :class:`gymnasium.Env` whose actions lie in
``[-1, 1]^m`` (float32), whose reward is the sum over ``action_repeat`` simulator steps, and whose
episodes last ``episode_length`` simulator steps (``episode_length // action_repeat`` agent steps;
the last step returns ``truncated=True``). Observations are the flattened dm-control state
(``obs="state"``) or the last ``frame_stack`` rendered frames, channel-first uint8
(``obs="pixels"``). dm_control is imported only when an environment is built, so that importing
this module (and registering the gymnasium ids) stays cheap.

``distractors=k`` (states only) appends k predictable dimensions that the reward ignores (issue 31's
objective-mismatch setting: a model trained to predict spends capacity on them, and Q_s sees them). They
come from ceil(k/2) unit oscillators: oscillator j turns by ``omega_j = 2 pi / (8 + 5 j)`` rad per agent
step from a phase ``phi_j`` drawn uniformly at every seeded reset (from the reset seed, so an episode is
reproducible), and fills dims ``2j, 2j+1`` with ``cos(omega_j t + phi_j), sin(omega_j t + phi_j)`` (t: agent
steps since the reset; an odd k keeps the cosine of the last one). Each pair follows the rotation
``(c, s)_{t+1} = R(omega_j) (c, s)_t``, so the next distractors are a linear function of the current ones.
"""

from __future__ import annotations

import os

# Headless rendering: MuJoCo picks its OpenGL backend when it is first imported, and with no
# display the default (glfw) fails. Must run before dm_control/mujoco are imported anywhere.
os.environ.setdefault("MUJOCO_GL", "egl")

from collections import deque  # noqa: E402
from typing import Any  # noqa: E402

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
from gymnasium import spaces  # noqa: E402

from difftop.errors import UserError  # noqa: E402

#: The DiffTOP paper's 15 DMC tasks (its Fig. 3), in its spelling, plus cartpole-swingup.
DMC_TASKS: tuple[str, ...] = (
    "cartpole-swingup-sparse",
    "cheetah-run",
    "cup-catch",
    "finger-spin",
    "finger-turn-easy",
    "finger-turn-hard",
    "hopper-stand",
    "pendulum-swingup",
    "quadruped-run",
    "quadruped-walk",
    "reacher-easy",
    "reacher-hard",
    "walker-run",
    "walker-stand",
    "walker-walk",
    "cartpole-swingup",
)

#: Action repeat per dm-control domain; every other domain uses DEFAULT_ACTION_REPEAT. cartpole, finger and
#: walker are TD-MPC's (its cfgs/tasks); cheetah, ball_in_cup and pendulum at 2 are DiffTORI's choice (its
#: cfgs/tasks; TD-MPC uses 4 there).
ACTION_REPEAT: dict[str, int] = {
    "cartpole": 8,
    "cheetah": 2,  # DiffTORI's (TD-MPC: 4)
    "ball_in_cup": 2,  # DiffTORI's (TD-MPC: 4)
    "finger": 2,
    "pendulum": 2,  # DiffTORI's (TD-MPC: 4)
    "walker": 2,
}
DEFAULT_ACTION_REPEAT = 4

OBS_TYPES: tuple[str, ...] = ("state", "pixels")

#: mixed with the reset seed for the distractor phases (an RNG stream of their own: dm-control's is untouched)
DISTRACTOR_STREAM = 0xD157


def distractor_frequencies(k: int) -> np.ndarray:
    """The angular frequencies (rad per agent step) of the ceil(k/2) oscillators behind k distractors:
    ``2 pi / (8 + 5 j)``: periods of 8, 13, 18, ... agent steps, distinct, so no two pairs move alike."""
    return 2 * np.pi / (8.0 + 5.0 * np.arange((int(k) + 1) // 2))


def distractor_values(k: int, phase: np.ndarray, t: int) -> np.ndarray:
    """The k distractor dims at agent step ``t`` of an episode whose oscillators start at ``phase``."""
    angle = distractor_frequencies(k) * t + phase
    return np.stack([np.cos(angle), np.sin(angle)], 1).ravel()[:k].astype(np.float32)


ENV_ID_PREFIX = "difftop/dmc-"


def task_key(task: str) -> str:
    """Canonical spelling of a task name: dashes only, ``ball_in_cup`` as ``cup``.

    ``cartpole-swingup_sparse``, ``cartpole-swingup-sparse`` and ``cartpole_swingup_sparse`` all map
    to ``cartpole-swingup-sparse``; ``ball_in_cup-catch`` maps to ``cup-catch``. Pure string work
    (no dm_control import), so plots can match runs to reference curves with it.
    """
    key = task.strip().replace("_", "-")
    if key.startswith("ball-in-cup-"):
        key = "cup-" + key[len("ball-in-cup-") :]
    return key


def default_action_repeat(task: str) -> int:
    """The action repeat for ``task``: 8 cartpole, 2 finger/walker, else 4 (TD-MPC's), but 2 for cheetah, cup
    and pendulum (DiffTORI's choice)."""
    key = task_key(task)
    for domain, repeat in ACTION_REPEAT.items():
        if key.startswith(task_key(domain + "-")):
            return repeat
    return DEFAULT_ACTION_REPEAT


def _suite() -> Any:
    """``dm_control.suite``, imported on first use."""
    from dm_control import suite

    _keep_absl_off_stderr_copies()
    return suite


def _keep_absl_off_stderr_copies() -> None:
    """Stop absl's (unused) log handler from closing a stale copy of ``sys.stderr``.

    dm_control imports absl.logging, whose handler keeps the ``sys.stderr`` of that moment and
    *closes* it at the next logging reconfiguration (Hydra's, at every command) if ``sys.stderr``
    has been swapped since. Under pytest that closes pytest's capture file and aborts the session.
    Pointing the handler at the process's own stderr (which it never closes) avoids that; a log
    file absl opened itself (a named file) is left alone.
    """
    import sys

    from absl import logging as absl_logging

    handler = absl_logging.get_absl_handler().python_handler
    name = getattr(handler.stream, "name", None)
    if sys.__stderr__ is not None and not (isinstance(name, str) and not name.startswith("<")):
        handler.stream = sys.__stderr__


def _suite_tasks() -> dict[str, tuple[str, str]]:
    """Canonical key -> (domain, task) for every task of ``dm_control.suite.ALL_TASKS``."""
    suite = _suite()
    return {task_key(f"{d}-{t}"): (d, t) for d, t in suite.ALL_TASKS}


def resolve_task(task: str) -> tuple[str, str]:
    """dm-control's ``(domain, task)`` for a task name; :class:`UserError` listing valid names if unknown."""
    tasks = _suite_tasks()
    key = task_key(task)
    if key in tasks:
        return tasks[key]
    others = sorted(k for k in tasks if k not in DMC_TASKS)
    raise UserError(
        f"unknown DMC task {task!r}; paper tasks: {', '.join(DMC_TASKS)}; "
        f"other dm_control tasks: {', '.join(others)}"
    )


class DMCEnv(gym.Env):
    """One dm-control task behind the gymnasium API (see the module docstring for the conventions).

    ``info`` holds only ``discount`` (dm-control's, 1.0 for every suite task but lqr). ``terminated``
    is False except where dm-control itself ends the episode before the time limit (lqr only).
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(
        self,
        task: str,
        obs: str = "state",
        seed: int = 0,
        *,
        action_repeat: int | None = None,
        frame_stack: int = 3,
        image_size: int = 84,
        episode_length: int = 1000,
        render_size: int = 256,
        render_mode: str | None = "rgb_array",
        distractors: int = 0,
    ) -> None:
        if isinstance(distractors, bool) or not isinstance(distractors, (int, np.integer)) or distractors < 0:
            raise UserError(f"distractors must be an integer >= 0, got {distractors!r}")
        if distractors and obs != "state":
            raise UserError(f"distractors={distractors} needs obs=state (they extend the state vector)")
        if obs not in OBS_TYPES:
            raise UserError(f"unknown observation type obs={obs!r}; choose one of: {', '.join(OBS_TYPES)}")
        if render_mode not in (None, "rgb_array"):
            raise UserError(f"render_mode must be 'rgb_array' or None, got {render_mode!r}")
        domain, name = resolve_task(task)
        repeat = default_action_repeat(task) if action_repeat is None else int(action_repeat)
        if repeat < 1 or episode_length < repeat:
            raise UserError(
                f"need 1 <= action_repeat <= episode_length, got action_repeat={repeat}, "
                f"episode_length={episode_length}"
            )
        if obs == "pixels" and (frame_stack < 1 or image_size < 1):
            raise UserError(f"need frame_stack >= 1 and image_size >= 1, got {frame_stack}, {image_size}")

        suite = _suite()
        self.task = task_key(task)
        self.domain, self.task_name = domain, name
        self.obs_type = obs
        self.action_repeat = repeat
        self.episode_length = int(episode_length)
        self.max_agent_steps = self.episode_length // repeat
        self.frame_stack, self.image_size, self.render_size = (
            int(frame_stack),
            int(image_size),
            int(render_size),
        )
        self.render_mode = render_mode
        self.camera_id = 2 if domain == "quadruped" else 0
        self._seed = int(seed)
        self._seeded = False
        self.distractors = int(distractors)
        self._phase = np.zeros((self.distractors + 1) // 2)
        self._distractor_rng = np.random.default_rng([self._seed, DISTRACTOR_STREAM])
        # No dm-control time limit: this wrapper counts the steps itself (episode_length).
        self._env = suite.load(domain, name, task_kwargs={"random": self._seed, "time_limit": float("inf")})

        spec = self._env.action_spec()
        self._act_low = np.asarray(spec.minimum, dtype=np.float64) * np.ones(spec.shape)
        self._act_high = np.asarray(spec.maximum, dtype=np.float64) * np.ones(spec.shape)
        self.action_space = spaces.Box(-1.0, 1.0, shape=spec.shape, dtype=np.float32)
        if obs == "state":
            dim = sum(int(np.prod(s.shape)) for s in self._env.observation_spec().values()) + self.distractors
            self.observation_space = spaces.Box(-np.inf, np.inf, shape=(dim,), dtype=np.float32)
        else:
            shape = (3 * self.frame_stack, self.image_size, self.image_size)
            self.observation_space = spaces.Box(0, 255, shape=shape, dtype=np.uint8)
        fps = 1.0 / (self._env.control_timestep() * repeat)
        self.metadata = {**self.metadata, "render_fps": max(1, round(fps))}
        self._frames: deque[np.ndarray] = deque(maxlen=self.frame_stack)
        self._t = 0

    # -- observations --------------------------------------------------------------------------
    def _render(self, size: int) -> np.ndarray:
        return self._env.physics.render(size, size, camera_id=self.camera_id)

    def _state_obs(self, observation: dict[str, Any]) -> np.ndarray:
        parts = [np.asarray(v, dtype=np.float32).ravel() for v in observation.values()]
        if self.distractors:
            parts.append(distractor_values(self.distractors, self._phase, self._t))
        return np.concatenate(parts)

    def _observe(self, observation: dict[str, Any], first: bool) -> np.ndarray:
        if self.obs_type == "state":
            return self._state_obs(observation)
        frame = self._render(self.image_size).transpose(2, 0, 1)  # (3, H, W)
        if first:
            self._frames.extend([frame] * self.frame_stack)
        else:
            self._frames.append(frame)
        return np.concatenate(list(self._frames), axis=0)

    # -- gymnasium API -------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is None and not self._seeded:
            seed = self._seed  # first reset: make_env's seed
        if seed is not None:
            # dm-control draws every initial state from the task's RandomState.
            self._env.task._random = np.random.RandomState(int(seed))
            self._distractor_rng = np.random.default_rng([int(seed), DISTRACTOR_STREAM])
            self._seeded = True
        self._t = 0
        if self.distractors:  # a new phase every episode: from the reset seed, else the stream goes on
            self._phase = self._distractor_rng.uniform(0.0, 2 * np.pi, len(self._phase))
        ts = self._env.reset()
        return self._observe(ts.observation, first=True), {}

    def step(self, action: np.ndarray):
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(self.action_space.shape), -1.0, 1.0)
        a = self._act_low + (a + 1.0) * 0.5 * (self._act_high - self._act_low)
        reward, ended = 0.0, False
        for _ in range(self.action_repeat):
            ts = self._env.step(a)
            reward += float(ts.reward or 0.0)
            if ts.last():  # dm-control's own termination (never within the suite's paper tasks)
                ended = True
                break
        self._t += 1
        obs = self._observe(ts.observation, first=False)
        truncated = not ended and self._t >= self.max_agent_steps
        discount = 1.0 if ts.discount is None else float(ts.discount)
        return obs, reward, ended, truncated, {"discount": discount}

    def render(self) -> np.ndarray | None:
        """An (render_size, render_size, 3) uint8 frame of the current state (for videos)."""
        if self.render_mode is None:
            return None
        return self._render(self.render_size)

    def close(self) -> None:
        env = getattr(self, "_env", None)
        if env is not None:
            env.close()
            env.physics.free()  # releases the rendering contexts now, not at garbage collection
            self._env = None
        super().close()


def make_env(task: str, obs: str = "state", seed: int = 0, **kwargs: Any) -> DMCEnv:
    """A DMC task as a gymnasium env: :class:`DMCEnv` (its keywords: ``action_repeat=None`` uses
    :func:`default_action_repeat`, ``frame_stack``, ``image_size``, ``episode_length``, ...)."""
    return DMCEnv(task, obs, seed, **kwargs)


def register_envs() -> None:
    """Register ``difftop/dmc-<task>-v0`` for each of DMC_TASKS and ``difftop/dmc-v0`` (any ``task=``)."""
    entry = "difftop.envs.dmc:make_env"
    for task in DMC_TASKS:
        env_id = f"{ENV_ID_PREFIX}{task}-v0"
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry, kwargs={"task": task})
    if "difftop/dmc-v0" not in gym.registry:
        gym.register(id="difftop/dmc-v0", entry_point=entry)
