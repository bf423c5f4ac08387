"""Time one evaluation (5 episodes) of a trained RL run, one episode at a time vs in lockstep.

``difftop rl`` and ``difftop eval`` run evaluation episodes in lockstep (one batched act per step,
``difftop.rl.trainer.evaluate``). This measures what that buys on a saved run:

    .venv/bin/python -m difftop.diagnostics.eval_lockstep_timing \
        runs/cpu-memory/reacher-easy/difftop/seed1 [max_iters]
"""

from __future__ import annotations

import argparse
import time

import torch
from omegaconf import OmegaConf

from difftop.diagnostics._runs import rl_checkpoint
from difftop.rl.trainer import build, evaluate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a trained RL run directory (with its checkpoint)")
    ap.add_argument("max_iters", type=int, nargs="?",
                    help="the solver's iteration budget (default: the run's)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    run = args.run
    state = rl_checkpoint(run)
    cfg = OmegaConf.create(state["config"])
    cfg.device = "cpu"
    if args.max_iters is not None:
        cfg.trajopt.max_iters = args.max_iters
    _, envs, agent = build(cfg, eval_episodes=5)
    agent.load_state_dict(state["agent"], weights_only=True)
    step = int(state["agent_step"])
    for n in (5, 1):
        t = time.perf_counter()
        returns, _ = evaluate(agent, envs[:n], 5, step, 10**6 + 1000 * int(cfg.seed))
        print(f"{cfg.agent} {cfg.task}, {n} env(s): {time.perf_counter() - t:.1f} s, "
              f"returns {[round(r, 1) for r in returns]}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
