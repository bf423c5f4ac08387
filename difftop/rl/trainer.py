"""``difftop rl``: train TD-MPC / DiffTOP on a DeepMind Control task, resumably.

The loop is TD-MPC's: collect one whole episode (uniform random actions for the first
``seed_steps`` agent steps), store it, then run one gradient update per agent step of the
episode (the first time learning starts: one per step collected so far). Evaluation every
``eval_every`` environment steps (and at 0; none during the seed steps, where the weights are
still the initial ones), with a video of the first eval episode.

Everything is written to ``out_dir``: ``config.yaml`` (resolved), ``train.csv``/``eval.csv``,
``tb/`` (TensorBoard), ``videos/``, ``checkpoint.pt`` + ``buffer.npz``. ``resume=true`` reloads
model, optimizers, counters, every RNG and the replay buffer, drops log rows past the checkpoint
and continues, so a resumed run is the same run (bitwise on one CPU thread).
Episode ``i`` of training resets the environment with seed ``seed * 100003 + i`` and evaluation
episode ``j`` with ``10**6 + seed * 1000 + j`` (the same eval episodes at every evaluation), so no
environment state needs saving.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from difftop.errors import UserError
from difftop.rl.schedules import linear_schedule
from difftop.utils.checkpoint import save_checkpoint
from difftop.utils.checks import require_int, require_number
from difftop.utils.device import resolve_device
from difftop.utils.runlog import RunLogger
from difftop.utils.runstate import Progress, finished_run, global_rng_state, open_run, set_global_rng_state
from difftop.utils.video import save_video

__all__ = ["main", "resolve_config", "train", "evaluate", "build"]

AGENTS = ("tdmpc", "difftop", "difftop_noback")
MAX_EVAL_ENVS = 10  # evaluation episodes run in lockstep at most (one environment, one renderer each)
OBS = ("state", "pixels")


def resolve_config(cfg: DictConfig) -> DictConfig:
    """Validate the user's config and fill the ``null`` (automatic) values; returns a copy."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    if cfg.agent not in AGENTS:
        raise UserError(f"unknown agent {cfg.agent!r}; choose one of: {', '.join(AGENTS)}")
    if cfg.obs not in OBS:
        raise UserError(f"unknown obs {cfg.obs!r}; choose one of: {', '.join(OBS)}")
    from difftop.envs import default_action_repeat, task_key
    from difftop.rl.difftop_agent import resolve_qs_horizon

    cfg.task = task_key(str(cfg.task))  # UserError listing the valid tasks if unknown
    if cfg.action_repeat is None:
        cfg.action_repeat = default_action_repeat(cfg.task)
    pixels = cfg.obs == "pixels"
    if cfg.lr is None:
        cfg.lr = 3e-4 if pixels else 1e-3
    if cfg.batch_size is None:
        cfg.batch_size = 256 if pixels else 512
    if cfg.agent == "difftop_noback":
        cfg.pg_mode = "none"
    require_int("steps", cfg.steps, 0)
    for key in ("eval_episodes", "episode_length", "action_repeat", "horizon", "batch_size", "eval_every"):
        require_int(key, cfg[key], 1)
    for key in ("lr", "pg_lr"):
        require_number(key, cfg.get(key), 0, low_open=True, optional=True)
    cfg.qs_horizon = qs = resolve_qs_horizon(cfg.get("qs_horizon", "auto"), pixels)
    try:
        require_int("qs_horizon", qs, 1, optional=True)
    except UserError:  # the message names auto too
        raise UserError(f"qs_horizon must be auto, null or an integer >= 1, got {qs!r}") from None
    require_int("checkpoint_every", cfg.get("checkpoint_every"), 1, optional=True)
    require_number("checkpoint_minutes", cfg.get("checkpoint_minutes"), 0)  # 0: at every chance
    if cfg.episode_length % cfg.action_repeat:
        raise UserError(f"episode_length {cfg.episode_length} is not a multiple of action_repeat "
                        f"{cfg.action_repeat}")
    L = cfg.episode_length // cfg.action_repeat
    if cfg.horizon >= L:
        raise UserError(f"horizon {cfg.horizon} must be shorter than an episode ({L} agent steps)")
    if cfg.pg_mode not in ("online", "batched", "none"):
        raise UserError(f"pg_mode must be online, batched or none, got {cfg.pg_mode!r}")
    for key in ("explore_std", "std_schedule", "horizon_schedule"):
        try:
            linear_schedule(cfg[key], 0)
        except NotImplementedError:
            raise UserError(f"{key} must be a number or linear(init, final, steps), "
                            f"got {cfg[key]!r}") from None
    if cfg.init not in ("pi", "zero"):
        raise UserError(f"init must be pi or zero, got {cfg.init!r}")
    mode = cfg.trajopt.get("implicit_unconverged", "memory")
    if mode not in ("memory", "exact"):
        raise UserError(f"trajopt.implicit_unconverged must be exact or memory, got {mode!r}")
    cfg.device = resolve_device(cfg.device)
    bdev = cfg.get("buffer_device", "auto")
    cfg.buffer_device = cfg.device if bdev in (None, "auto") else resolve_device(bdev, "buffer_device")
    return cfg


def build(cfg: DictConfig, *, eval_seed_offset: int = 0, eval_episodes: int = 1):
    """(train env, eval envs, agent) for a resolved config: one eval env per episode evaluated in
    lockstep, at most ``MAX_EVAL_ENVS``."""
    from difftop.envs import make_env
    from difftop.rl.difftop_agent import make_agent

    kw = dict(action_repeat=cfg.action_repeat, frame_stack=cfg.frame_stack, image_size=cfg.image_size,
              episode_length=cfg.episode_length, render_size=cfg.render_size)
    env = make_env(cfg.task, cfg.obs, seed=cfg.seed, **kw)
    evals = [make_env(cfg.task, cfg.obs, seed=cfg.seed + eval_seed_offset + i, **kw)
             for i in range(min(max(1, int(eval_episodes)), MAX_EVAL_ENVS))]
    try:
        agent = make_agent(cfg, env.observation_space.shape, env.action_space.shape[0], cfg.device)
    except ValueError as e:  # a setting the agent or its trajopt layer rejects, e.g. trajopt.solver=foo
        raise UserError(f"agent {cfg.agent}: {e}") from None
    return env, evals, agent


def evaluate(agent, envs, episodes: int, step: int, seed_base: int, video_path: Path | None = None,
             fps: int = 30) -> tuple[list[float], Path | None]:
    """Returns of ``episodes`` deterministic-policy episodes (episode ``j`` reset with seed
    ``seed_base + j``); a video of the first if asked.

    Episodes run in lockstep, ``len(envs)`` at a time, with one batched ``agent.act_batch`` per
    step: a DiffTOP solve at batch 1 is overhead-bound, so B episodes cost little more than one.
    A finished episode's environment is no longer stepped (its action is dropped)."""
    envs = list(envs) if isinstance(envs, (list, tuple)) else [envs]
    returns, frames, written = [], [], None
    for first in range(0, episodes, len(envs)):
        group = envs[: min(len(envs), episodes - first)]
        obs = [env.reset(seed=seed_base + first + i)[0] for i, env in enumerate(group)]
        totals = [0.0] * len(group)
        done = [False] * len(group)
        record = video_path is not None and first == 0
        if record:
            frames.append(group[0].render())
        t = 0
        while not all(done):
            actions = agent.act_batch(np.stack(obs), step=step, t0=t == 0)
            for i, env in enumerate(group):
                if done[i]:
                    continue
                obs[i], reward, terminated, truncated, _ = env.step(actions[i])
                totals[i] += float(reward)
                done[i] = terminated or truncated
                if record and i == 0:
                    frames.append(env.render())
            t += 1
        returns.extend(totals)
    if frames:
        written = save_video(frames, video_path, fps=fps)
    return returns, written


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) one training run; returns a summary dict."""
    cfg = resolve_config(cfg)
    # The saved run's settings win, except how far to go and how to report.
    cfg, state = open_run(cfg, "rl",
                          ("task", "obs", "agent", "seed", "action_repeat", "horizon", "episode_length"),
                          ("steps", "progress", "threads", "eval_every", "eval_episodes", "video",
                           "checkpoint_every", "checkpoint_minutes", "device", "buffer_device", "label"))
    out = Path(cfg.out_dir)
    ckpt_path = out / "checkpoint.pt"
    if state is not None and finished_run(out, int(state["env_step"]), int(cfg.steps),
                                          bool(state.get("pending"))):
        return {"out_dir": str(out), "env_step": int(state["env_step"]), "episodes": int(state["episode"]),
                "last_eval": state.get("last_eval"), "wall_time": float(state["wall_time"])}

    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    env, eval_envs, agent = build(cfg, eval_episodes=cfg.eval_episodes)
    from difftop.rl.replay import ReplayBuffer

    ar = cfg.action_repeat
    L = cfg.episode_length // ar
    total_agent_steps = math.ceil(cfg.steps / ar)
    capacity = cfg.buffer_capacity or max(total_agent_steps, L)
    try:
        buffer = ReplayBuffer(env.observation_space.shape, env.action_space.shape[0], L, capacity,
                              cfg.horizon, pixels=cfg.obs == "pixels", alpha=cfg.per_alpha, beta=cfg.per_beta,
                              device=cfg.buffer_device)
    except torch.cuda.OutOfMemoryError:
        raise UserError(f"a replay buffer of {capacity} transitions does not fit on {cfg.buffer_device}; "
                        "set buffer_device=cpu or a smaller buffer_capacity") from None

    agent_step, episode, wall_offset, next_eval, last_eval = 0, 0, 0.0, 0, None
    if state is not None:
        agent.load_state_dict(state["agent"])
        set_global_rng_state(state["rng"])
        agent_step, episode = state["agent_step"], state["episode"]
        wall_offset, next_eval, last_eval = state["wall_time"], state["next_eval"], state.get("last_eval")
        buf_path = out / "buffer.npz"
        if buf_path.exists():
            buffer.load(buf_path)
        elif agent_step:
            print(f"warning: {buf_path} missing; resuming with an empty replay buffer")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    logger = RunLogger(out, tensorboard=cfg.tensorboard,
                       resume_step=agent_step * ar if state is not None else None)
    ckpt_every = cfg.checkpoint_every or cfg.eval_every
    next_ckpt = (agent_step * ar // ckpt_every + 1) * ckpt_every
    start = time.time()

    def wall() -> float:
        return wall_offset + time.time() - start

    # An episode whose updates are not all done yet (a learning burst can take hours on a CPU):
    # the checkpoint records it, so a resumed run finishes those updates first.
    pending = dict(state.get("pending") or {}) if state is not None else {}
    last_ckpt = time.time()

    def checkpoint() -> None:
        nonlocal last_ckpt
        if cfg.save_buffer:
            tmp = out / ".buffer.tmp.npz"
            buffer.save(tmp)
            tmp.replace(out / "buffer.npz")
        save_checkpoint(ckpt_path, {
            "kind": "rl", "config": OmegaConf.to_container(cfg), "agent": agent.state_dict(),
            "rng": global_rng_state(), "agent_step": agent_step, "episode": episode, "wall_time": wall(),
            "next_eval": next_eval, "last_eval": last_eval, "env_step": agent_step * ar,
            "pending": pending or None})
        last_ckpt = time.time()

    desc = f"{cfg.agent} {cfg.task} {cfg.obs} s{cfg.seed}"
    bar = Progress(cfg.progress, cfg.steps, min(agent_step * ar, cfg.steps), desc)
    try:
        while True:
            if not pending:
                env_step = agent_step * ar
                # No evaluations while the weights are still the initial ones (seed steps): they
                # would repeat the step-0 result at the full cost of planning.
                learning = agent_step >= cfg.seed_steps or env_step == 0 or env_step >= cfg.steps
                if env_step >= next_eval and not learning:
                    next_eval = (env_step // cfg.eval_every + 1) * cfg.eval_every
                if env_step >= next_eval:
                    bar.note("evaluating")
                    vid = out / "videos" / f"eval_{env_step:08d}.mp4" if cfg.video else None
                    rets, _ = evaluate(agent, eval_envs, cfg.eval_episodes, agent_step,
                                       10**6 + cfg.seed * 1000, vid)
                    last_eval = float(np.mean(rets))
                    logger.log("eval", {"env_step": env_step, "episode": episode, "wall_time": wall(),
                                        "episode_reward": last_eval,
                                        "episode_reward_std": float(np.std(rets)), "episodes": len(rets)})
                    next_eval = (env_step // cfg.eval_every + 1) * cfg.eval_every
                    if env_step >= next_ckpt or env_step >= cfg.steps:
                        checkpoint()
                        next_ckpt = (env_step // ckpt_every + 1) * ckpt_every
                if env_step >= cfg.steps:
                    checkpoint()
                    break

                # ---- collect one episode
                t_ep = time.time()
                obs, _ = env.reset(seed=cfg.seed * 100003 + episode)
                ep_obs = np.empty((L + 1, *env.observation_space.shape), dtype=env.observation_space.dtype)
                ep_act = np.empty((L, env.action_space.shape[0]), dtype=np.float32)
                ep_rew = np.empty((L,), dtype=np.float32)
                ep_obs[0] = obs
                for t in range(L):
                    action = agent.act(obs, step=agent_step + t, t0=t == 0)
                    obs, reward, terminated, truncated, _ = env.step(action)
                    ep_obs[t + 1], ep_act[t], ep_rew[t] = obs, action, reward
                    bar.update(ar)
                    if terminated or truncated:
                        if t != L - 1:
                            raise RuntimeError(f"episode ended after {t + 1} agent steps, expected {L}")
                start_step = agent_step
                agent_step += L
                episode += 1
                buffer.add_episode(ep_obs, ep_act, ep_rew)
                row = {"env_step": agent_step * ar, "episode": episode, "wall_time": 0.0,
                       "episode_reward": float(ep_rew.sum()), "collect_s": time.time() - t_ep}
                row.update(agent.end_episode())
                # TD-MPC: one update per collected step; when learning starts, one per step so far
                n_up = 0
                if agent_step >= cfg.seed_steps:
                    n_up = agent_step if start_step < cfg.seed_steps else L
                pending = {"base": start_step, "total": n_up, "done": 0, "row": row, "update_s": 0.0}

            # ---- learn
            row = pending["row"]
            t_up = time.time()
            while pending["done"] < pending["total"]:
                i = pending["done"]
                row.update(agent.update(buffer, pending["base"] + i))
                pending["done"] = i + 1
                if pending["total"] > L and i % 50 == 0:
                    bar.note(f"pretraining update {i}/{pending['total']}")
                overdue = time.time() - last_ckpt > 60 * cfg.checkpoint_minutes
                if overdue and pending["done"] < pending["total"]:
                    pending["update_s"] += time.time() - t_up
                    t_up = time.time()
                    checkpoint()
            update_s = pending["update_s"] + time.time() - t_up
            row.update({"wall_time": wall(), "update_s": update_s,
                        "env_steps_per_s": L * ar / max(row["collect_s"] + update_s, 1e-9)})
            logger.log("train", row)
            pending = {}
            bar.update(0, ret=f"{row['episode_reward']:.0f}",
                       eval=None if last_eval is None else f"{last_eval:.0f}")
            if agent_step * ar >= next_ckpt and agent_step * ar < next_eval:
                checkpoint()
                next_ckpt = (agent_step * ar // ckpt_every + 1) * ckpt_every
    except KeyboardInterrupt:
        bar.close()
        logger.close()
        print(f"interrupted: the last checkpoint in {out} is kept; continue with resume=true")
        raise
    bar.close()
    logger.close()
    summary = {"out_dir": str(out), "env_step": agent_step * ar, "episodes": episode,
               "last_eval": last_eval, "wall_time": wall()}
    print(f"done: {cfg.agent} on {cfg.task} ({cfg.obs}), {agent_step * ar} env steps, "
          f"last eval return {last_eval:.1f}, {wall():.0f} s; results in {out}")
    return summary


def main(cfg: DictConfig) -> int:
    train(cfg)
    return 0
