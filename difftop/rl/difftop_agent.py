"""DiffTOP for model-based RL (paper section 4.2, eq. 4-6): TD-MPC whose policy is a trajectory
optimization, trained through the solve.

Acting: a* = argmax_{a_0..a_H} sum_{t<H} gamma^t R(z_t, a_t) + gamma^H Q(z_H, a_H),
z_{t+1} = d(z_t, a_t), z_0 = h(s), solved by :class:`difftop.trajopt.TrajOpt` from the rollout of
pi (``init=pi``) or from zeros (``init=zero``, the paper's Fig. 4 ablation). The planning horizon
H follows TD-MPC's schedule; the min over the twin latent Q is smoothed (``q_tau``) so the optimum
does not sit on a kink. ``terminal=pi`` optimises H actions with terminal min Q(z_H, pi(z_H)) instead
(the official release's objective, TD-MPC's ``estimate_value``): Q's action input is then not a free
variable of the solve. ``mppi_steps``: TD-MPC's MPPI acts for the first agent steps (the release: 6000).
``variant=official`` (configs/variant/official.yaml, :func:`resolve_variant`) sets all of the release's
choices at once.

Structure: :class:`DiffTOPAgent` is TD-MPC's :class:`~difftop.rl.tdmpc.WorldModel` (TOLD and its
learning) composed with a :class:`TrajOptActor`, which holds the solve, Q_s and the policy gradient.

Learning: everything TD-MPC learns, plus
- Q_s(s, a), a twin critic on the raw observation (:class:`difftop.nn.critic.ObsCritic`), trained by TD
  with a target network: y = r + gamma * min Q_s_target(s', pi(h(s'))), weighted like TD-MPC's
  value loss (``value_coef``, rho^t, PER weights), as in the official release, over the first
  ``qs_horizon`` steps of each sampled sub-trajectory (null: all H, as the official release; 1
  makes Q_s's cost H times smaller, which matters from pixels, where its encoder dominates; ``auto``,
  the default: all H for states, 1 for pixels);
- the policy-gradient loss  c0 * -min(Q_s1, Q_s2)(s, a*_0(theta))  back-propagated through the
  solve into the encoder, dynamics, reward and latent Q (never into Q_s or pi). ``pg_mode``:
  ``online``: on every training acting step (the official scheme); gradients are accumulated
  over the episode (``pg_reduce``: their mean, or their sum as the official code accumulates them
  in ``.grad``) and applied by one step of a separate Adam at the episode's end, before that
  episode's TD-MPC updates, which run after the episode, here as in the official loop (its
  ``update2`` after the last acting step, then ``update``; the updates clear the gradients only
  after the PG step used them). The accumulation lives in its own buffers rather than
  in ``.grad``, so it also stays intact where updates do interleave with acting (``difftop bench
  rl`` runs one update per acting step, and every update clears the model's gradients).
  ``batched``: on ``pg_batch_size`` states of every replay minibatch, added to the TD-MPC
  gradient before its clipped optimizer step (our batched layer makes this cheap).
  ``none``: trajectory optimization for acting only (``difftop_noback``, paper Fig. 6).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from difftop.errors import UserError
from difftop.nn.critic import ObsCritic
from difftop.nn.ema import ema_update_
from difftop.rl.replay import Batch
from difftop.rl.schedules import linear_schedule
from difftop.rl.tdmpc import Actor, Agent, MPPIActor, Prepared, TDMPCAgent, WorldModel, clipped_step
from difftop.trajopt import TrajOptConfig, latent_objective

__all__ = ["DiffTOPAgent", "INITS", "PG_MODES", "TERMINALS", "TrajOptActor", "VARIANTS", "make_agent",
           "resolve_qs_horizon", "resolve_variant"]

PG_MODES = ("online", "batched", "none")
INITS = ("pi", "zero")
TERMINALS = ("action", "pi")
VARIANTS = ("difftop", "official")


def resolve_variant(cfg: Any) -> None:
    """``variant=official``: fill the release's per-task settings (``official.tasks.<task>``, else
    ``official.default``) where the config leaves them null: ``action_repeat``, ``trajopt.max_iters``,
    ``trajopt.options.step_size`` and ``.damping``. A value given on the command line is kept. In place."""
    variant = cfg.get("variant", "difftop")
    if variant not in VARIANTS:
        raise UserError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    for key, choices in (("terminal", TERMINALS), ("pg_reduce", ("mean", "sum"))):
        if cfg.get(key) is not None and cfg.get(key) not in choices:
            raise UserError(f"{key} must be one of {', '.join(choices)}, got {cfg.get(key)!r}")
    if variant != "official":
        return
    table = cfg.get("official") or {}
    row = (table.get("tasks") or {}).get(str(cfg.task)) or table.get("default")
    if row is None:
        raise UserError("variant=official needs official.default (configs/variant/official.yaml)")
    if cfg.get("action_repeat") is None:
        cfg.action_repeat = int(row["action_repeat"])
    t = cfg.trajopt
    if t.get("max_iters") is None:
        t.max_iters = int(row["max_iters"])
    if t.get("options") is None:
        t.options = {}
    for key in ("step_size", "damping"):
        if t.options.get(key) is None:
            t.options[key] = float(row[key])


def resolve_qs_horizon(value: Any, pixels: bool) -> Any:
    """``qs_horizon=auto``: all H steps (None, the official release) for states; 1 for pixels, where
    Q_s's own conv encoder over H x B frames (forward, backward and a target pass) dominates the
    update and halves DiffTOP's speed. Other values pass through."""
    if value == "auto":
        return 1 if pixels else None
    return value


class TrajOptActor(Actor):
    """DiffTOP's actor: acts by the trajectory optimization on the world model's TOLD, and learns
    Q_s (TD, in the world model's optimizer) and the policy gradient through the solve."""

    def __init__(self, world_model: WorldModel, obs_shape: tuple[int, ...], action_dim: int):
        super().__init__(world_model)
        cfg = self.cfg
        if cfg.pg_mode not in PG_MODES:
            raise ValueError(f"pg_mode must be one of {list(PG_MODES)}, got {cfg.pg_mode!r}")
        if cfg.init not in INITS:
            raise ValueError(f"init must be one of {list(INITS)}, got {cfg.init!r}")
        self.terminal = cfg.get("terminal") or "action"
        if self.terminal not in TERMINALS:
            raise ValueError(f"terminal must be one of {list(TERMINALS)}, got {self.terminal!r}")
        self.pg_reduce = cfg.get("pg_reduce") or "mean"
        self.mppi_steps = int(cfg.get("mppi_steps") or 0)
        # TD-MPC's planner for the first mppi_steps agent steps (the release's warm-up), else none
        self.mppi = MPPIActor(world_model, action_dim) if self.mppi_steps > 0 else None
        self.pg_mode = cfg.pg_mode
        self.action_dim = int(action_dim)
        self.pixels = world_model.pixels
        self.critic = ObsCritic(tuple(obs_shape), action_dim, latent_dim=cfg.latent_dim, mlp_dim=cfg.mlp_dim,
                                enc_dim=cfg.enc_dim, num_channels=cfg.num_channels,
                                obs_type="pixels" if self.pixels else "state",
                                shared_encoder=cfg.get("critic_shared_encoder")).to(world_model.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.null_critic = self._null_critic(obs_shape, action_dim) if cfg.get("pg_null") else None
        # One optimizer for the TD losses (TOLD + Q_s), as the official release.
        world_model.add_td_parameters(self.critic.parameters())
        m = self.model  # the PG reaches everything the objective depends on, never pi
        self.pg_params = [p for part in (m.encoder, m.dynamics_net, m.reward_net, *m.q_nets)
                          for p in part.parameters()]
        self.pg_optim = torch.optim.Adam(self.pg_params, lr=cfg.pg_lr or cfg.lr)
        t = cfg.trajopt
        self.trajopt = TrajOptConfig.from_mapping(t, where="trajopt", ignore=("q_tau",)).build()
        self.q_tau = float(t.q_tau)
        self._pg_acc: list[torch.Tensor] | None = None
        self._pg_count = 0
        self._pg_loss_sum = 0.0
        self._solve_stats = {"iters": 0.0, "flagged": 0.0, "n": 0}

    # ----------------------------------------------------------------- acting
    def planning_horizon(self, step: int) -> int:
        """TD-MPC's horizon schedule, capped at ``horizon``."""
        return int(min(self.cfg.horizon, linear_schedule(self.cfg.horizon_schedule, step)))

    def _init_actions(self, z0: torch.Tensor, T: int, explore: bool) -> torch.Tensor:
        if self.cfg.init == "zero":
            return z0.new_zeros(z0.shape[0], T, self.action_dim)
        with torch.no_grad():
            acts, z = [], z0.detach()
            for _ in range(T):
                a = self.model.pi(z, self.cfg.min_std if explore else 0.0)
                acts.append(a)
                z = self.model.dynamics(z, a)
        return torch.stack(acts, 1)

    def objective(self, z0: torch.Tensor):
        m, tau = self.model, self.q_tau
        # the model's taped functions: the same values as m.dynamics, m.reward and smooth_min(*m.Q), and
        # graph-free evaluations without autograd (difftop/nn/vjp.py)
        if self.terminal == "pi":
            # H actions, terminal min Q(z_H, pi(z_H)) (the release's): TD-MPC's estimate_value (equal to
            # rounding: the rewards in one call, ~15% faster at batch 1), graph-free evaluations in lm_refine
            return latent_objective(z0, m.dynamics_fn, m.reward_fn, gamma=self.cfg.discount,
                                    state_value=m.pi_value_fn(), batch_rewards=True)
        return latent_objective(z0, m.dynamics_fn, m.reward_fn, terminal=m.q_min_fn(tau),
                                gamma=self.cfg.discount, batch_rewards=True)

    def solve(self, z0: torch.Tensor, step: int, explore: bool, record: bool = True) -> torch.Tensor:
        """a* (B, H+1, m) for latents z0 (B, latent) ((B, H, m) with ``terminal=pi``); differentiable
        when grad mode is on. ``record``: count the solve in the training metrics (evaluation's are not)."""
        T = self.planning_horizon(step) + (self.terminal == "action")
        init = self._init_actions(z0, T, explore)
        a, info = self.trajopt(self.objective(z0), init)
        if not record:
            return a
        s = self._solve_stats
        s["iters"] += float(info.iterations.float().sum())
        s["flagged"] += float((info.status != 0).float().sum())
        s["n"] += int(info.iterations.numel())
        return a

    def act(self, obs: torch.Tensor, *, step: int, t0: bool) -> torch.Tensor:
        if self.mppi is not None and step < self.mppi_steps:
            return self.mppi.act(obs, step=step, t0=t0)
        if self.pg_mode == "online":
            a = self._online_pg(obs, step)
        else:
            with torch.no_grad():
                a = self.solve(self.model.h(obs), step, explore=True)[0, 0]
        std = linear_schedule(self.cfg.explore_std, step)
        if std > 0:
            a = a + std * torch.randn_like(a)
        return a

    def act_batch(self, obs: torch.Tensor, *, step: int, t0: bool) -> torch.Tensor:
        """One batched solve for B states (no exploration, not logged)."""
        if self.mppi is not None and step < self.mppi_steps:
            return self.mppi.act_batch(obs, step=step, t0=t0)
        return self.solve(self.model.h(obs), step, explore=False, record=False)[:, 0]

    # ------------------------------------------------------ policy gradient
    def _null_critic(self, obs_shape, action_dim: int) -> ObsCritic:
        """``pg_null=true`` (a null control, issue 31): a frozen Q_s with random weights (its zero-initialised
        heads included), drawn from its own seed so the run's random streams are untouched. The PG loss then
        has the structure of DiffTOP's but no information about the task."""
        c = self.cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(c.seed) + 7919)
            critic = ObsCritic(tuple(obs_shape), action_dim, latent_dim=c.latent_dim, mlp_dim=c.mlp_dim,
                               enc_dim=c.enc_dim, num_channels=c.num_channels,
                               obs_type="pixels" if self.pixels else "state",
                               shared_encoder=c.get("critic_shared_encoder"))
            with torch.no_grad():
                for p in critic.parameters():
                    if not bool(p.any()):
                        p.normal_(0.0, 0.1)
        return critic.to(self.world_model.device).requires_grad_(False)

    def _pg_loss(self, obs: torch.Tensor, a0: torch.Tensor) -> torch.Tensor:
        """c0 * -min(Q_s1, Q_s2)(s, a*_0), per sample; Q_s's own parameters get no gradient
        (``pg_null``: the frozen random Q_s of :meth:`_null_critic` instead)."""
        if self.null_critic is not None:
            return -self.cfg.c0 * torch.min(*self.null_critic(obs, a0))
        self.critic.requires_grad_(False)
        try:
            q = torch.min(*self.critic(obs, a0))
        finally:
            self.critic.requires_grad_(True)
        return -self.cfg.c0 * q

    def _online_pg(self, obs: torch.Tensor, step: int) -> torch.Tensor:
        with torch.enable_grad():
            a = self.solve(self.model.h(obs), step, explore=True)[:, 0]
            loss = self._pg_loss(obs, a).sum()
            grads = torch.autograd.grad(loss, self.pg_params, allow_unused=True)
        if self._pg_acc is None:
            self._pg_acc = [torch.zeros_like(p) for p in self.pg_params]
        for acc, g in zip(self._pg_acc, grads):
            if g is not None:
                acc.add_(g)
        self._pg_count += 1
        self._pg_loss_sum += float(loss.detach())
        return a.detach()[0]

    def end_episode(self) -> dict[str, float]:
        """The online PG step: the episode's mean (``pg_reduce=sum``: summed) PG gradient, clipped, one
        step of ``pg_optim``."""
        out = self._solve_summary()
        if self.pg_mode != "online" or self._pg_count == 0:
            return out
        scale = 1.0 if self.pg_reduce == "sum" else 1.0 / self._pg_count
        for p, acc in zip(self.pg_params, self._pg_acc):
            p.grad = acc * scale
        norm, ok = clipped_step(self.pg_optim, self.pg_params, self.cfg.pg_grad_clip_norm)
        self.skipped_steps += not ok
        out.update({"pg_loss": self._pg_loss_sum / self._pg_count, "pg_grad_norm": norm})
        self._pg_acc, self._pg_count, self._pg_loss_sum = None, 0, 0.0
        return out

    def _solve_summary(self) -> dict[str, float]:
        s = self._solve_stats
        if s["n"] == 0:
            return {}
        out = {"solve_iters": s["iters"] / s["n"], "solve_flagged": s["flagged"] / s["n"]}
        self._solve_stats = {"iters": 0.0, "flagged": 0.0, "n": 0}
        return out

    # --------------------------------------------------------------- learning
    def losses(self, b: Batch, prep: Prepared) -> tuple[torch.Tensor, dict]:
        """Q_s's TD loss over the first ``qs_horizon`` steps of the sub-trajectory (all H by
        default, as the official release), in one batch. It reuses the update's augmented frames
        and TOLD's target action pi(h(s')): y_t = r_t + gamma * min Q_s_target(s_{t+1}, pi(h(s_{t+1})))."""
        c = self.cfg
        H, B = b.action.shape[:2]
        q = resolve_qs_horizon(c.get("qs_horizon", "auto"), self.pixels)
        k = H if q is None else max(1, min(int(q), H))
        q1, q2 = self.critic(prep.obs[:k].flatten(0, 1), b.action[:k].flatten(0, 1))
        with torch.no_grad():
            q_next = torch.min(*self.critic_target(prep.obs[1:k + 1].flatten(0, 1),
                                                   prep.next_action[:k].flatten(0, 1)))
            y = b.reward[:k].flatten(0, 1) + c.discount * q_next
        rho = (c.rho ** torch.arange(k, device=y.device, dtype=y.dtype)).view(k, 1, 1)
        val_s = (rho * ((q1 - y).pow(2) + (q2 - y).pow(2)).view(k, B, -1)).sum(0)
        return c.value_coef * val_s.clamp(max=1e4), {"value_s_loss": val_s.mean().item()}

    def backward(self, b: Batch, prep: Prepared, step: int) -> dict:
        """``pg_mode=batched``: the PG loss on the first ``pg_batch_size`` states of the batch,
        added to the TD gradients before their clipped step."""
        if self.pg_mode != "batched":
            return {}
        n = min(int(self.cfg.pg_batch_size), b.obs.shape[1])
        obs = prep.obs[0, :n]
        a = self.solve(self.model.h(obs), step, explore=False)[:, 0]
        loss = self._pg_loss(obs, a).mean()
        loss.backward()
        return {"pg_loss": float(loss.detach())}

    def update_targets(self) -> None:
        ema_update_(self.critic_target, self.critic, self.cfg.tau)

    def update_metrics(self) -> dict[str, float]:
        return self._solve_summary() if self.pg_mode == "batched" else {}

    # ------------------------------------------------------------ persistence
    def modules(self) -> dict[str, nn.Module]:
        out = {"critic": self.critic, "critic_target": self.critic_target}
        if self.null_critic is not None:
            out["null_critic"] = self.null_critic
        return out

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"pg_optim": self.pg_optim}

    def state_dict(self) -> dict:
        out = {**super().state_dict(), "pg_acc": self._pg_acc, "pg_count": self._pg_count,
               "pg_loss_sum": self._pg_loss_sum, "solve_stats": dict(self._solve_stats)}
        if self.mppi is not None:
            out["mppi"] = self.mppi.state_dict()
        return out

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._pg_acc = state.get("pg_acc")
        self._pg_count = int(state.get("pg_count", 0))
        self._pg_loss_sum = float(state.get("pg_loss_sum", 0.0))
        self._solve_stats = dict(state.get("solve_stats") or {"iters": 0.0, "flagged": 0.0, "n": 0})
        if self.mppi is not None and state.get("mppi") is not None:
            self.mppi.load_state_dict(state["mppi"])


class DiffTOPAgent(Agent):
    """DiffTOP (and ``difftop_noback``: ``pg_mode=none``): the world model, acting by trajectory
    optimization."""

    name = "difftop"

    def __init__(self, cfg: Any, obs_shape: tuple[int, ...], action_dim: int,
                 device: torch.device | str = "cpu"):
        wm = WorldModel(cfg, obs_shape, action_dim, device)
        super().__init__(cfg, wm, TrajOptActor(wm, obs_shape, action_dim), action_dim)


def make_agent(cfg: Any, obs_shape, action_dim: int, device="cpu") -> Agent:
    """The agent named by ``cfg.agent``: tdmpc, difftop or difftop_noback."""
    if cfg.agent == "tdmpc":
        return TDMPCAgent(cfg, obs_shape, action_dim, device)
    if cfg.agent in ("difftop", "difftop_noback"):
        return DiffTOPAgent(cfg, obs_shape, action_dim, device)
    raise ValueError(f"unknown agent {cfg.agent!r}; choose tdmpc, difftop or difftop_noback")
