"""How good is DiffTOP's policy gradient through solves cut short by ``max_iters``? (a diagnostic)

Loads a trained DiffTOP RL run (its checkpoint and replay buffer), takes ``--states`` observations
from the buffer and, for each, solves as the agent acts in training (B = 1, pi's rollout as the warm
start, the run's solver settings) and takes the gradient of the PG loss ``-c0 min Q_s(s, a*_0)``
with respect to the PG parameters (encoder, dynamics, reward, latent Q). It compares the gradient
under each ``implicit_unconverged`` mode with a reference from solves run to convergence
(``--ref-iters`` iterations, tol 1e-6, exact implicit backward): per-sample cosine and norm ratio,
the cosine of the summed gradient (what the online scheme applies once per episode), and the time
per state of the solve and its PG backward.

    .venv/bin/python -m difftop.diagnostics.pg_gradient_quality runs/cpu-memory/reacher-easy/difftop/seed1
    .venv/bin/python -m difftop.diagnostics.pg_gradient_quality RUN --max-iters 20 50 100   # other budgets
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from omegaconf import OmegaConf

from difftop.diagnostics._runs import buffer_file, rl_checkpoint
from difftop.rl.trainer import build
from difftop.trajopt.info import NOT_CONVERGED


def pg_gradients(agent, obs: torch.Tensor, step: int, **trajopt
                 ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """(per-sample flat PG gradients (N, P), converged (N,), iterations (N,)) under these solver settings."""
    actor = agent.actor  # DiffTOP's TrajOptActor: the solve, pi's warm start, the PG loss and parameters
    base = actor.trajopt
    actor.trajopt = base.replace(**trajopt)
    try:
        grads, conv, iters = [], [], []
        for i in range(len(obs)):
            o = obs[i:i + 1]
            z0 = agent.model.h(o)
            init = actor._init_actions(z0, actor.planning_horizon(step) + 1, False)
            a, info = actor.trajopt(actor.objective(z0), init)
            g = torch.autograd.grad(actor._pg_loss(o, a[:, 0]).sum(), actor.pg_params, allow_unused=True)
            grads.append(torch.cat([(x if x is not None else torch.zeros_like(p)).flatten()
                                    for x, p in zip(g, actor.pg_params)]))
            conv.append(not int(info.status[0]) & NOT_CONVERGED)
            iters.append(int(info.iterations[0]))
        return torch.stack(grads), np.array(conv), np.array(iters)
    finally:
        actor.trajopt = base


def trained_agent(run: str):
    """(agent with the run's final weights, on the CPU; run config; agent step) of an RL run directory."""
    state = rl_checkpoint(run)
    cfg = OmegaConf.create(state["config"])
    cfg.device = "cpu"
    _, _, agent = build(cfg, eval_episodes=1)
    agent.load_state_dict(state["agent"], weights_only=True)
    return agent, cfg, int(state["agent_step"])


def buffer_states(run: str, states: int, seed: int) -> torch.Tensor:
    """``states`` observations drawn (seeded) from the stored steps of the run's replay buffer."""
    obs_all = np.load(buffer_file(run))["obs"]
    obs_all = obs_all.reshape(-1, obs_all.shape[-1])
    stored = np.flatnonzero(np.abs(obs_all).sum(1) > 0)
    pick = np.random.default_rng(seed).choice(stored, min(states, len(stored)), replace=False)
    return torch.as_tensor(obs_all[pick], dtype=torch.float32)


def load_run(run: str, states: int, seed: int):
    """(agent, observations (states, obs_dim) from the run's replay buffer, agent step, env steps)."""
    agent, cfg, step = trained_agent(run)
    if cfg.agent != "difftop" or cfg.obs != "state":
        raise SystemExit(f"{run}: needs a state-based difftop run, got {cfg.agent} from {cfg.obs}")
    return agent, buffer_states(run, states, seed), step, step * int(cfg.action_repeat)


def stat(x: np.ndarray, fn, fmt: str = ".3f") -> str:
    """``fn(x)`` formatted, or ``-`` when no sample counts (every reference gradient zero)."""
    return format(fn(x), fmt) if len(x) else "-"


def compare(g: torch.Tensor, ref: torch.Tensor) -> dict:
    """Per-sample cosine and norm ratio (samples with a non-zero reference) and the summed cosine."""
    nz = ref.norm(dim=1) > 0  # samples with every action at a bound have a zero gradient
    return {"cos": torch.nn.functional.cosine_similarity(g, ref, dim=1)[nz].numpy(),
            "ratio": (g.norm(dim=1) / ref.norm(dim=1).clamp(min=1e-12))[nz].numpy(),
            "total": float(torch.nn.functional.cosine_similarity(g.sum(0), ref.sum(0), dim=0))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a DiffTOP RL run directory (a checkpoint and its buffer.npz)")
    ap.add_argument("--states", type=int, default=48)
    ap.add_argument("--ref-iters", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-iters", type=int, nargs="*", default=None,
                    help="solver iteration budgets to compare (default: the run's own)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    agent, obs, step, env_steps = load_run(args.run, args.states, args.seed)
    ref, ref_conv, _ = pg_gradients(agent, obs, step, max_iters=args.ref_iters, tol=1e-6,
                                    implicit_unconverged="exact")
    nz = ref.norm(dim=1) > 0
    print(f"{args.run} at {env_steps} env steps, {len(obs)} buffer states; reference: "
          f"{args.ref_iters} iterations, converged {ref_conv.mean():.2f}, "
          f"zero gradient {(~nz).float().mean():.2f}")
    print("| max_iters | implicit_unconverged | mean iterations | not converged "
          "| per-sample cosine (median, p10) | norm ratio (median, max) | cosine of the summed gradient "
          "| ms per state |")
    print("|---|---|---|---|---|---|---|---|")
    budgets = args.max_iters or [agent.actor.trajopt.max_iters]
    for max_iters, mode in ((k, m) for k in budgets for m in ("memory", "exact")):
        t0 = time.perf_counter()
        g, conv, iters = pg_gradients(agent, obs, step, implicit_unconverged=mode, max_iters=max_iters)
        ms = 1000 * (time.perf_counter() - t0) / len(obs)
        c = compare(g, ref)
        cos, ratio, total = c["cos"], c["ratio"], c["total"]
        print(f"| {max_iters} | {mode} | {iters.mean():.1f} | {1 - conv.mean():.2f} | "
              f"{stat(cos, np.median)}, {stat(cos, lambda x: np.percentile(x, 10))} | "
              f"{stat(ratio, np.median, '.2f')}, {stat(ratio, np.max, '.3g')} | {total:.3f} | {ms:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
