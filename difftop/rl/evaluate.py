"""``difftop eval`` for RL checkpoints: mean +- std return of the saved agent, with a video.

A missing, truncated or foreign checkpoint is a one-line error, never an evaluation of randomly
initialised weights (a fault of the paper's own release). ``difftop.evaluate.main`` has checked the
settings (seed, threads, a writable ``out_dir``) before the checkpoint was loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from difftop.utils.device import resolve_device

__all__ = ["evaluate_rl_checkpoint"]


def evaluate_rl_checkpoint(cfg: DictConfig, state: dict, path: Path) -> dict:
    from difftop.rl.trainer import build, evaluate

    run_cfg = OmegaConf.create(state["config"])
    run_cfg.device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    torch.manual_seed(int(cfg.seed))
    _, envs, agent = build(run_cfg, eval_episodes=cfg.episodes)
    agent.load_state_dict(state["agent"], weights_only=True)
    out = Path(str(cfg.out_dir))  # difftop.evaluate.main has filled and checked it
    step = int(state["agent_step"])
    video = out / f"checkpoint_{step * run_cfg.action_repeat:08d}.mp4" if cfg.video else None
    returns, written = evaluate(agent, envs, int(cfg.episodes), step, int(cfg.seed), video)
    result = {"checkpoint": str(path), "task": run_cfg.task, "agent": run_cfg.agent, "obs": run_cfg.obs,
              "env_step": step * run_cfg.action_repeat, "episodes": len(returns),
              "mean": float(np.mean(returns)), "std": float(np.std(returns)), "returns": returns,
              "video": str(written) if written else None}
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=2))
    print(f"{run_cfg.agent} on {run_cfg.task} ({run_cfg.obs}) at {result['env_step']} env steps: "
          f"return {result['mean']:.1f} +- {result['std']:.1f} over {len(returns)} episodes")
    if written:
        print(f"video: {written}")
    return result
