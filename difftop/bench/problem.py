"""The official-size latent planning problem used by benchmarks (and parity tests).

A TOLD model at TD-MPC's sizes (latent 50, MLPs 512 wide with ELU, Q heads with
LayerNorm+Tanh after the first layer). TD-MPC zero-initialises the last layer of the reward
and Q heads, which makes the objective identically 0 at initialisation; a benchmark on a
flat objective measures nothing, so those layers are re-initialised with small random
weights to stand in for a trained model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from difftop.nn import TOLD
from difftop.trajopt import latent_objective, smooth_min


@dataclass
class PlanningProblem:
    model: TOLD
    obs: Tensor  # (B, obs_dim)
    horizon: int  # T, number of action steps optimised
    gamma: float
    q_tau: float  # 0: hard min(Q1, Q2) as the official code; > 0: smooth minimum
    batch_rewards: bool = False  # latent_objective(batch_rewards=...): one reward call for all steps

    def terminal(self, z: Tensor, a: Tensor) -> Tensor:
        q1, q2 = self.model.Q(z, a)
        return smooth_min(q1, q2, tau=self.q_tau)

    def objective(self, z0: Tensor):
        m = self.model
        return latent_objective(z0, m.dynamics_fn, m.reward_fn, m.q_min_fn(self.q_tau), gamma=self.gamma,
                                batch_rewards=self.batch_rewards)

    def policy_init(self, z0: Tensor) -> Tensor:
        """Warm start: the rollout of pi through the latent dynamics, (B, T, m)."""
        with torch.no_grad():
            z, acts = z0, [self.model.pi(z0)]
            for _ in range(self.horizon - 1):  # the last action's successor is not needed
                z = self.model.dynamics(z, acts[-1])
                acts.append(self.model.pi(z))
            return torch.stack(acts, 1)


def official_problem(batch: int, *, obs_dim: int = 24, latent_dim: int = 50, mlp_dim: int = 512,
                     horizon: int = 5, action_dim: int = 6, gamma: float = 0.99, q_tau: float = 0.0,
                     head_gain: float = 1.0, seed: int = 0, dtype=torch.float32,
                     batch_rewards: bool = False) -> PlanningProblem:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TOLD((obs_dim,), action_dim, latent_dim=latent_dim, mlp_dim=mlp_dim)
    with torch.no_grad():
        for head in (model.reward_net, *model.q_nets):
            last = head[-1]
            torch.nn.init.orthogonal_(last.weight, gain=head_gain)
            last.bias.zero_()
    model = model.to(dtype)
    obs = torch.randn(batch, obs_dim, generator=g).to(dtype)
    return PlanningProblem(model=model, obs=obs, horizon=horizon, gamma=gamma, q_tau=q_tau,
                           batch_rewards=batch_rewards)
