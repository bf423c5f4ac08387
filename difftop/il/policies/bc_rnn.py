"""BC-RNN as robomimic's: an LSTM over the observation sequence with a GMM action head (NLL).

Training: a window's first ``L = min(To, T)`` steps pair observation ``t`` with action ``t``
(set ``obs_horizon = horizon = seq_len``, 16 in the paper's Table 7, and ``n_action_steps = 1``);
the LSTM runs from a zero state over the sequence and every step's GMM scores its action.
Rollout (:meth:`predict_action`): one LSTM step per call on the newest observation, the state
carried across calls and re-zeroed every ``rnn_horizon`` calls (robomimic's rollout) and by
:meth:`reset`. The GMM (robomimic's defaults): ``num_modes`` components with tanh-squashed
means, ``softplus + min_std`` scales and mixture logits; acting takes the mean of the most
likely component, or a sample from the mixture with ``sample=True``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from difftop.errors import UserError
from difftop.il.policies.base import Policy, ShapeMeta
from difftop.il.policies.bc import build_encoder, normalize_obs, recent_obs
from difftop.il.policies.registry import register_policy
from difftop.nn.mlp import mlp

__all__ = ["BCRNNPolicy", "gmm_log_prob"]


def gmm_log_prob(
    logits: torch.Tensor, means: torch.Tensor, stds: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """log p(x) of a diagonal Gaussian mixture.

    Shapes: logits ``(..., K)``, means and stds ``(..., K, m)``, x ``(..., m)`` -> ``(...)``.
    """
    z = (x.unsqueeze(-2) - means) / stds
    comp = (-0.5 * z.square() - stds.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    return torch.logsumexp(F.log_softmax(logits, -1) + comp, -1)


@register_policy("bc_rnn")
class BCRNNPolicy(Policy):
    """LSTM + GMM behaviour cloning (robomimic's BC-RNN); stateful at rollout."""

    def __init__(
        self,
        shape_meta: ShapeMeta,
        obs_encoder: str = "auto",
        encoder: Mapping[str, Any] | None = None,
        rnn_hidden: int = 1000,
        rnn_layers: int = 2,
        rnn_horizon: int = 16,
        head_hidden: Sequence[int] = (),
        num_modes: int = 5,
        min_std: float = 1e-4,
        tanh_means: bool = True,
    ):
        super().__init__(shape_meta)
        if shape_meta.n_action_steps != 1:
            raise UserError(
                f"bc_rnn predicts one action per step: set n_action_steps=1 (got {shape_meta.n_action_steps})"
            )
        if num_modes < 1 or rnn_hidden < 1 or rnn_layers < 1:
            raise UserError("bc_rnn needs num_modes, rnn_hidden and rnn_layers >= 1")
        self.encoder = build_encoder(shape_meta, obs_encoder, encoder)
        self.rnn = nn.LSTM(self.encoder.out_dim, rnn_hidden, rnn_layers, batch_first=True)
        self.num_modes, self.min_std, self.tanh_means = int(num_modes), float(min_std), bool(tanh_means)
        m = shape_meta.action_dim
        self.head = mlp(rnn_hidden, head_hidden, num_modes * (2 * m + 1))
        self.rnn_horizon = int(rnn_horizon)
        self._state: tuple[torch.Tensor, torch.Tensor] | None = None
        self._calls = 0

    def _gmm(self, obs: Mapping[str, torch.Tensor], state=None):
        """GMM parameters (normalised units) per step of raw ``obs`` ``{key: (B, L, ...)}``, and the state."""
        out, state = self.rnn(self.encoder(normalize_obs(self.normalizer, obs)), state)
        k, m = self.num_modes, self.shape_meta.action_dim
        raw = self.head(out)
        logits, means, scales = raw.split([k, k * m, k * m], -1)
        means = means.unflatten(-1, (k, m))
        means = torch.tanh(means) if self.tanh_means else means
        stds = F.softplus(scales.unflatten(-1, (k, m))) + self.min_std
        return (logits, means, stds), state

    def _history(self, obs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The whole (common) history of every key the encoder reads."""
        recent_obs(obs, 1, self.encoder.keys)  # validates the keys and their history axis
        return recent_obs(obs, min(obs[k].shape[1] for k in self.encoder.keys), self.encoder.keys)

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        obs = self._history(batch["obs"])
        steps = min(next(iter(obs.values())).shape[1], batch["action"].shape[1])
        target = self.normalizer.normalize("action", batch["action"][:, :steps])
        (logits, means, stds), _ = self._gmm({k: v[:, :steps] for k, v in obs.items()})
        nll = -gmm_log_prob(logits, means, stds, target).mean()
        return nll, {"nll": nll.item()}

    def _act(self, gmm, sample: bool, generator: torch.Generator | None) -> torch.Tensor:
        logits, means, stds = (g[:, -1] for g in gmm)  # the last step: (B, K), (B, K, m)
        if sample:
            mode = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
        else:
            mode = logits.argmax(-1)
        idx = torch.arange(len(mode), device=mode.device)
        a = means[idx, mode]
        if sample:
            noise = torch.randn(a.shape, generator=generator, device=a.device, dtype=a.dtype)
            a = a + stds[idx, mode] * noise
        return self.normalizer.unnormalize("action", a).unsqueeze(1)

    @torch.no_grad()
    def predict_action(
        self, obs: dict[str, torch.Tensor], sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """One LSTM step on the newest observation, carrying the state; ``(B, 1, m)`` raw."""
        last = recent_obs(obs, 1, self.encoder.keys)
        batch = next(iter(last.values())).shape[0]
        stale = self._state is None or self._state[0].shape[1] != batch
        if stale or (self.rnn_horizon > 0 and self._calls % self.rnn_horizon == 0):
            self._state, self._calls = None, 0
        gmm, self._state = self._gmm(last, self._state)
        self._calls += 1
        return self._act(gmm, sample, generator)

    @torch.no_grad()
    def predict_action_stateless(
        self, obs: dict[str, torch.Tensor], sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The action after the whole history ``{key: (B, L, ...)}`` from a zero state (as in training)."""
        gmm, _ = self._gmm(self._history(obs))
        return self._act(gmm, sample, generator)

    def reset(self) -> None:
        self._state, self._calls = None, 0
