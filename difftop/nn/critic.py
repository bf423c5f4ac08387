"""DiffTOP's observation-space twin critic Q_s(s, a) (paper eq. 6, appendix C).

Why a second critic: the policy-gradient loss -Q_s(s, a*(θ)) is back-propagated through the
trajectory optimization into the latent model. If it used the latent Q it would partly grade the
model with itself; Q_s is learned on the raw observation with its own encoder, so it supplies an
independent deterministic policy gradient (DDPG-style).

Layers as in the paper's appendix C: an encoder S -> 256 -> Z (ELU) for states, or a small conv
encoder for pixels, then TD-MPC's Q head over [z, a] (Linear -> LayerNorm -> Tanh -> Linear -> ELU
-> Linear), twice. Last layers start at zero as in the official code.
"""

from __future__ import annotations

import torch
from torch import nn

from difftop.nn.told import PixelEncoder, StateEncoder, orthogonal_init, q_head

__all__ = ["ObsCritic"]


def _obs_encoder(obs_shape, latent_dim: int, enc_dim: int, num_channels: int, pixels: bool) -> nn.Module:
    if pixels:
        return PixelEncoder(obs_shape, latent_dim, num_channels)
    return StateEncoder(obs_shape[0], latent_dim, enc_dim)


class _Q(nn.Module):
    """One Q head over [features, a]; with its own encoder, or on features of a shared one (None)."""

    def __init__(self, encoder: nn.Module | None, latent_dim: int, action_dim: int, mlp_dim: int):
        super().__init__()
        self.encoder = encoder
        self.head = q_head(latent_dim + action_dim, mlp_dim)

    def forward(self, x: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        z = x if self.encoder is None else self.encoder(x)
        return self.head(torch.cat([z, action], dim=-1))


class ObsCritic(nn.Module):
    """Twin Q_s(s, a) on raw observations; ``forward`` returns ``(q1, q2)``, each ``(B, 1)``.

    ``shared_encoder``: one encoder under both heads (None: for pixels, where the conv encoder is
    most of Q_s's cost - DrQ-v2's layout; the paper's appendix C gives each state head its own).
    """

    def __init__(self, obs_shape, action_dim: int, *, latent_dim: int = 50, mlp_dim: int = 512,
                 enc_dim: int = 256, num_channels: int = 32, obs_type: str = "state",
                 shared_encoder: bool | None = None):
        super().__init__()
        pixels = obs_type == "pixels"
        shared = pixels if shared_encoder is None else bool(shared_encoder)
        enc = (tuple(obs_shape), latent_dim, enc_dim, num_channels, pixels)
        self.encoder = _obs_encoder(*enc) if shared else None
        self.q1, self.q2 = (_Q(None if shared else _obs_encoder(*enc), latent_dim, action_dim, mlp_dim)
                            for _ in range(2))
        self.apply(orthogonal_init)
        for q in (self.q1, self.q2):
            q.head[-1].weight.data.fill_(0)
            q.head[-1].bias.data.fill_(0)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = obs if self.encoder is None else self.encoder(obs)
        return self.q1(x, action), self.q2(x, action)
