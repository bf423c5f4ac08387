"""``difftop rl``: train TD-MPC / DiffTOP on a DeepMind Control task, resumably.

The loop is TD-MPC's: collect one whole episode (uniform random actions for the first
``seed_steps`` agent steps), store it, then run one gradient update per agent step of the
episode (the first time learning starts: one per step collected so far). Evaluation every
``eval_every`` environment steps (and at 0; none during the seed steps, where the weights are
still the initial ones), with a video of the first eval episode.

The run engine (:mod:`difftop.engine`) owns the run folder (``config.yaml``, ``train.csv`` /
``eval.csv``, ``tb/``, ``videos/``, ``checkpoint/`` with the replay buffer), resume and interrupts;
this module is the loop's units, whose state (counters, the learning burst in progress) is in every
checkpoint, so a resumed run is the same run (bitwise on one CPU thread).
Episode ``i`` of training resets the environment with seed ``seed * 100003 + i`` and evaluation
episode ``j`` with ``10**6 + seed * 1000 + j`` (the same eval episodes at every evaluation), so no
environment state needs saving.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from difftop import engine
from difftop.engine import Context, Loop, RunSpec
from difftop.errors import UserError
from difftop.rl.schedules import linear_schedule
from difftop.utils.checks import require_int, require_number
from difftop.utils.device import resolve_device
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
    from difftop.rl.difftop_agent import resolve_qs_horizon, resolve_variant

    cfg.task = task_key(str(cfg.task))  # UserError listing the valid tasks if unknown
    resolve_variant(cfg)  # variant=official: the release's per-task settings where null
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
    require_int("distractors", cfg.get("distractors", 0), 0)
    if cfg.get("distractors") and cfg.obs != "state":
        raise UserError(f"distractors={cfg.distractors} needs obs=state (they extend the state vector)")
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
    from difftop.trajopt import TrajOptConfig

    TrajOptConfig.from_mapping(cfg.trajopt, where="trajopt", ignore=("q_tau",))  # before anything slow
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
              episode_length=cfg.episode_length, render_size=cfg.render_size,
              distractors=int(cfg.get("distractors") or 0))
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


#: keys that identify the run (a resumed run keeps them) and keys it may change freely
RESUME_FREE = ("steps", "eval_every", "eval_episodes", "video", "checkpoint_every", "checkpoint_minutes",
               "buffer_device", "label", "save_buffer")
SPEC = RunSpec(kind="rl", step_key="env_step", overridable=RESUME_FREE, weights=(("agent", "modules"),))


class RLLoop(Loop):
    """TD-MPC's loop as units of work: an evaluation, the collection of one episode, one gradient
    update of the episode's learning burst, the episode's log row. Its state (counters, the burst in
    progress) is in every checkpoint, so a burst cut off by a kill or by the clock goes on where it was."""

    unit = "env step"

    def __init__(self, cfg: DictConfig):
        from difftop.rl.replay import ReplayBuffer

        self.cfg = cfg
        self.env, self.eval_envs, self.agent = build(cfg, eval_episodes=cfg.eval_episodes)
        self.ar = cfg.action_repeat
        self.L = cfg.episode_length // self.ar
        capacity = cfg.buffer_capacity or max(math.ceil(cfg.steps / self.ar), self.L)
        try:
            self.buffer = ReplayBuffer(self.env.observation_space.shape, self.env.action_space.shape[0],
                                       self.L, capacity, cfg.horizon, pixels=cfg.obs == "pixels",
                                       alpha=cfg.per_alpha, beta=cfg.per_beta, device=cfg.buffer_device)
        except torch.cuda.OutOfMemoryError:
            raise UserError(f"a replay buffer of {capacity} transitions does not fit on {cfg.buffer_device}; "
                            "set buffer_device=cpu or a smaller buffer_capacity") from None
        self.ckpt_every = cfg.checkpoint_every or cfg.eval_every
        self.agent_step, self.episode, self.next_eval, self.last_eval = 0, 0, 0, None
        self.next_ckpt = self.ckpt_every
        # the episode whose updates are not all done yet (a learning burst takes hours on a CPU)
        self.pending: dict | None = None

    # ---- state
    def progress(self) -> int:
        return self.agent_step * self.ar

    def _eval_due(self) -> bool:
        env_step = self.progress()
        # No evaluations while the weights are still the initial ones (seed steps): they would
        # repeat the step-0 result at the full cost of planning.
        learning = self.agent_step >= self.cfg.seed_steps or env_step == 0 or env_step >= self.cfg.steps
        if env_step >= self.next_eval and not learning:
            self.next_eval = (env_step // self.cfg.eval_every + 1) * self.cfg.eval_every
        return env_step >= self.next_eval

    def finished(self) -> bool:
        return self.pending is None and self.progress() >= self.cfg.steps and not self._eval_due()

    def state_dict(self) -> dict:
        return {"agent": self.agent.state_dict(), "agent_step": self.agent_step, "episode": self.episode,
                "next_eval": self.next_eval, "next_ckpt": self.next_ckpt, "last_eval": self.last_eval,
                "env_step": self.progress(), "pending": self.pending}

    def load_state_dict(self, state: dict) -> None:
        self.agent.load_state_dict(state["agent"])
        self.agent_step, self.episode = int(state["agent_step"]), int(state["episode"])
        self.next_eval, self.last_eval = int(state["next_eval"]), state.get("last_eval")
        default = (self.progress() // self.ckpt_every + 1) * self.ckpt_every  # a v1 checkpoint has none
        self.next_ckpt = int(state.get("next_ckpt") or default)
        self.pending = _pending_v2(state.get("pending"))

    def files(self) -> dict:
        return {"buffer.npz": self.buffer.save} if self.cfg.save_buffer else {}

    def restore_files(self, ckpt_dir: Path) -> None:
        for path in (ckpt_dir / "buffer.npz", ckpt_dir.parent / "buffer.npz"):  # v2; v1: beside checkpoint.pt
            if path.exists():
                self.buffer.load(path)
                return
        if self.agent_step:
            print(f"warning: no replay buffer in {ckpt_dir}; resuming with an empty one")

    def describe(self) -> str:
        c = self.cfg
        return f"{c.agent} {c.task} {c.obs} s{c.seed}"

    def summary(self) -> dict:
        return {"env_step": self.progress(), "episodes": self.episode, "last_eval": self.last_eval}

    def done_message(self, s: dict) -> str:
        c, ev = self.cfg, "none" if s["last_eval"] is None else f"{s['last_eval']:.1f}"
        return (f"done: {c.agent} on {c.task} ({c.obs}), {s['env_step']} env steps, last eval return {ev}, "
                f"{s['wall_time']:.0f} s; results in {s['out_dir']}")

    def close(self) -> None:
        for env in [self.env, *self.eval_envs]:
            env.close()

    # ---- units
    def step(self, ctx: Context) -> bool:
        if self.pending is not None:
            return self._learn(ctx)
        if self._eval_due():
            return self._evaluate(ctx)
        self._collect(ctx)
        return False

    def _evaluate(self, ctx: Context) -> bool:
        cfg, env_step = self.cfg, self.progress()
        ctx.note("evaluating")
        vid = ctx.out / "videos" / f"eval_{env_step:08d}.mp4" if cfg.video else None
        rets, _ = evaluate(self.agent, self.eval_envs, cfg.eval_episodes, self.agent_step,
                           10**6 + cfg.seed * 1000, vid)
        ctx.crash_point("rl.evaluated")
        self.last_eval = float(np.mean(rets))
        ctx.log("eval", {"env_step": env_step, "episode": self.episode, "wall_time": ctx.wall(),
                         "episode_reward": self.last_eval, "episode_reward_std": float(np.std(rets)),
                         "episodes": len(rets)})
        self.next_eval = (env_step // cfg.eval_every + 1) * cfg.eval_every
        ctx.advance(0, eval=f"{self.last_eval:.0f}")
        return self._ckpt_due(env_step)

    def _ckpt_due(self, env_step: int) -> bool:
        if env_step >= self.next_ckpt:
            self.next_ckpt = (env_step // self.ckpt_every + 1) * self.ckpt_every
            return True
        return False

    def _collect(self, ctx: Context) -> None:
        cfg, env, L = self.cfg, self.env, self.L
        t_ep = time.time()
        obs, _ = env.reset(seed=cfg.seed * 100003 + self.episode)
        ep_obs = np.empty((L + 1, *env.observation_space.shape), dtype=env.observation_space.dtype)
        ep_act = np.empty((L, env.action_space.shape[0]), dtype=np.float32)
        ep_rew = np.empty((L,), dtype=np.float32)
        ep_obs[0] = obs
        for t in range(L):
            action = self.agent.act(obs, step=self.agent_step + t, t0=t == 0)
            obs, reward, terminated, truncated, _ = env.step(action)
            ep_obs[t + 1], ep_act[t], ep_rew[t] = obs, action, reward
            ctx.advance(self.ar)
            if (terminated or truncated) and t != L - 1:
                raise RuntimeError(f"episode ended after {t + 1} agent steps, expected {L}")
        start_step = self.agent_step
        self.agent_step += L
        self.episode += 1
        self.buffer.add_episode(ep_obs, ep_act, ep_rew)
        row = {"env_step": self.agent_step * self.ar, "episode": self.episode, "wall_time": 0.0,
               "episode_reward": float(ep_rew.sum()), "collect_s": time.time() - t_ep}
        row.update(self.agent.end_episode())
        # TD-MPC: one update per collected step; when learning starts, one per step so far
        n_up = 0
        if self.agent_step >= cfg.seed_steps:
            n_up = self.agent_step if start_step < cfg.seed_steps else L
        self.pending = {"base": start_step, "total": n_up, "done": 0, "row": row, "update_s": 0.0}

    def _learn(self, ctx: Context) -> bool:
        p = self.pending
        if p["done"] < p["total"]:  # one update of the burst
            i = p["done"]
            t_up = time.time()
            p["row"].update(self.agent.update(self.buffer, p["base"] + i))
            p["done"] = i + 1
            p["update_s"] += time.time() - t_up
            if p["total"] > self.L and i % 50 == 0:
                ctx.note(f"pretraining update {i}/{p['total']}")
            ctx.crash_point("rl.update")
            return False
        row = p["row"]  # the burst is done: the episode's row
        row.update({"wall_time": ctx.wall(), "update_s": p["update_s"],
                    "env_steps_per_s": self.L * self.ar / max(row["collect_s"] + p["update_s"], 1e-9)})
        ctx.log("train", row)
        self.pending = None
        ctx.advance(0, ret=f"{row['episode_reward']:.0f}",
                    eval=None if self.last_eval is None else f"{self.last_eval:.0f}")
        env_step = self.progress()
        # a checkpoint by cadence, unless an evaluation comes next (it checkpoints after itself)
        return env_step < self.next_eval and self._ckpt_due(env_step)


def _pending_v2(pending: dict | None) -> dict | None:
    """A burst saved by an earlier version (no ``update_s`` kept per update) continues as it was."""
    if not pending:
        return None
    return {"update_s": 0.0, **pending}


def _finished(state: dict, cfg: DictConfig) -> bool:
    env_step = int(state["env_step"])
    return env_step >= cfg.steps and not state.get("pending") and int(state["next_eval"]) > env_step


def _summary(state: dict) -> dict:
    return {"out_dir": str(Path(state.get("path", ".")).parent), "env_step": int(state["env_step"]),
            "episodes": int(state["episode"]), "last_eval": state.get("last_eval"),
            "wall_time": float(state["wall_time"])}


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) one training run; returns a summary dict."""
    cfg = resolve_config(cfg)
    return engine.run(cfg, SPEC, lambda c, state: RLLoop(c), _finished, _summary)


def main(cfg: DictConfig) -> int:
    train(cfg)
    return 0
