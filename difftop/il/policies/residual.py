"""Residual policy: a frozen base policy plus a learned correction of its action.

The paper's "Residual + BC-RNN / Diffusion / BC": an MLP takes the observation features and the
base's (normalised) action and outputs a delta added to it, trained with MSE to the
demonstration. The delta's last layer starts at zero, so the untrained policy is the base.
The base (built and loaded by the caller, e.g. from ``base=<checkpoint>``) is a sub-module:
its weights travel in this policy's state_dict, but it never trains (no gradients, always in
eval mode). On training batches a recurrent base runs statelessly over the batch's history
(``predict_action_stateless``); at rollout it keeps its own state (:meth:`reset` resets it).
The base reads the last ``base.shape_meta.obs_horizon`` steps of the history this policy gets,
so this policy's ``obs_horizon`` must be at least the base's; its own network reads the last
``obs_steps`` of them (default: all).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from difftop.errors import UserError
from difftop.il.policies.base import Policy, ShapeMeta
from difftop.il.policies.bc import (
    action_window,
    base_actions,
    build_encoder,
    freeze,
    normalize_obs,
    recent_obs,
)
from difftop.il.policies.registry import register_policy
from difftop.nn.mlp import mlp

__all__ = ["ResidualPolicy"]


@register_policy("residual")
class ResidualPolicy(Policy):
    """``a = base(o) + delta(o, base(o))`` in normalised action units; only ``delta`` trains."""

    def __init__(
        self,
        shape_meta: ShapeMeta,
        base: Policy,
        obs_encoder: str = "auto",
        encoder: Mapping[str, Any] | None = None,
        hidden: Sequence[int] = (256, 256),
        activation: str = "relu",
        obs_steps: int | None = None,
    ):
        super().__init__(shape_meta)
        if not isinstance(base, Policy):
            raise UserError(f"residual needs a base Policy, got {type(base).__name__}")
        if base.shape_meta.action_dim != shape_meta.action_dim:
            raise UserError(f"base action_dim {base.shape_meta.action_dim} != {shape_meta.action_dim}")
        if base.shape_meta.obs_horizon > shape_meta.obs_horizon:
            raise UserError(
                f"residual obs_horizon {shape_meta.obs_horizon} < the base's {base.shape_meta.obs_horizon}"
            )
        self.window = action_window(shape_meta)
        self.obs_steps = shape_meta.obs_horizon if obs_steps is None else int(obs_steps)
        if not 1 <= self.obs_steps <= shape_meta.obs_horizon:
            raise UserError(
                f"obs_steps must be in [1, obs_horizon={shape_meta.obs_horizon}], got {obs_steps}"
            )
        self.base = freeze(base)
        self.encoder = build_encoder(shape_meta, obs_encoder, encoder)
        ta, m = shape_meta.n_action_steps, shape_meta.action_dim
        self.delta = mlp(self.encoder.out_dim * self.obs_steps + ta * m, hidden, ta * m, activation)
        last = self.delta[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def train(self, mode: bool = True) -> ResidualPolicy:
        super().train(mode)
        self.base.eval()  # frozen: no dropout, no random crops, no statistics updates
        return self

    def _base(self, obs: Mapping[str, torch.Tensor], stateless: bool) -> torch.Tensor:
        sm = self.shape_meta
        return self.normalizer.normalize("action", base_actions(self.base, obs, sm.n_action_steps, stateless))

    @torch.no_grad()
    def frozen_base_actions(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._base(obs, stateless=True)

    def _forward(self, obs: Mapping[str, torch.Tensor], stateless: bool,
                 base: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised actions ``(B, Ta, m)``; ``base``: the base's (cached) normalised actions."""
        base = self._base(obs, stateless) if base is None else base
        nobs = normalize_obs(self.normalizer, recent_obs(obs, self.obs_steps, self.encoder.keys))
        feats = self.encoder(nobs).flatten(1)
        delta = self.delta(torch.cat([feats, base.flatten(1)], -1))
        return base + delta.view_as(base)

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        target = self.normalizer.normalize("action", batch["action"][:, self.window])
        loss = F.mse_loss(self._forward(batch["obs"], stateless=True, base=batch.get("base_action")), target)
        return loss, {"mse": loss.item()}

    @torch.no_grad()
    def predict_action(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.normalizer.unnormalize("action", self._forward(obs, stateless=False))

    def reset(self) -> None:
        self.base.reset()
