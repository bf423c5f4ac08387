"""Implicit BC (Florence et al. 2022): an energy E(o, a), InfoNCE training, derivative-free acting.

Training: for each sample, the demonstration's ``Ta`` actions (normalised) compete against
``n_negatives`` counter-examples drawn uniformly in the normalised action box
``[action_low, action_high]`` (the minmax normalizer's [-1, 1]); the loss is the cross-entropy
of ``softmax(-E)`` picking the demonstration (InfoNCE).
Acting: IBC's derivative-free optimiser (:func:`dfo_minimize`): ``dfo_samples`` candidates,
``dfo_iters`` rounds of resampling in proportion to ``exp(-E / temperature)`` and Gaussian
perturbation whose scale shrinks by ``noise_shrink`` each round, then the lowest-energy one.
Candidates start uniform in the box, or, with ``init_policy`` (a frozen Policy, e.g. a trained
Diffusion Policy: the paper's "IBC + Diffusion"), around that policy's action.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from difftop.errors import UserError
from difftop.il.policies.base import Policy, ShapeMeta
from difftop.il.policies.bc import (
    BaseChunks,
    action_window,
    base_actions,
    build_encoder,
    freeze,
    normalize_obs,
    recent_obs,
)
from difftop.il.policies.registry import register_policy
from difftop.nn.mlp import mlp

__all__ = ["IBCPolicy", "dfo_minimize"]


def dfo_minimize(
    energy: Callable[[torch.Tensor], torch.Tensor],
    samples: torch.Tensor,
    low: float,
    high: float,
    iters: int = 3,
    noise_scale: float = 0.33,
    noise_shrink: float = 0.5,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """IBC's iterative resampling: candidates ``(B, N, D)`` -> the best one ``(B, D)``.

    ``energy`` maps ``(B, N, D)`` to ``(B, N)``; lower is better. Each round resamples the
    candidates with replacement in proportion to ``softmax(-E / temperature)``, perturbs them
    with Gaussian noise of the current scale and clips them into the box.
    """
    b, n, d = samples.shape
    scale = float(noise_scale)
    for _ in range(int(iters)):
        probs = torch.softmax(-energy(samples) / temperature, -1)
        idx = torch.multinomial(probs, n, replacement=True, generator=generator)
        samples = samples.gather(1, idx.unsqueeze(-1).expand(b, n, d))
        noise = torch.randn(samples.shape, generator=generator, device=samples.device, dtype=samples.dtype)
        samples = (samples + scale * noise).clamp(low, high)
        scale *= noise_shrink
    best = energy(samples).argmin(-1)
    return samples[torch.arange(b, device=samples.device), best]


@register_policy("ibc")
class IBCPolicy(Policy):
    """Energy MLP on [observation features, flattened ``Ta`` actions]; acts by :func:`dfo_minimize`."""

    def __init__(
        self,
        shape_meta: ShapeMeta,
        obs_encoder: str = "auto",
        encoder: Mapping[str, Any] | None = None,
        hidden: Sequence[int] = (256, 256),
        activation: str = "relu",
        dropout: float = 0.0,
        n_negatives: int = 256,
        action_low: float = -1.0,
        action_high: float = 1.0,
        dfo_samples: int = 1024,
        dfo_iters: int = 3,
        noise_scale: float = 0.33,
        noise_shrink: float = 0.5,
        temperature: float = 1.0,
        init_policy: Policy | None = None,
        init_noise: float = 0.1,
        follow_base_chunks: bool = True,
    ):
        super().__init__(shape_meta)
        if not action_low < action_high:
            raise UserError(f"need action_low < action_high, got {action_low}, {action_high}")
        if n_negatives < 1 or dfo_samples < 1:
            raise UserError("ibc needs n_negatives >= 1 and dfo_samples >= 1")
        self.window = action_window(shape_meta)
        self.encoder = build_encoder(shape_meta, obs_encoder, encoder)
        sm = shape_meta
        self.action_size = sm.n_action_steps * sm.action_dim
        self.energy_net = mlp(
            self.encoder.out_dim * sm.obs_horizon + self.action_size, hidden, 1, activation, dropout=dropout
        )
        self.n_negatives, self.dfo_samples, self.dfo_iters = (
            int(n_negatives),
            int(dfo_samples),
            int(dfo_iters),
        )
        self.low, self.high = float(action_low), float(action_high)
        self.noise_scale, self.noise_shrink, self.temperature = (
            float(noise_scale),
            float(noise_shrink),
            float(temperature),
        )
        self.init_noise = float(init_noise)
        self.init_policy = None if init_policy is None else freeze(init_policy)
        # IBC never trains on its initialiser, so at rollout the initialiser may act as it does alone:
        # a chunked one (Diffusion) is queried once per chunk and each step starts the DFO from the
        # chunk's next action (False: query it at every step)
        self.follow_base_chunks = bool(follow_base_chunks)
        self._chunks = BaseChunks()

    def train(self, mode: bool = True) -> IBCPolicy:
        super().train(mode)
        if self.init_policy is not None:
            self.init_policy.eval()  # a frozen initialiser never trains
        return self

    def _features(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        nobs = normalize_obs(self.normalizer, recent_obs(obs, self.shape_meta.obs_horizon, self.encoder.keys))
        return self.encoder(nobs).flatten(1)

    def energy(self, feats: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """E for features ``(B, F)`` and normalised flat action candidates ``(B, N, Ta*m)`` -> ``(B, N)``."""
        f = feats.unsqueeze(1).expand(-1, actions.shape[1], -1)
        return self.energy_net(torch.cat([f, actions], -1)).squeeze(-1)

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        pos = self.normalizer.normalize("action", batch["action"][:, self.window]).flatten(1)
        b = pos.shape[0]
        neg = (
            torch.rand(b, self.n_negatives, self.action_size, device=pos.device) * (self.high - self.low)
            + self.low
        )
        logits = -self.energy(self._features(batch["obs"]), torch.cat([pos.unsqueeze(1), neg], 1))
        labels = torch.zeros(b, dtype=torch.long, device=pos.device)
        loss = F.cross_entropy(logits, labels)
        acc = (logits.argmax(-1) == 0).float().mean().item()
        return loss, {"infonce": loss.item(), "acc": acc}

    def _initial_samples(self, obs: Mapping[str, torch.Tensor], b: int, generator) -> torch.Tensor:
        n, d = self.dfo_samples, self.action_size
        ref = self.normalizer["action"].scale
        if self.init_policy is None:
            u = torch.rand((b, n, d), generator=generator, device=ref.device, dtype=ref.dtype)
            return u * (self.high - self.low) + self.low
        steps = self.shape_meta.n_action_steps
        if self.follow_base_chunks:
            raw = self._chunks.next(self.init_policy, obs, steps)
        else:
            raw = base_actions(self.init_policy, obs, steps, stateless=False)
        a0 = self.normalizer.normalize("action", raw).flatten(1).unsqueeze(1)  # (B, 1, D)
        noise = torch.randn((b, n, d), generator=generator, device=a0.device, dtype=a0.dtype)
        noise[:, 0] = 0  # keep the initialiser's own action among the candidates
        return (a0 + self.init_noise * noise).clamp(self.low, self.high)

    @torch.no_grad()
    def predict_action(
        self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        feats = self._features(obs)
        samples = self._initial_samples(obs, feats.shape[0], generator)
        scale = self.init_noise if self.init_policy is not None else self.noise_scale
        best = dfo_minimize(
            lambda a: self.energy(feats, a),
            samples,
            self.low,
            self.high,
            self.dfo_iters,
            scale,
            self.noise_shrink,
            self.temperature,
            generator,
        )
        sm = self.shape_meta
        return self.normalizer.unnormalize("action", best.view(-1, sm.n_action_steps, sm.action_dim))

    def reset(self) -> None:
        self._chunks.reset()
        if self.init_policy is not None:
            self.init_policy.reset()
