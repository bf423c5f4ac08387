"""Rollouts of imitation policies: a batched, seeded evaluator of any task of :mod:`difftop.tasks`.

:func:`rollout` runs ``episodes`` seeded episodes ``seed, seed+1, ...`` in lockstep batches (one
``predict_action`` call per decision for the whole batch), keeps an observation history of the
policy's ``obs_horizon`` (padded at the start by repeating the first observation), executes the
``n_action_steps`` actions of each prediction, and reports the success rate and the task's own
metrics (Push-T: the maximum goal coverage reached), with videos of the first episodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from difftop.tasks import Task, get_task

__all__ = ["check_action_frame", "get_task", "rollout", "eval_row"]


def check_action_frame(policy: Any, task: Task, what: str) -> None:
    """UserError when ``policy`` was trained in another action frame than ``task`` acts in now (new runs
    record it in their spec; the earlier ManiSkill runs in absolute targets had it written in)."""
    from difftop.errors import UserError

    frame = (getattr(policy, "_difftop_spec", None) or {}).get("action_frame")
    if frame is not None and frame != task.action_frame:  # unrecorded (older runs): trusted
        raise UserError(f"{what} was trained on {frame} actions, but task {task.name} now takes "
                        f"{task.action_frame} actions: retrain it (its numbers would mean something else)")


def eval_row(task: Task, res: dict[str, Any]) -> dict[str, Any]:
    """The evaluation CSV's columns of a :func:`rollout` result (the task's metrics, in order)."""
    return {k: res[k] for k in (*task.eval_columns(), "episodes")}


def _video_path(video: Path, j: int, n: int) -> Path:
    return video if n == 1 else video.with_name(f"{video.stem}_ep{j:03d}{video.suffix}")


@torch.no_grad()
def rollout(policy: Any, task: str, obs_type: str, episodes: int, seed: int, *, max_steps: int = 300,
            batch: int | None = None, video: Path | None = None, video_episodes: int = 1, fps: int = 10,
            device: str | torch.device = "cpu", progress: bool = False) -> dict[str, Any]:
    """Evaluate ``policy`` on ``episodes`` episodes seeded ``seed + j`` (see the module docstring).

    Returns ``success_rate``, ``mean_<metric>`` / ``std_<metric>`` of each of the task's metrics,
    ``mean_length``, and the per-episode ``success``, ``<metric>``, ``length`` lists, ``seeds`` and
    ``videos`` written.
    """
    from difftop.utils.video import save_video

    spec = get_task(task)
    check_action_frame(policy, spec, "this policy")
    meta = policy.shape_meta
    To, Ta = meta.obs_horizon, meta.n_action_steps
    keys = spec.keys(obs_type)
    image_size = next((meta.obs[k][-1] for k in keys if len(meta.obs.get(k, ())) == 3), None)
    n_env = max(1, min(int(batch or episodes), episodes))
    envs = [spec.make_env(obs_type, max_steps, image_size) for _ in range(n_env)]
    policy.eval()
    success, length, videos = [], [], []
    values: dict[str, list[float]] = {m.name: [] for m in spec.metrics}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=episodes, desc="eval", unit="ep", leave=False, dynamic_ncols=True)
    try:
        for first in range(0, episodes, n_env):
            ids = list(range(first, min(first + n_env, episodes)))
            res = _run_batch(policy, spec, obs_type, envs[: len(ids)], [seed + j for j in ids], To, Ta, keys,
                             [j < video_episodes and video is not None for j in ids], device)
            for j, (ok, vals, n, frames) in zip(ids, res):
                success.append(ok)
                for m in spec.metrics:
                    values[m.name].append(vals[m.name])
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
    out: dict[str, Any] = {"success_rate": float(np.mean(success))}
    for m in spec.metrics:
        out[f"mean_{m.name}"] = float(np.mean(values[m.name]))
        out[f"std_{m.name}"] = float(np.std(values[m.name]))
    out.update({"mean_length": float(np.mean(length)), "episodes": episodes,
                "success": [bool(s) for s in success]})
    out.update({m.name: [float(v) for v in values[m.name]] for m in spec.metrics})
    out.update({"length": [int(n) for n in length], "seeds": [seed + j for j in range(episodes)],
                "videos": videos})
    return out


def _run_batch(policy: Any, spec: Task, obs_type: str, envs: Sequence[Any], seeds: Sequence[int], To: int,
               Ta: int, keys: Sequence[str], record: Sequence[bool], device: Any
               ) -> list[tuple[bool, dict[str, float], int, list[np.ndarray]]]:
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
    vals = {m.name: np.array([float(i[m.info_key]) for i in infos]) for m in spec.metrics}
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
                for m in spec.metrics:
                    vals[m.name][i] = m.update(vals[m.name][i], float(info[m.info_key]))
                ok[i] |= bool(info["success"])
                done[i] = terminated or truncated
                if record[i]:
                    frames[i].append(envs[i].render())
            if done.all():
                break
    return [(bool(ok[i]), {k: float(v[i]) for k, v in vals.items()}, int(steps[i]), frames[i])
            for i in range(n)]
