"""TD-MPC (Hansen et al., 2022): TOLD model learning plus MPPI planning, batched on CPU or GPU.

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
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from difftop.nn.told import TOLD
from difftop.rl.augment import RandomShift
from difftop.rl.mppi import MPPIPlanner
from difftop.rl.replay import Batch
from difftop.rl.schedules import linear_schedule

__all__ = ["TDMPCAgent", "Prepared", "ema_"]


@dataclass
class Prepared:
    """The no-gradient part of one update, shared by TOLD's losses and DiffTOP's extra ones."""

    obs: torch.Tensor            # (H+1, B, *obs): augmented once per update
    next_z_target: torch.Tensor  # (H, B, Z): target encoder of s_{t+1} (consistency targets)
    next_action: torch.Tensor    # (H, B, m): pi(h(s_{t+1})) with target-policy noise
    td_target: torch.Tensor      # (H, B, 1): r_t + gamma * min Q_target(h(s_{t+1}), next_action)


@torch.no_grad()
def ema_(online: nn.Module, target: nn.Module, tau: float) -> None:
    """target <- (1 - tau) * target + tau * online, parameter by parameter."""
    for p, tp in zip(online.parameters(), target.parameters()):
        tp.lerp_(p, tau)


def _clip_and_check(params: list[torch.Tensor], max_norm: float) -> tuple[float, bool]:
    """Clip gradients; report (norm, finite). A non-finite norm means the step must be skipped."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm, error_if_nonfinite=False)
    norm = float(norm)
    return norm, math.isfinite(norm)


class TDMPCAgent:
    """TD-MPC: acting by MPPI on the TOLD model, learning by :meth:`update` on replay batches.

    ``cfg`` is the run config (see ``difftop/configs/rl.yaml``); ``lr`` and ``batch_size`` must
    already be resolved to numbers.
    """

    name = "tdmpc"

    def __init__(self, cfg: Any, obs_shape: tuple[int, ...], action_dim: int,
                 device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        self.obs_shape = tuple(obs_shape)
        self.action_dim = int(action_dim)
        self.pixels = cfg.obs == "pixels"
        self.model = TOLD(self.obs_shape, action_dim, latent_dim=cfg.latent_dim, mlp_dim=cfg.mlp_dim,
                          enc_dim=cfg.enc_dim, num_channels=cfg.num_channels,
                          obs_type="pixels" if self.pixels else "state").to(self.device)
        self.target = copy.deepcopy(self.model).requires_grad_(False)
        self.optim = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.pi_optim = torch.optim.Adam(self.model._pi.parameters(), lr=cfg.lr)
        self.aug = RandomShift(cfg.image_size // 21 if self.pixels else 0)
        self.planner = MPPIPlanner(
            self.model, action_dim, horizon=cfg.horizon, iterations=cfg.iterations,
            num_samples=cfg.num_samples, num_elites=cfg.num_elites, mixture_coef=cfg.mixture_coef,
            min_std=cfg.min_std, max_std=cfg.max_std, temperature=cfg.temperature,
            momentum=cfg.momentum, discount=cfg.discount, std_schedule=cfg.std_schedule,
            horizon_schedule=cfg.horizon_schedule)
        self.rng = np.random.default_rng(cfg.seed)  # seed-step actions and replay sampling
        self.updates = 0
        self.skipped_updates = 0

    # ----------------------------------------------------------------- acting
    def planning_horizon(self, step: int) -> int:
        return int(min(self.cfg.horizon, linear_schedule(self.cfg.horizon_schedule, step)))

    def _obs_tensor(self, obs: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(obs), device=self.device).unsqueeze(0)

    def random_action(self) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, self.action_dim).astype(np.float32)

    def act(self, obs: np.ndarray, *, step: int, t0: bool, eval_mode: bool = False) -> np.ndarray:
        """Action for one observation; uniform random during the seed steps (training only)."""
        if eval_mode:
            return self.act_batch(np.asarray(obs)[None], step=step, t0=t0)[0]
        if step < self.cfg.seed_steps:
            return self.random_action()
        with torch.no_grad():
            z = self.model.h(self._obs_tensor(obs))
            a = self.planner.plan(z, t0=t0, eval_mode=False, step=step)
        return self._finite(a[0])

    def act_batch(self, obs: np.ndarray, *, step: int, t0: bool) -> np.ndarray:
        """Evaluation actions (B, A) for a batch of observations (B, ...): episodes run in lockstep
        (MPPI keeps one warm start per state; ``t0`` at their common first step)."""
        with torch.no_grad():
            z = self.model.h(torch.as_tensor(np.asarray(obs), device=self.device))
            a = self.planner.plan(z, t0=t0, eval_mode=True, step=step)
        return self._finite(a)

    def _finite(self, a: torch.Tensor) -> np.ndarray:
        a = torch.nan_to_num(a.detach(), nan=0.0).clamp(-1.0, 1.0)
        return a.cpu().numpy().astype(np.float32)

    def end_episode(self) -> dict[str, float]:
        """Called after every training episode (the DiffTOP online PG step lives here)."""
        return {}

    # --------------------------------------------------------------- learning
    @torch.no_grad()
    def _prepare(self, b: Batch) -> Prepared:
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

    def _model_losses(self, b: Batch, prep: Prepared | None = None
                      ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, dict]:
        c = self.cfg
        prep = self._prepare(b) if prep is None else prep
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

    def _extra_losses(self, b: Batch, prep: Prepared) -> tuple[torch.Tensor | float, dict]:
        """Per-sample losses added to TD-MPC's before weighting (DiffTOP: the Q_s TD loss)."""
        return 0.0, {}

    def _extra_backward(self, b: Batch, prep: Prepared, step: int) -> dict:
        """More gradients accumulated before the optimizer step (DiffTOP batched PG)."""
        return {}

    def _trainable(self) -> list[torch.Tensor]:
        return list(self.model.parameters())

    def _update_targets(self) -> None:
        ema_(self.model, self.target, self.cfg.tau)

    def update_pi(self, zs: list[torch.Tensor]) -> float:
        self.pi_optim.zero_grad(set_to_none=True)
        self.model.track_q_grad(False)
        try:
            loss = 0.0
            for t, z in enumerate(zs):
                a = self.model.pi(z, self.cfg.min_std)
                loss = loss - torch.min(*self.model.Q(z, a)).mean() * (self.cfg.rho ** t)
            loss.backward()
            _, ok = _clip_and_check(list(self.model._pi.parameters()), self.cfg.grad_clip_norm)
            if ok:
                self.pi_optim.step()
        finally:
            self.model.track_q_grad(True)
        return float(loss.detach())

    def update(self, buffer, step: int) -> dict[str, float]:
        """One gradient update on a prioritized replay batch; returns scalar metrics."""
        c = self.cfg
        H = min(c.horizon, max(1, buffer.horizon))
        b = buffer.sample(c.batch_size, self.rng, horizon=H, device=self.device)
        self.optim.zero_grad(set_to_none=True)
        prep = self._prepare(b)
        total, zs, prio, metrics = self._model_losses(b, prep)
        extra, extra_metrics = self._extra_losses(b, prep)
        total = total + extra
        weighted = (total.squeeze(-1) * b.weights).mean()
        (weighted / H).backward()
        metrics.update(extra_metrics)
        metrics.update(self._extra_backward(b, prep, step))
        params = self._trainable()
        norm, ok = _clip_and_check(params, c.grad_clip_norm)
        if ok:
            self.optim.step()
            buffer.update_priorities(b.idxs, prio.clamp(max=1e4))
        else:
            self.skipped_updates += 1
        self.optim.zero_grad(set_to_none=True)
        metrics["pi_loss"] = self.update_pi(zs)
        if step % c.update_freq == 0:
            self._update_targets()
        self.updates += 1
        metrics.update({"total_loss": total.mean().item(), "weighted_loss": weighted.item(),
                        "grad_norm": norm, "skipped_updates": float(self.skipped_updates)})
        return metrics

    # ------------------------------------------------------------ persistence
    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "target": self.target}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"optim": self.optim, "pi_optim": self.pi_optim}

    def state_dict(self) -> dict:
        return {
            "modules": {k: m.state_dict() for k, m in self.modules().items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()},
            "rng": self.rng.bit_generator.state,
            "planner_prev_mean": self.planner.prev_mean,
            "updates": self.updates, "skipped_updates": self.skipped_updates,
        }

    def load_state_dict(self, state: dict, *, weights_only: bool = False) -> None:
        for k, m in self.modules().items():
            m.load_state_dict(state["modules"][k])
        if weights_only:
            return
        for k, o in self.optimizers().items():
            o.load_state_dict(state["optimizers"][k])
        self.rng.bit_generator.state = state["rng"]
        prev = state.get("planner_prev_mean")  # checkpoints load on the CPU; a GPU run resumes on cuda
        self.planner.prev_mean = None if prev is None else prev.to(self.device)
        self.updates = int(state.get("updates", 0))
        self.skipped_updates = int(state.get("skipped_updates", 0))
