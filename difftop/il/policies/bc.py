"""Behaviour cloning: an MLP from the observation history to the next ``Ta`` actions (MSE).

Also holds the small helpers every baseline policy shares (encoder construction from
``shape_meta``, observation-history slicing, the executed action window, freezing a base).

Action alignment (diffusion_policy's): a training window's actions start at the first
observation step, so the action at the current (last observed) step is index ``To - 1``;
a policy predicts actions ``To - 1 .. To - 1 + Ta`` and ``predict_action`` returns them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from difftop.data.normalizer import Normalizer
from difftop.errors import UserError
from difftop.il.policies.base import Policy, ShapeMeta
from difftop.il.policies.registry import register_policy
from difftop.nn.encoders import ObsEncoder
from difftop.nn.mlp import mlp

__all__ = [
    "BCPolicy",
    "action_window",
    "base_actions",
    "build_encoder",
    "freeze",
    "normalize_obs",
    "recent_obs",
]


def build_encoder(shape_meta: ShapeMeta, obs_encoder: str, encoder: Mapping[str, Any] | None) -> ObsEncoder:
    """The :class:`ObsEncoder` for ``shape_meta.obs``; ``encoder`` holds its keyword options."""
    opts = dict(encoder or {})
    for k, v in opts.items():  # Hydra passes ListConfig; the encoders want plain tuples
        if isinstance(v, Sequence) and not isinstance(v, str):
            opts[k] = tuple(v)
    return ObsEncoder(shape_meta.obs, kind=obs_encoder, **opts)


def _is_image_map(field: torch.nn.Module) -> bool:
    """Whether a normaliser field is the fixed uint8 -> [-1, 1] map of images (``mode="image"``)."""
    scale, offset = field.scale, field.offset
    image_scale = float(torch.tensor(2.0 / 255.0, dtype=torch.float32))  # as fit_field stores it
    if scale.numel() != 1 or offset.numel() != 1:
        return False
    return float(scale) == image_scale and float(offset) == -1.0


def normalize_obs(normalizer: Normalizer, obs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``normalizer(obs)``, except that uint8 images under the fixed image map stay uint8.

    Why: :class:`~difftop.nn.encoders.ConvEncoder` applies the same map (bit for bit) after its crop,
    so the full frames are never converted to float: on BC-RNN's 64 x 16 Push-T frames a step that
    saves 0.26 s of 3.5 s. Other fields (and images a custom normaliser maps otherwise) apply as before.
    """
    raw = {k: v for k, v in obs.items()
           if v.dtype == torch.uint8 and k in normalizer and _is_image_map(normalizer[k])}
    out = normalizer({k: v for k, v in obs.items() if k not in raw})
    return {k: raw[k] if k in raw else out[k] for k in obs}


def recent_obs(obs: Mapping[str, torch.Tensor], steps: int, keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """The last ``steps`` history steps of each key in ``keys`` (``{key: (B, To, ...)}``)."""
    out = {}
    for k in keys:
        if k not in obs:
            raise KeyError(f"observation key {k!r} missing; got {sorted(obs)}")
        v = obs[k]
        if v.ndim < 2 or v.shape[1] < steps:
            raise ValueError(
                f"observation {k!r} needs a history axis of >= {steps} steps, got {tuple(v.shape)}"
            )
        out[k] = v[:, v.shape[1] - steps :]
    return out


def action_window(shape_meta: ShapeMeta) -> slice:
    """The chunk indices ``To - 1 .. To - 1 + Ta`` a policy executes (checked against ``T``)."""
    to, t, ta = shape_meta.obs_horizon, shape_meta.horizon, shape_meta.n_action_steps
    if to < 1 or ta < 1 or t < to - 1 + ta:
        raise UserError(f"need horizon >= obs_horizon - 1 + n_action_steps, got T={t}, To={to}, Ta={ta}")
    return slice(to - 1, to - 1 + ta)


def freeze(policy: Policy) -> Policy:
    """Make ``policy`` a constant: no gradients, eval mode (dropout off, no random crops)."""
    policy.requires_grad_(False)
    return policy.eval()


def base_actions(
    policy: Policy, obs: Mapping[str, torch.Tensor], steps: int, stateless: bool
) -> torch.Tensor:
    """Raw actions ``(B, steps, m)`` of a frozen ``policy`` from its own observation history.

    ``stateless`` (training batches) uses ``predict_action_stateless`` where a recurrent policy
    has it, so its rollout state is neither used nor changed; at rollout the policy's own
    ``predict_action`` runs. The history is cut to the policy's ``obs_horizon``.
    """
    sub = recent_obs(obs, policy.shape_meta.obs_horizon, [k for k in policy.shape_meta.obs])
    fn = getattr(policy, "predict_action_stateless", None) if stateless else None
    with torch.no_grad():
        a = (fn or policy.predict_action)(sub)
    if a.ndim != 3 or a.shape[1] < steps:
        raise UserError(f"the base policy returns actions {tuple(a.shape)}; need (B, >= {steps}, m)")
    return a[:, :steps]


class BaseChunks:
    """A frozen chunked base's rollout actions served in its own rhythm: one query per chunk.

    Why: a refiner that executes fewer actions per prediction than its base (IBC's 1 against
    Diffusion's 8) would otherwise re-sample the base at every step, which breaks the chunk's
    temporal consistency (Residual + Diffusion on Push-T fell from the base's 0.72 coverage to 0.27
    that way). The base is queried again when its chunk is used up, when the batch size changes (a
    rollout that drops finished environments) and after :meth:`reset`.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.chunk: torch.Tensor | None = None
        self.pos = 0

    def next(self, policy: Policy, obs: Mapping[str, torch.Tensor], steps: int) -> torch.Tensor:
        """Raw actions ``(B, steps, m)``: the next ``steps`` of the base's current chunk."""
        b = next(iter(obs.values())).shape[0]
        chunk = self.chunk
        if chunk is None or chunk.shape[0] != b or self.pos + steps > chunk.shape[1]:
            chunk = base_actions(policy, obs, max(steps, policy.shape_meta.n_action_steps), stateless=False)
            self.chunk, self.pos = chunk, 0
        self.pos += steps
        return chunk[:, self.pos - steps : self.pos]


@register_policy("bc")
class BCPolicy(Policy):
    """MLP on the flattened, normalised observation history -> ``Ta`` normalised actions."""

    def __init__(
        self,
        shape_meta: ShapeMeta,
        obs_encoder: str = "auto",
        encoder: Mapping[str, Any] | None = None,
        hidden: Sequence[int] = (256, 256),
        activation: str = "relu",
        dropout: float = 0.0,
    ):
        super().__init__(shape_meta)
        self.window = action_window(shape_meta)
        self.encoder = build_encoder(shape_meta, obs_encoder, encoder)
        to, ta, m = shape_meta.obs_horizon, shape_meta.n_action_steps, shape_meta.action_dim
        self.head = mlp(self.encoder.out_dim * to, hidden, ta * m, activation, dropout=dropout)

    def _forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        sm = self.shape_meta
        nobs = normalize_obs(self.normalizer, recent_obs(obs, sm.obs_horizon, self.encoder.keys))
        feats = self.encoder(nobs).flatten(1)
        return self.head(feats).view(-1, sm.n_action_steps, sm.action_dim)

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        target = self.normalizer.normalize("action", batch["action"][:, self.window])
        loss = F.mse_loss(self._forward(batch["obs"]), target)
        return loss, {"mse": loss.item()}

    @torch.no_grad()
    def predict_action(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.normalizer.unnormalize("action", self._forward(obs))
