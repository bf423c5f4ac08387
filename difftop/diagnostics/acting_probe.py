"""Is a run's failure the learned model or the way it acts? (a diagnostic)

Evaluates the final checkpoint of trained RL runs on the same episodes (env seeds ``--seed`` ...)
acting three ways on the *same* learned TOLD model:

- ``solve``: DiffTOP's trajectory optimisation (paper eq. 4) from pi's rollout (a TD-MPC run gets
  DiffTOP's acting with rl.yaml's current trajopt settings; its Q_s critic is not needed to act);
- ``mppi``: TD-MPC's MPPI planner (6 iterations, 512 samples; evaluation mode, seeded as `difftop eval`);
- ``pi``: the policy prior alone, a = pi(h(s)).

Why: on reacher-easy an episode either reaches the target (return ~1000) or never does (0). A
DiffTOP run that fails episodes its TD-MPC twin solves may have learned a worse model, or may act
worse on a good one (a gradient-based solve from pi's warm start can stop in a local optimum that
MPPI's sampling escapes). Swapping the acting method on one model separates the two.

    .venv/bin/python -m difftop.diagnostics.acting_probe runs/cpu/reacher-easy/{difftop,tdmpc}/seed1 \
        --episodes 8
    .venv/bin/python -m difftop.diagnostics.acting_probe runs/cpu-explore0/reacher-easy/difftop/seed1 \
        --modes pi --trace 20002
    .venv/bin/python -m difftop.diagnostics.acting_probe runs/cpu/cartpole-swingup/{tdmpc,difftop}/seed1 \
        --modes mppi solve --episodes 5 --actions

``--set trajopt.max_iters=2`` (any dotted config key) changes how ``solve`` acts, and every ``solve`` row
also says what the solve did to the objectives, per acting step: ``dJ``, the learned objective (the
reward + terminal Q that the solve maximises) at a* minus at pi's rollout, its warm start; ``dQs``, the
state critic Q_s (trained by TD on real transitions, never an input of the solve) at a*_0 minus at
pi's first action; ``|da0|``, how far the executed action moved from pi's. A solve that raises dJ while
Q_s falls is climbing errors of the learned objective:

    .venv/bin/python -m difftop.diagnostics.acting_probe runs/probes/finger-spin-difftop-s1-60k \
        --modes solve --episodes 5 --set trajopt.max_iters=2

``--actions`` asks instead how hard each method pushes once the task is done: over the second half of
each episode (on cartpole-swingup the pole is up and balanced by then), the mean |a|, the mean a^2
(cartpole's reward is multiplied by (4 + 1 - a^2) / 5, so an agent that balances with large actions
loses reward every step), the share of action entries at a bound (|a| > 0.95) and the mean reward per
agent step.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from difftop.diagnostics._runs import rl_checkpoint
from difftop.rl.tdmpc import MPPIActor
from difftop.rl.trainer import build, evaluate


class _Acting:
    """``act_batch`` of one acting method over an agent's model (what ``trainer.evaluate`` calls);
    in ``solve`` mode it also keeps, per acting step, dJ, dQs and |da0| (module docstring)."""

    def __init__(self, agent, mode: str):
        self.agent, self.mode = agent, mode
        # MPPI on any agent's TOLD: a TD-MPC agent's own actor, else one built on its world model
        # (its own warm start, kept across the calls of an episode as in ``difftop eval``)
        self.mppi = None
        if mode == "mppi":
            self.mppi = (agent.actor if isinstance(agent.actor, MPPIActor)
                         else MPPIActor(agent.world_model, agent.action_dim))
        self.dJ: list[np.ndarray] = []
        self.dQs: list[np.ndarray] = []
        self.da0: list[np.ndarray] = []

    def _solve(self, obs: np.ndarray, step: int) -> np.ndarray:
        a = self.agent
        actor = a.actor  # a TrajOptActor: the solve, its warm start and Q_s
        with torch.no_grad():
            obs_t = torch.as_tensor(np.asarray(obs), device=a.device)
            z0 = a.model.h(obs_t)
            init = actor._init_actions(z0, actor.planning_horizon(step) + 1, explore=False)
            J = actor.objective(z0)
            sol, _ = actor.trajopt(J, init)
            self.dJ.append((J(sol) - J(init)).cpu().numpy())
            qs = [torch.min(*actor.critic(obs_t, x[:, 0])).squeeze(-1) for x in (sol, init)]
            self.dQs.append((qs[0] - qs[1]).cpu().numpy())
            self.da0.append((sol[:, 0] - init[:, 0]).norm(dim=-1).cpu().numpy())
            return a._finite(sol[:, 0])

    def summary(self) -> str:
        """``dJ | dQs | |da0| | share of steps with dJ > 0 and dQs < 0`` columns (``-`` unless solve)."""
        if not self.dJ:
            return "- | - | - | -"
        dJ, dQs, da0 = (np.concatenate(x) for x in (self.dJ, self.dQs, self.da0))
        return (f"{dJ.mean():+.3f} | {dQs.mean():+.3f} | {da0.mean():.3f} | "
                f"{((dJ > 0) & (dQs < 0)).mean():.2f}")

    def act_batch(self, obs: np.ndarray, *, step: int, t0: bool) -> np.ndarray:
        a = self.agent
        if self.mode == "mppi":
            with torch.no_grad():
                obs_t = torch.as_tensor(np.asarray(obs), device=a.device)
                return a._finite(self.mppi.act_batch(obs_t, step=step, t0=t0))
        if self.mode == "pi":
            with torch.no_grad():
                return a._finite(a.model.pi(a.model.h(torch.as_tensor(np.asarray(obs), device=a.device))))
        return self._solve(obs, step)  # solve: a DiffTOP agent's own acting (act_batch), measured


def agent_for(run: str, mode: str, seed: int, episodes: int, overrides: list[str] = ()):
    """(run config, agent step, agent holding the run's trained model (and Q_s critic, if it has one)
    and able to act by ``mode``, its ``episodes`` evaluation envs), built after
    ``torch.manual_seed(seed)``; ``overrides``: ``key=value`` dotlist applied to the run's config."""
    state = rl_checkpoint(run)
    cfg = OmegaConf.create(state["config"])
    cfg.device = "cpu"
    if mode == "solve" and cfg.agent == "tdmpc":  # DiffTOP's acting on TD-MPC's model
        current = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "rl.yaml")
        cfg.agent, cfg.trajopt = "difftop", current.trajopt
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    torch.manual_seed(seed)
    _, envs, agent = build(cfg, eval_episodes=episodes)
    modules = state["agent"]["modules"]
    agent.model.load_state_dict(modules["model"])
    if "critic" in modules and hasattr(agent.actor, "critic"):
        agent.actor.critic.load_state_dict(modules["critic"])
    return cfg, int(state["agent_step"]), agent, envs


def trace(run: str, mode: str, seeds: list[int], every: int = 25) -> None:
    """Where a reacher episode goes: every ``every`` agent steps, the finger-target distance, the
    joint angles, the action and the latent model's min Q of that action."""
    cfg, step, agent, envs = agent_for(run, mode, seeds[0] if seeds else 0, 1)
    acting, env = _Acting(agent, mode), envs[0]
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        physics = env.unwrapped._env.physics
        print(f"{run}, {mode}, env seed {seed}")
        for t in range(cfg.episode_length // cfg.action_repeat):
            a = acting.act_batch(obs[None], step=step, t0=t == 0)[0]
            if t % every == 0:
                d = physics.named.data.geom_xpos["target", :2] - physics.named.data.geom_xpos["finger", :2]
                with torch.no_grad():
                    z = agent.model.h(torch.as_tensor(obs[None]))
                    q = float(torch.min(*agent.model.Q(z, torch.as_tensor(a[None]))))
                print(f"  t={t:3d} distance {np.hypot(*d):.3f} qpos {np.round(physics.data.qpos, 2)} "
                      f"action {np.round(a, 2)} Q {q:.1f}")
            obs, *_ = env.step(a)


def action_stats(run: str, mode: str, episodes: int, seed: int) -> str:
    """One table row of ``--actions``: the second half of ``episodes`` episodes from env seed ``seed``."""
    cfg, step, agent, envs = agent_for(run, mode, seed, 1)
    acting, env = _Acting(agent, mode), envs[0]
    n = cfg.episode_length // cfg.action_repeat
    acts, rewards, returns = [], [], []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        total = 0.0
        for t in range(n):
            a = acting.act_batch(obs[None], step=step, t0=t == 0)[0]
            obs, r, *_ = env.step(a)
            total += float(r)
            if t >= n // 2:
                acts.append(np.clip(a, -1, 1))
                rewards.append(float(r))
        returns.append(total)
    a = np.array(acts)
    return (f"| {run} | {mode} | {np.mean(returns):.1f} | {np.abs(a).mean():.3f} | {(a ** 2).mean():.3f} | "
            f"{(np.abs(a) > 0.95).mean():.2f} | {np.mean(rewards):.3f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="finished state-based RL run directories")
    ap.add_argument("--modes", nargs="+", default=["solve", "mppi", "pi"], choices=["solve", "mppi", "pi"])
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--seed", type=int, default=20000, help="env seed of the first episode (final20's)")
    ap.add_argument("--trace", type=int, nargs="*", default=None,
                    help="instead: print every 25th step of these env seeds (finger-target distance, joint "
                         "angles, action, the latent min Q) for reacher runs")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides for the acting, e.g. trajopt.max_iters=2 trajopt.solver=theseus")
    ap.add_argument("--actions", action="store_true",
                    help="instead: action statistics over the second half of each episode")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.actions:
        print(f"env seeds {args.seed}.., second half of each episode\n")
        print("| run | acting | return | mean abs(a) | mean a^2 | at a bound | reward per agent step |")
        print("|---|---|---|---|---|---|---|")
        for run in args.runs:
            for mode in args.modes:
                print(action_stats(run, mode, args.episodes, args.seed), flush=True)
        return 0
    if args.trace is not None:
        for run in args.runs:
            for mode in args.modes:
                trace(run, mode, args.trace)
        return 0
    if args.set:
        print(f"overrides: {' '.join(args.set)}\n")
    print(f"| run | acting | mean +- std | episodes < 50 | returns (env seeds {args.seed}..) | s "
          "| dJ | dQs | abs(da0) | dJ > 0, dQs < 0 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        for mode in args.modes:
            _, step, agent, envs = agent_for(run, mode, args.seed, args.episodes, args.set)
            acting = _Acting(agent, mode)
            t0 = time.perf_counter()
            returns, _ = evaluate(acting, envs, args.episodes, step, args.seed)
            r = np.array(returns)
            print(f"| {run} | {mode} | {r.mean():.1f} +- {r.std():.1f} | {int((r < 50).sum())} | "
                  f"{' '.join(f'{x:.0f}' for x in r)} | {time.perf_counter() - t0:.0f} | "
                  f"{acting.summary()} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
