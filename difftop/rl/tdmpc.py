"""TD-MPC (Hansen et al., 2022), and the frame every model-based agent here is built from.

An agent is a :class:`WorldModel` and an :class:`Actor`, composed by :class:`Agent`:

- :class:`WorldModel`: TOLD, its target copy, TD-MPC's losses, the TD optimizer (TOLD's
  parameters plus any an actor adds: DiffTOP's Q_s shares it, as the official release), pi's
  optimizer and update, and the target EMA. The same for every agent.
- the actor: how actions are chosen, plus what it learns beyond the world model. TD-MPC's
  :class:`MPPIActor` plans with MPPI and learns nothing more; DiffTOP's
  :class:`difftop.rl.difftop_agent.TrajOptActor` solves a trajectory optimization and adds Q_s's
  TD loss and the policy gradient through the solve.
- :class:`Agent`: what the trainer calls (``act``, ``act_batch``, ``update``, ``end_episode``,
  ``state_dict``): seed-step random actions, replay sampling, one update that adds the actor's
  losses to the world model's before one clipped step, and persistence.

The losses, coefficients, schedules and target updates follow TD-MPC's paper and release
(read for facts): per step t of a sampled sub-trajectory, weighted by rho^t,
  consistency  ||d(z_t, a_t) - h_target(s_{t+1})||^2 (mean over latent dims),
  reward       (R(z_t, a_t) - r_t)^2,
  value        sum_i (Q_i(z_t, a_t) - y_t)^2,  y_t = r_t + gamma * min Q_target(h(s'), pi(h(s'))),
then ``2 * consistency + 0.5 * reward + 0.1 * value`` weighted by the PER importance weights,
gradient scaled by 1/H, clipped at norm 10; priorities from the L1 TD errors; pi maximises
min(Q1, Q2) on the detached latent rollout; target EMA (tau 0.01) every ``update_freq`` updates.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from difftop.nn.ema import ema_update_
from difftop.nn.told import TOLD
from difftop.rl.augment import RandomShift
from difftop.rl.mppi import MPPIPlanner
from difftop.rl.replay import Batch

__all__ = ["LEGACY_ACTOR_KEYS", "Actor", "Agent", "MPPIActor", "Prepared", "TDMPCAgent", "WorldModel",
           "clipped_step", "upgrade_state"]


@dataclass
class Prepared:
    """The no-gradient part of one update, shared by TOLD's losses and an actor's extra ones."""

    obs: torch.Tensor            # (H+1, B, *obs): augmented once per update
    next_z_target: torch.Tensor  # (H, B, Z): target encoder of s_{t+1} (consistency targets)
    next_action: torch.Tensor    # (H, B, m): pi(h(s_{t+1})) with target-policy noise
    td_target: torch.Tensor      # (H, B, 1): r_t + gamma * min Q_target(h(s_{t+1}), next_action)


def _clip(params: list[torch.Tensor], max_norm: float) -> tuple[float, bool]:
    """Clip gradients; report (norm, finite). A non-finite norm means the step must be skipped."""
    norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm, error_if_nonfinite=False))
    return norm, math.isfinite(norm)


def clipped_step(optim: torch.optim.Optimizer, params: list[torch.Tensor], max_norm: float
                 ) -> tuple[float, bool]:
    """Clip the gradients of ``params`` at ``max_norm``, step ``optim`` unless their norm is not
    finite (one bad batch must not poison the weights), then clear them; returns (norm, stepped)."""
    norm, ok = _clip(params, max_norm)
    if ok:
        optim.step()
    optim.zero_grad(set_to_none=True)
    return norm, ok


class WorldModel:
    """TOLD with TD-MPC's learning: losses, TD optimizer, pi update and target EMA.

    ``cfg`` is the run config (see ``difftop/configs/rl.yaml``); ``lr`` must be a number.
    """

    def __init__(self, cfg: Any, obs_shape: tuple[int, ...], action_dim: int,
                 device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        self.pixels = cfg.obs == "pixels"
        self.model = TOLD(tuple(obs_shape), action_dim, latent_dim=cfg.latent_dim, mlp_dim=cfg.mlp_dim,
                          enc_dim=cfg.enc_dim, num_channels=cfg.num_channels,
                          obs_type="pixels" if self.pixels else "state").to(self.device)
        self.target = copy.deepcopy(self.model).requires_grad_(False)
        self.optim = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.pi_optim = torch.optim.Adam(self.model.pi_net.parameters(), lr=cfg.lr)
        self.aug = RandomShift(cfg.image_size // 21 if self.pixels else 0)

    def add_td_parameters(self, params: Iterable[torch.Tensor]) -> None:
        """Train ``params`` with the TD optimizer too (one more parameter group, one clipped step)."""
        self.optim.add_param_group({"params": list(params)})

    def td_parameters(self) -> list[torch.Tensor]:
        """Everything the TD optimizer steps, in its order: TOLD's parameters, then the added ones."""
        return [p for g in self.optim.param_groups for p in g["params"]]

    @torch.no_grad()
    def prepare(self, b: Batch) -> Prepared:
        """Everything of an update that needs no gradient, for all H steps in one batch: one
        augmentation of every frame (shared by every loss of the update), the target encoder's
        next latents, and the TD targets y_t = r_t + gamma * min Q_target(h(s'), pi(h(s')))."""
        H, B = b.action.shape[:2]
        obs = self.aug(b.obs.flatten(0, 1)).unflatten(0, (H + 1, B))
        nxt = obs[1:].flatten(0, 1)
        next_z = self.model.h(nxt)
        next_action = self.model.pi(next_z, self.cfg.min_std)
        y = b.reward.flatten(0, 1) + self.cfg.discount * torch.min(*self.target.Q(next_z, next_action))
        return Prepared(obs=obs, next_z_target=self.target.h(nxt).unflatten(0, (H, B)),
                        next_action=next_action.unflatten(0, (H, B)), td_target=y.unflatten(0, (H, B)))

    def losses(self, b: Batch, prep: Prepared | None = None
               ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, dict]:
        """(per-sample weighted TD-MPC loss (B, 1), detached latents z_0..z_H for the pi update,
        PER priorities (B, 1), metrics)."""
        c = self.cfg
        prep = self.prepare(b) if prep is None else prep
        H = b.action.shape[0]
        z = self.model.h(prep.obs[0])
        zs = [z.detach()]
        cons = rew = val = prio = 0.0
        for t in range(H):
            q1, q2 = self.model.Q(z, b.action[t])
            z, r_pred = self.model.next(z, b.action[t])
            next_z, y = prep.next_z_target[t], prep.td_target[t]
            zs.append(z.detach())
            rho = c.rho ** t
            cons = cons + rho * (z - next_z).pow(2).mean(-1, keepdim=True)
            rew = rew + rho * (r_pred - b.reward[t]).pow(2)
            val = val + rho * ((q1 - y).pow(2) + (q2 - y).pow(2))
            prio = prio + rho * ((q1 - y).abs() + (q2 - y).abs())
        total = (c.consistency_coef * cons.clamp(max=1e4) + c.reward_coef * rew.clamp(max=1e4)
                 + c.value_coef * val.clamp(max=1e4))
        metrics = {"consistency_loss": cons.mean().item(), "reward_loss": rew.mean().item(),
                   "value_loss": val.mean().item()}
        return total, zs, prio.detach(), metrics

    def td_step(self) -> tuple[float, bool]:
        """The TD optimizer's clipped step over every parameter it trains."""
        return clipped_step(self.optim, self.td_parameters(), self.cfg.grad_clip_norm)

    def update_pi(self, zs: list[torch.Tensor]) -> float:
        """pi maximises min(Q1, Q2) on the detached latents (Q's parameters get no gradient)."""
        self.pi_optim.zero_grad(set_to_none=True)
        self.model.track_q_grad(False)
        try:
            loss = 0.0
            for t, z in enumerate(zs):
                a = self.model.pi(z, self.cfg.min_std)
                loss = loss - torch.min(*self.model.Q(z, a)).mean() * (self.cfg.rho ** t)
            loss.backward()
            _, ok = _clip(list(self.model.pi_net.parameters()), self.cfg.grad_clip_norm)
            if ok:
                self.pi_optim.step()
        finally:
            self.model.track_q_grad(True)
        return float(loss.detach())

    def update_targets(self) -> None:
        ema_update_(self.target, self.model, self.cfg.tau)

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "target": self.target}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"optim": self.optim, "pi_optim": self.pi_optim}


class Actor:
    """How an agent acts on a :class:`WorldModel`, and what it learns beyond it (here: nothing).

    ``act`` / ``act_batch`` take observation tensors ``(B, *obs)`` and return raw actions (the
    agent makes them finite and clips them). The learning hooks run inside :meth:`Agent.update`:
    ``losses`` adds per-sample terms to the TD loss, ``backward`` adds gradients before the TD
    optimizer's step, ``update_targets`` runs with the world model's EMA, ``update_metrics`` ends
    the update's metrics; ``end_episode`` runs after every training episode.
    """

    def __init__(self, world_model: WorldModel):
        self.world_model = world_model
        self.model = world_model.model
        self.cfg = world_model.cfg
        self.skipped_steps = 0  # optimizer steps of the actor's own skipped for non-finite gradients

    def act(self, obs: torch.Tensor, *, step: int, t0: bool) -> torch.Tensor:
        """The training action ``(m,)`` for one observation ``(1, *obs)``."""
        raise NotImplementedError

    def act_batch(self, obs: torch.Tensor, *, step: int, t0: bool) -> torch.Tensor:
        """Evaluation actions ``(B, m)`` (no exploration), called under ``torch.no_grad``."""
        raise NotImplementedError

    def losses(self, b: Batch, prep: Prepared) -> tuple[torch.Tensor | float, dict]:
        return 0.0, {}

    def backward(self, b: Batch, prep: Prepared, step: int) -> dict:
        return {}

    def update_targets(self) -> None:
        pass

    def update_metrics(self) -> dict[str, float]:
        return {}

    def end_episode(self) -> dict[str, float]:
        return {}

    def modules(self) -> dict[str, nn.Module]:
        return {}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {}

    def state_dict(self) -> dict:
        """Run state that is not a module or an optimizer (warm starts, accumulated gradients)."""
        return {"skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        self.skipped_steps = int(state.get("skipped_steps", 0))


class MPPIActor(Actor):
    """TD-MPC's actor: MPPI planning on the world model's TOLD (:class:`difftop.rl.mppi.MPPIPlanner`)."""

    def __init__(self, world_model: WorldModel, action_dim: int):
        super().__init__(world_model)
        c = self.cfg
        self.planner = MPPIPlanner(
            self.model, action_dim, horizon=c.horizon, iterations=c.iterations,
            num_samples=c.num_samples, num_elites=c.num_elites, mixture_coef=c.mixture_coef,
            min_std=c.min_std, max_std=c.max_std, temperature=c.temperature,
            momentum=c.momentum, discount=c.discount, std_schedule=c.std_schedule,
            horizon_schedule=c.horizon_schedule)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, *, step: int, t0: bool) -> torch.Tensor:
        return self.planner.plan(self.model.h(obs), t0=t0, eval_mode=False, step=step)[0]

    def act_batch(self, obs: torch.Tensor, *, step: int, t0: bool) -> torch.Tensor:
        """Episodes run in lockstep: MPPI keeps one warm start per state; ``t0`` at their first step."""
        return self.planner.plan(self.model.h(obs), t0=t0, eval_mode=True, step=step)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "prev_mean": self.planner.prev_mean}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        prev = state.get("prev_mean")  # checkpoints load on the CPU; a GPU run resumes on cuda
        self.planner.prev_mean = None if prev is None else prev.to(self.world_model.device)


#: top-level keys of agent state_dicts written before the world model / actor split -> their new
#: key in ``state["actor"]`` (``modules`` and ``optimizers`` kept their names)
LEGACY_ACTOR_KEYS = {"planner_prev_mean": "prev_mean", "pg_acc": "pg_acc", "pg_count": "pg_count",
                     "pg_loss_sum": "pg_loss_sum"}


def upgrade_state(state: dict) -> dict:
    """An agent state_dict in the current layout (old checkpoints kept the actor's state at the top)."""
    if "actor" in state:
        return state
    new = {k: v for k, v in state.items() if k not in LEGACY_ACTOR_KEYS}
    new["actor"] = {LEGACY_ACTOR_KEYS[k]: v for k, v in state.items() if k in LEGACY_ACTOR_KEYS}
    return new


class Agent:
    """A world model and an actor behind the interface the trainer calls (see the module docstring)."""

    name = "agent"

    def __init__(self, cfg: Any, world_model: WorldModel, actor: Actor, action_dim: int):
        self.cfg = cfg
        self.world_model = world_model
        self.actor = actor
        self.device = world_model.device
        self.action_dim = int(action_dim)
        self.rng = np.random.default_rng(cfg.seed)  # seed-step actions and replay sampling
        self.updates = 0
        self._skipped_td = 0

    @property
    def model(self) -> TOLD:
        """The world model's TOLD."""
        return self.world_model.model

    @property
    def skipped_updates(self) -> int:
        """Optimizer steps skipped for non-finite gradients: TD steps and the actor's own."""
        return self._skipped_td + self.actor.skipped_steps

    # ----------------------------------------------------------------- acting
    def random_action(self) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, self.action_dim).astype(np.float32)

    def act(self, obs: np.ndarray, *, step: int, t0: bool, eval_mode: bool = False) -> np.ndarray:
        """Action for one observation; uniform random during the seed steps (training only)."""
        if eval_mode:
            return self.act_batch(np.asarray(obs)[None], step=step, t0=t0)[0]
        if step < self.cfg.seed_steps:
            return self.random_action()
        obs_t = torch.as_tensor(np.asarray(obs), device=self.device).unsqueeze(0)
        return self._finite(self.actor.act(obs_t, step=step, t0=t0))

    def act_batch(self, obs: np.ndarray, *, step: int, t0: bool) -> np.ndarray:
        """Evaluation actions (B, A) for a batch of observations (B, ...), episodes in lockstep."""
        with torch.no_grad():
            obs_t = torch.as_tensor(np.asarray(obs), device=self.device)
            return self._finite(self.actor.act_batch(obs_t, step=step, t0=t0))

    @staticmethod
    def _finite(a: torch.Tensor) -> np.ndarray:
        a = torch.nan_to_num(a.detach(), nan=0.0).clamp(-1.0, 1.0)
        return a.cpu().numpy().astype(np.float32)

    def end_episode(self) -> dict[str, float]:
        """Called after every training episode (DiffTOP's online PG step lives in its actor)."""
        return self.actor.end_episode()

    # --------------------------------------------------------------- learning
    def update(self, buffer, step: int) -> dict[str, float]:
        """One gradient update on a prioritized replay batch; returns scalar metrics."""
        c, wm = self.cfg, self.world_model
        H = min(c.horizon, max(1, buffer.horizon))
        b = buffer.sample(c.batch_size, self.rng, horizon=H, device=self.device)
        wm.optim.zero_grad(set_to_none=True)
        prep = wm.prepare(b)
        total, zs, prio, metrics = wm.losses(b, prep)
        extra, extra_metrics = self.actor.losses(b, prep)
        total = total + extra
        weighted = (total.squeeze(-1) * b.weights).mean()
        (weighted / H).backward()
        metrics.update(extra_metrics)
        metrics.update(self.actor.backward(b, prep, step))
        norm, ok = wm.td_step()
        if ok:
            buffer.update_priorities(b.idxs, prio.clamp(max=1e4))
        else:
            self._skipped_td += 1
        metrics["pi_loss"] = wm.update_pi(zs)
        if step % c.update_freq == 0:
            wm.update_targets()
            self.actor.update_targets()
        self.updates += 1
        metrics.update({"total_loss": total.mean().item(), "weighted_loss": weighted.item(),
                        "grad_norm": norm, "skipped_updates": float(self.skipped_updates)})
        metrics.update(self.actor.update_metrics())
        return metrics

    # ------------------------------------------------------------ persistence
    def modules(self) -> dict[str, nn.Module]:
        return {**self.world_model.modules(), **self.actor.modules()}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {**self.world_model.optimizers(), **self.actor.optimizers()}

    def state_dict(self) -> dict:
        return {
            "modules": {k: m.state_dict() for k, m in self.modules().items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()},
            "actor": self.actor.state_dict(),
            "rng": self.rng.bit_generator.state,
            "updates": self.updates, "skipped_updates": self.skipped_updates,
        }

    def load_state_dict(self, state: dict, *, weights_only: bool = False) -> None:
        """Restore a state_dict, of this layout or an older one (:func:`upgrade_state`);
        ``weights_only``: the modules only (evaluation)."""
        state = upgrade_state(state)
        for k, m in self.modules().items():
            m.load_state_dict(state["modules"][k])
        if weights_only:
            return
        for k, o in self.optimizers().items():
            o.load_state_dict(state["optimizers"][k])
        self.rng.bit_generator.state = state["rng"]
        self.actor.load_state_dict(state["actor"])
        self.updates = int(state.get("updates", 0))
        self._skipped_td = int(state.get("skipped_updates", 0)) - self.actor.skipped_steps


class TDMPCAgent(Agent):
    """TD-MPC: the world model, acting by MPPI."""

    name = "tdmpc"

    def __init__(self, cfg: Any, obs_shape: tuple[int, ...], action_dim: int,
                 device: torch.device | str = "cpu"):
        wm = WorldModel(cfg, obs_shape, action_dim, device)
        super().__init__(cfg, wm, MPPIActor(wm, action_dim), action_dim)
