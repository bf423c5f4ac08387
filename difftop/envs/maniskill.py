"""ManiSkill3 (mani-skill 3.0.1, sapien 3.0.3) tabletop tasks as gymnasium envs, point clouds on the CPU.

``make_maniskill("pickcube", obs="pointcloud")`` builds ``PickCube-v1`` (also ``stackcube``,
``peginsertionside``) with the CPU physics *and* CPU render backends:

- **Vulkan.** sapien needs a Vulkan device even without a GPU. Debian bookworm's lavapipe (Mesa 22) is
  rejected; Mesa 25's, unpacked by ``tools/fetch_mesa.sh`` into ``.venv/vulkan`` (``make venv`` runs it),
  works. :func:`ensure_vulkan` points ``VK_ICD_FILENAMES`` at its manifest, whose library path is
  absolute, before sapien creates its Vulkan instance: nothing has to be exported by the user, and
  no ``LD_LIBRARY_PATH`` is needed (measured: lavapipe resolves against the system libdrm; the
  unpacked one is preloaded only where the system has none). ``render_backend="cpu"`` also avoids
  ManiSkill 3.0.1's mis-parsing of ``pci:0000:...`` device ids. The first camera picture in a process
  JIT-compiles lavapipe's pipelines: 20-60 s on 2 busy cores, then 0.5-5 s per new env.
- **Actions**: ManiSkill's ``pd_joint_pos`` controller (7 joint targets + gripper, 8-dim), the motion
  planner's control mode, so demonstrations are the planner's own actions. ``actions="delta"`` (what the
  tasks use) takes each arm target *relative to the current joint positions* (``target - qpos``; the
  gripper stays absolute) and adds ``qpos`` back before the controller sees it, so a demonstration
  converted with :func:`delta_actions` replays exactly. Why: the planner's targets move 0.005-0.03 rad per
  step while they span 0.06-0.35 rad over the demos (per-joint std), so a policy predicting absolute
  targets must be accurate to a few percent of its output range just to move the right way, and BC
  on PickCube's absolute targets (100 demos, 3 runs) drifted from the second step on and never succeeded.
- **Observations** (``obs=``): ``"pointcloud"`` a dict ``{"point_cloud": (n_points, 6) float32 xyz
  (world frame) + rgb in [0, 1], "agent_pos": (D,) float32}``; the camera's points on the background,
  ground and table are removed by their segmentation ids (they are most of the picture and say
  nothing about the task), the rest is cropped to ``crop_low..crop_high`` and farthest-point sampled.
  ``agent_pos`` is ManiSkill's non-visual observation: joint positions and velocities, then the task's
  ``extra`` entries in its order (TCP pose, the goal position, is-grasped flag, ...; never object
  poses, which only its state modes expose). ``"state"``: ``{"state": (S,)}``, ManiSkill's flat
  privileged state vector (``obs_mode="state"``).
- **Info**: ``success`` (ManiSkill's), at reset too; an episode terminates on success (or the task's
  failure) and is truncated after ``max_steps`` actions.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from difftop.errors import UserError

__all__ = ["ACTION_FRAMES", "ARM_DOF", "ENV_IDS", "ManiSkillEnv", "agent_vector", "delta_actions",
           "ensure_vulkan", "filter_points", "make_maniskill", "vulkan_problem"]

#: difftop name -> ManiSkill3 env id
ENV_IDS: dict[str, str] = {
    "pickcube": "PickCube-v1",
    "stackcube": "StackCube-v1",
    "peginsertionside": "PegInsertionSide-v1",
}
OBS_TYPES = ("pointcloud", "state")
ACTION_FRAMES = ("absolute", "delta")
#: the Panda's arm joints: the first ARM_DOF entries of the action and of qpos (then the gripper)
ARM_DOF = 7
#: actors whose points are removed: they fill most of the camera image and carry no task information
DROP_ACTORS = ("ground", "table-workspace")
#: default crop box (world frame, m): the table top's workspace, a little above the table surface
CROP_LOW = (-0.8, -0.6, -0.005)
CROP_HIGH = (0.6, 0.6, 1.0)
N_POINTS = 1200  # the paper's Table 7
VIDEO_SIZE = 256  # render() frames: ManiSkill's 512 costs ~0.4 s a frame on lavapipe
FIX = "run `make venv` (or `tools/fetch_mesa.sh`) to unpack Mesa 25's CPU Vulkan driver into .venv/vulkan"


def _vulkan_dir() -> Path:
    """Where ``tools/fetch_mesa.sh`` unpacked the driver: ``$DIFFTOP_VULKAN_DIR`` or ``<venv>/vulkan``."""
    return Path(os.environ.get("DIFFTOP_VULKAN_DIR") or Path(sys.prefix) / "vulkan")


def vulkan_problem() -> str | None:
    """Why no Vulkan driver can be used (one line naming the fix), or None when one is there.

    A ``VK_ICD_FILENAMES`` the user set is trusted when its files exist; otherwise the unpacked
    lavapipe is looked for. The system's own ICDs are not trusted: on a CPU-only Debian bookworm the
    one there is Mesa 22's lavapipe, which sapien rejects.
    """
    user = os.environ.get("VK_ICD_FILENAMES")
    if user:
        missing = [p for p in user.split(os.pathsep) if p and not Path(p).is_file()]
        return f"VK_ICD_FILENAMES names missing file(s) {missing}: unset it or {FIX}" if missing else None
    icd = _vulkan_dir() / "lvp_icd.json"
    if icd.is_file():
        return None
    return f"ManiSkill needs a Vulkan driver and none was found ({icd} is missing): {FIX}"


def ensure_vulkan() -> None:
    """Make sapien find the unpacked lavapipe (module docstring); UserError naming the fix when absent.

    Must run before sapien creates its Vulkan instance (the first env): the loader reads
    ``VK_ICD_FILENAMES`` then.
    """
    problem = vulkan_problem()
    if problem:
        raise UserError(problem)
    if os.environ.get("VK_ICD_FILENAMES"):
        return
    root = _vulkan_dir()
    os.environ["VK_ICD_FILENAMES"] = str(root / "lvp_icd.json")
    libdir = root / "libdir"
    if ctypes.util.find_library("drm") is None and libdir.is_file():  # no system libdrm: ours, globally
        ctypes.CDLL(str(Path(libdir.read_text().strip()) / "libdrm.so.2"), mode=ctypes.RTLD_GLOBAL)


def _np(x: Any) -> np.ndarray:
    """A ManiSkill value (a batched torch tensor, batch 1) as a numpy array without the batch axis."""
    x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return x[0] if x.ndim >= 1 and x.shape[0] == 1 else x


def agent_vector(obs: dict) -> np.ndarray:
    """``agent_pos`` of a ManiSkill dict observation: ``agent`` (qpos, qvel) then ``extra``, in order."""
    parts = [np.asarray(_np(v), dtype=np.float32).reshape(-1) for v in obs["agent"].values()]
    parts += [np.asarray(_np(v), dtype=np.float32).reshape(-1) for v in obs.get("extra", {}).values()]
    return np.concatenate(parts)


def filter_points(xyzw: np.ndarray, rgb: np.ndarray | None, seg: np.ndarray, drop_ids: Sequence[int],
                  low: Sequence[float], high: Sequence[float], n: int) -> np.ndarray:
    """``(n, 3 or 6)`` float32 points of one camera cloud: background (``w == 0``) and ``drop_ids``
    segments removed, cropped to ``[low, high]``, farthest-point sampled (rgb scaled to [0, 1]).

    When nothing is left (the camera blocked) the cloud is ``n`` zeros: an episode goes on rather than
    crash, and the policy sees an empty scene at the origin.
    """
    from difftop.envs.pointcloud import crop_points, farthest_point_sample

    seg = np.asarray(seg).reshape(-1)
    keep = (np.asarray(xyzw)[:, 3] > 0) & ~np.isin(seg, np.asarray(list(drop_ids), dtype=seg.dtype))
    pts = np.asarray(xyzw, dtype=np.float32)[keep, :3]
    if rgb is not None:
        pts = np.concatenate([pts, np.asarray(rgb, dtype=np.float32)[keep, :3] / 255.0], axis=1)
    pts = crop_points(pts, low, high)
    if len(pts) == 0:
        return np.zeros((n, 6 if rgb is not None else 3), dtype=np.float32)
    return np.ascontiguousarray(pts[farthest_point_sample(pts, n, seed=0)], dtype=np.float32)


def delta_actions(actions: np.ndarray, qpos: np.ndarray) -> np.ndarray:
    """``pd_joint_pos`` actions ``(T, 8)`` as the ``actions="delta"`` frame: the arm targets minus the joint
    positions ``qpos`` ``(T, >= 7)`` observed before each action (the gripper entry unchanged)."""
    out = np.array(actions, dtype=np.float32, copy=True)
    out[:, :ARM_DOF] -= np.asarray(qpos, dtype=np.float32)[:, :ARM_DOF]
    return out


def make_raw(env_id: str, obs_mode: str, control_mode: str = "pd_joint_pos", **kwargs: Any) -> Any:
    """ManiSkill's own gym env (CPU physics and rendering); UserError naming the fix when Vulkan fails."""
    ensure_vulkan()
    import mani_skill.envs  # noqa: F401  (registers the env ids)

    try:
        return gym.make(env_id, obs_mode=obs_mode, control_mode=control_mode, sim_backend="cpu",
                        render_backend="cpu", **kwargs)
    except RuntimeError as e:
        if "vk" in str(e).lower() or "vulkan" in str(e).lower():
            raise UserError(f"ManiSkill could not create a Vulkan renderer ({e}): {FIX}") from e
        raise


class ManiSkillEnv(gym.Env):
    """One ManiSkill3 task with difftop's conventions (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, task: str, obs: str = "pointcloud", max_steps: int = 200, n_points: int = N_POINTS,
                 colors: bool = True, crop_low: Sequence[float] = CROP_LOW,
                 crop_high: Sequence[float] = CROP_HIGH, drop_actors: Sequence[str] = DROP_ACTORS,
                 control_mode: str = "pd_joint_pos", render: bool = True, actions: str = "absolute"):
        if actions not in ACTION_FRAMES:
            raise UserError(f"unknown ManiSkill action frame {actions!r}; choose one of: "
                            f"{', '.join(ACTION_FRAMES)}")
        if actions == "delta" and control_mode != "pd_joint_pos":
            raise UserError(f"actions=delta is relative to pd_joint_pos targets, not to {control_mode!r}")
        if task not in ENV_IDS:
            raise UserError(f"unknown ManiSkill task {task!r}; choose one of: {', '.join(ENV_IDS)}")
        if obs not in OBS_TYPES:
            raise UserError(f"unknown ManiSkill obs {obs!r}; choose one of: {', '.join(OBS_TYPES)}")
        if int(max_steps) < 1 or int(n_points) < 1:
            raise UserError(f"max_steps and n_points must be >= 1, got {max_steps} and {n_points}")
        self.task, self.obs_type, self.max_steps, self.n_points = task, obs, int(max_steps), int(n_points)
        self.colors, self.crop_low, self.crop_high = bool(colors), tuple(crop_low), tuple(crop_high)
        size = {"width": VIDEO_SIZE, "height": VIDEO_SIZE}
        video = {"render_mode": "rgb_array", "human_render_camera_configs": size}
        self.raw = make_raw(ENV_IDS[task], obs, control_mode, **(video if render else {}))
        base = self.raw.unwrapped
        self.drop_ids = sorted(i for i, a in base.segmentation_id_map.items() if a.name in set(drop_actors))
        low, high = self.raw.action_space.low, self.raw.action_space.high
        self.frame, self._limits = actions, (low.astype(np.float32), high.astype(np.float32))
        if actions == "delta":  # an arm target anywhere in the joint range, from anywhere in it
            span = (high - low).astype(np.float32)
            low = np.concatenate([-span[:ARM_DOF], low[ARM_DOF:]])
            high = np.concatenate([span[:ARM_DOF], high[ARM_DOF:]])
        self.action_space = spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)
        self._qpos = np.zeros(ARM_DOF, dtype=np.float32)
        probe, _ = self.raw.reset(seed=0)
        first = self._obs(probe)
        if obs == "state":
            self.observation_space = spaces.Dict({"state": spaces.Box(-np.inf, np.inf, first["state"].shape)})
        else:
            self.observation_space = spaces.Dict({
                "point_cloud": spaces.Box(-np.inf, np.inf, first["point_cloud"].shape),
                "agent_pos": spaces.Box(-np.inf, np.inf, first["agent_pos"].shape),
            })
        self._t = 0

    def _obs(self, raw_obs: Any) -> dict[str, np.ndarray]:
        qpos = raw_obs["agent"]["qpos"] if isinstance(raw_obs, dict) else raw_obs  # state: qpos leads it
        self._qpos = np.asarray(_np(qpos), dtype=np.float32).reshape(-1)[:ARM_DOF].copy()
        if self.obs_type == "state":
            return {"state": np.asarray(_np(raw_obs), dtype=np.float32)}
        pc = raw_obs["pointcloud"]
        rgb = _np(pc["rgb"]) if self.colors else None
        points = filter_points(_np(pc["xyzw"]), rgb, _np(pc["segmentation"]), self.drop_ids,
                               self.crop_low, self.crop_high, self.n_points)
        return {"point_cloud": points, "agent_pos": agent_vector(raw_obs)}

    @staticmethod
    def _info(info: dict) -> dict[str, Any]:
        out = {k: (_np(v).item() if np.size(_np(v)) == 1 else v) for k, v in info.items()}
        out["success"] = bool(out.get("success", False))
        return out

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        raw_obs, info = self.raw.reset(seed=seed, options=options)
        self._t = 0
        return self._obs(raw_obs), self._info(info)

    def step(self, action: np.ndarray):
        a = np.asarray(action, dtype=np.float32).reshape(self.action_space.shape).copy()
        if self.frame == "delta":
            a[:ARM_DOF] += self._qpos
        a = np.clip(a, *self._limits)
        raw_obs, reward, terminated, _, info = self.raw.step(a)
        self._t += 1
        truncated = self._t >= self.max_steps
        return self._obs(raw_obs), float(_np(reward)), bool(_np(terminated)), truncated, self._info(info)

    def get_state(self) -> np.ndarray:
        """ManiSkill's flat simulator state (actor and articulation poses, velocities, qpos)."""
        return np.asarray(_np(self.raw.unwrapped.get_state()), dtype=np.float32)

    def render(self) -> np.ndarray | None:
        frame = self.raw.render()
        return None if frame is None else np.asarray(_np(frame), dtype=np.uint8)

    def close(self) -> None:
        self.raw.close()


def make_maniskill(task: str, obs: str = "pointcloud", max_steps: int = 200, **kwargs: Any) -> ManiSkillEnv:
    """:class:`ManiSkillEnv` of ``task`` (a key of :data:`ENV_IDS`); ``kwargs`` as its constructor."""
    return ManiSkillEnv(task, obs, max_steps, **kwargs)
