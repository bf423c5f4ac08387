"""``difftop eval`` for IL checkpoints: success rate and the task's metrics of the saved policy, with videos.

The policy is rebuilt from the checkpoint's spec and weights (its EMA weights when the run kept
them); a missing, truncated or foreign checkpoint is a one-line error before anything runs, never
an evaluation of random weights (``difftop.evaluate.main`` checked the settings before loading it).
Episodes are seeded ``seed, seed+1, ...`` (the eval config's ``seed``) and the policy's own sampling
(latents, diffusion noise) is seeded too, so the numbers repeat exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from difftop.errors import UserError
from difftop.utils.device import resolve_device

__all__ = ["evaluate_il_checkpoint"]


def evaluate_il_checkpoint(cfg: DictConfig, state: dict, path: Path) -> dict:
    from difftop.il.policies import policy_from_state
    from difftop.il.rollout import check_action_frame, rollout
    from difftop.tasks import get_task

    run = OmegaConf.create(state["config"])
    device = resolve_device(cfg.device)
    threads = int(cfg.threads) or int(run.get("threads", 0))  # 0: the run's own setting
    if threads:
        torch.set_num_threads(threads)
    episodes = int(cfg.episodes)
    try:
        policy = policy_from_state(state).to(device)
    except (KeyError, RuntimeError, TypeError) as e:
        raise UserError(f"checkpoint {path}: cannot rebuild its policy ({type(e).__name__}: {e})") from None
    check_action_frame(policy, get_task(run.task), f"checkpoint {path}")
    out = Path(str(cfg.out_dir))  # difftop.evaluate.main has filled and checked it
    step = int(state["step"])
    video = out / f"checkpoint_{step:08d}.mp4" if cfg.video else None
    torch.manual_seed(int(cfg.seed))
    res = rollout(policy, run.task, run.obs, episodes, int(cfg.seed),
                  max_steps=int(run.get("max_steps", 300)), batch=int(run.get("eval_batch", 25)), video=video,
                  device=device, progress=True)
    n_ok = sum(res["success"])
    result = {"checkpoint": str(path), "task": run.task, "policy": run.policy, "obs": run.obs, "step": step,
              "base": run.get("base"), "init": run.get("policy_params", {}).get("init"), **res}
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=2))
    metrics = "".join(f", mean {m.name.replace('_', ' ')} {res[f'mean_{m.name}']:.3f} +- "
                      f"{res[f'std_{m.name}']:.3f}" for m in get_task(run.task).metrics)
    print(f"{run.policy} on {run.task} ({run.obs}) at step {step}: success rate {res['success_rate']:.2f} "
          f"({n_ok}/{episodes}){metrics}")
    for v in res["videos"]:
        print(f"video: {v}")
    return result
