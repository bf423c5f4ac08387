"""Rollouts of imitation policies: the tasks' observation conventions and a batched, seeded evaluator.

A task (:data:`TASKS`) says which dataset keys an observation type uses, how to build its
environment and how to turn an environment observation into those keys, so that training
(dataset windows) and acting (env histories) see the same dictionaries. Push-T:

- ``obs=state``: ``{"state": (5,)}`` (agent x, y, block x, y, angle);
- ``obs=image``: ``{"img": (3, S, S) uint8, "agent_pos": (2,)}`` (diffusion_policy's Push-T image
  setting; ``agent_pos`` is derived from the dataset's ``state`` when the file lacks it).

:func:`rollout` runs ``episodes`` seeded episodes ``seed, seed+1, ...`` in lockstep batches (one
``predict_action`` call per decision for the whole batch), keeps an observation history of the
policy's ``obs_horizon`` (padded at the start by repeating the first observation), executes the
``n_action_steps`` actions of each prediction, and reports the success rate and the mean over
episodes of the maximum goal coverage reached, with videos of the first episodes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from difftop.data.episodes import EpisodeData
from difftop.errors import UserError

__all__ = ["TASKS", "TaskSpec", "get_task", "rollout"]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    obs_keys: dict[str, tuple[str, ...]]  # observation type -> dataset keys
    make_env: Callable[..., Any]  # (obs_type, max_steps, image_size) -> env
    env_obs: Callable[[Any, str], dict[str, np.ndarray]]  # (env observation, obs_type) -> keys
    derive: Callable[[EpisodeData, str], None]  # adds derived keys to a dataset in place

    def keys(self, obs_type: str) -> tuple[str, ...]:
        if obs_type not in self.obs_keys:
            raise UserError(f"task {self.name} has no observation type {obs_type!r}; "
                            f"choose one of: {', '.join(self.obs_keys)}")
        return self.obs_keys[obs_type]


def _pusht_env(obs_type: str, max_steps: int, image_size: int | None = None) -> Any:
    from difftop.envs.pusht import make_pusht

    env_obs = "state" if obs_type == "state" else "state+pixels"
    return make_pusht(env_obs, seed=None, max_steps=max_steps, render_size=image_size or 96)


def _pusht_obs(obs: Any, obs_type: str) -> dict[str, np.ndarray]:
    if obs_type == "state":
        return {"state": np.asarray(obs, dtype=np.float32)}
    return {"img": obs["pixels"], "agent_pos": np.asarray(obs["state"][:2], dtype=np.float32)}


def _pusht_derive(data: EpisodeData, obs_type: str) -> None:
    if obs_type == "image" and "agent_pos" not in data.data:
        data.data["agent_pos"] = np.ascontiguousarray(data["state"][:, :2], dtype=np.float32)


TASKS: dict[str, TaskSpec] = {
    "pusht": TaskSpec("pusht", {"state": ("state",), "image": ("img", "agent_pos")}, _pusht_env, _pusht_obs,
                      _pusht_derive),
}


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise UserError(f"unknown IL task {name!r}; choose one of: {', '.join(TASKS)}")
    return TASKS[name]


def _video_path(video: Path, j: int, n: int) -> Path:
    return video if n == 1 else video.with_name(f"{video.stem}_ep{j:03d}{video.suffix}")


@torch.no_grad()
def rollout(policy: Any, task: str, obs_type: str, episodes: int, seed: int, *, max_steps: int = 300,
            batch: int | None = None, video: Path | None = None, video_episodes: int = 1, fps: int = 10,
            device: str | torch.device = "cpu", progress: bool = False) -> dict[str, Any]:
    """Evaluate ``policy`` on ``episodes`` episodes seeded ``seed + j`` (see the module docstring).

    Returns ``success_rate``, ``mean_max_coverage``, ``std_max_coverage``, ``mean_length`` and the
    per-episode ``success``, ``max_coverage``, ``length`` lists, ``seeds`` and ``videos`` written.
    """
    from difftop.utils.video import save_video

    spec = get_task(task)
    meta = policy.shape_meta
    To, Ta = meta.obs_horizon, meta.n_action_steps
    keys = spec.keys(obs_type)
    image_size = next((meta.obs[k][-1] for k in keys if len(meta.obs.get(k, ())) == 3), None)
    n_env = max(1, min(int(batch or episodes), episodes))
    envs = [spec.make_env(obs_type, max_steps, image_size) for _ in range(n_env)]
    policy.eval()
    success, max_cov, length, videos = [], [], [], []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=episodes, desc="eval", unit="ep", leave=False, dynamic_ncols=True)
    try:
        for first in range(0, episodes, n_env):
            ids = list(range(first, min(first + n_env, episodes)))
            res = _run_batch(policy, spec, obs_type, envs[: len(ids)], [seed + j for j in ids], To, Ta, keys,
                             [j < video_episodes and video is not None for j in ids], device)
            for j, (ok, cov, n, frames) in zip(ids, res):
                success.append(ok)
                max_cov.append(cov)
                length.append(n)
                if frames:
                    path = _video_path(Path(video), j, video_episodes)
                    videos.append(str(save_video(frames, path, fps=fps)))
            if bar is not None:
                bar.update(len(ids))
    finally:
        if bar is not None:
            bar.close()
        for env in envs:
            env.close()
    return {
        "success_rate": float(np.mean(success)),
        "mean_max_coverage": float(np.mean(max_cov)),
        "std_max_coverage": float(np.std(max_cov)),
        "mean_length": float(np.mean(length)),
        "episodes": episodes,
        "success": [bool(s) for s in success],
        "max_coverage": [float(c) for c in max_cov],
        "length": [int(n) for n in length],
        "seeds": [seed + j for j in range(episodes)],
        "videos": videos,
    }


def _run_batch(policy: Any, spec: TaskSpec, obs_type: str, envs: Sequence[Any], seeds: Sequence[int], To: int,
               Ta: int, keys: Sequence[str], record: Sequence[bool], device: Any
               ) -> list[tuple[bool, float, int, list[np.ndarray]]]:
    """Episodes in lockstep: the policy acts on all of them (finished ones frozen) so batch shapes,
    and a recurrent policy's state, stay fixed."""
    n = len(envs)
    first = []
    infos = []
    for env, s in zip(envs, seeds):
        o, info = env.reset(seed=int(s))
        first.append(spec.env_obs(o, obs_type))
        infos.append(info)
    hist = {k: np.stack([np.repeat(f[k][None], To, 0) for f in first]) for k in keys}
    done = np.zeros(n, dtype=bool)
    ok = np.array([bool(i["success"]) for i in infos])
    cov = np.array([float(i["coverage"]) for i in infos])
    steps = np.zeros(n, dtype=np.int64)
    frames: list[list[np.ndarray]] = [[env.render()] if r else [] for env, r in zip(envs, record)]
    done |= ok  # already solved at reset: nothing to do
    policy.reset()
    while not done.all():
        obs_t = {k: torch.from_numpy(hist[k]).to(device) for k in keys}
        actions = policy.predict_action(obs_t).detach().cpu().numpy()  # (n, Ta', m)
        for j in range(min(Ta, actions.shape[1])):
            for i in np.flatnonzero(~done):
                o, _, terminated, truncated, info = envs[i].step(actions[i, j])
                new = spec.env_obs(o, obs_type)
                for k in keys:
                    hist[k][i, :-1] = hist[k][i, 1:]
                    hist[k][i, -1] = new[k]
                steps[i] += 1
                cov[i] = max(cov[i], float(info["coverage"]))
                ok[i] |= bool(info["success"])
                done[i] = terminated or truncated
                if record[i]:
                    frames[i].append(envs[i].render())
            if done.all():
                break
    return [(bool(ok[i]), float(cov[i]), int(steps[i]), frames[i]) for i in range(n)]
