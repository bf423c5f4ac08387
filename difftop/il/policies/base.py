"""The one interface every imitation policy implements: train on batches, act on observations.

Batches are what :class:`difftop.data.SequenceDataset` yields, stacked:
``{"obs": {key: (B, To, ...)}, "action": (B, T, m)}`` in RAW units (images uint8 channel-first).
A policy owns a :class:`difftop.data.normalizer.Normalizer` (fitted on the training data by the
trainer through :meth:`set_normalizer`, saved in the policy's ``state_dict`` and so in every
checkpoint) and normalises inside ``compute_loss`` / ``predict_action``; callers never do.

Shapes (diffusion_policy's names): ``To`` observation horizon, ``T`` prediction horizon,
``Ta`` actions executed per prediction (``predict_action`` returns ``(B, Ta, m)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from difftop.data.normalizer import Normalizer

__all__ = ["ShapeMeta", "Policy"]


@dataclass
class ShapeMeta:
    """What a policy needs to know about the data to build its networks."""

    obs: dict[str, tuple[int, ...]]  # per observation key, the per-step shape, e.g. {"state": (5,)}
    action_dim: int
    obs_horizon: int = 1  # To
    horizon: int = 1  # T (action chunk predicted)
    n_action_steps: int = 1  # Ta (executed per prediction)
    extra: dict = field(default_factory=dict)


class Policy(nn.Module):
    """Base class; subclasses implement :meth:`compute_loss` and :meth:`predict_action`."""

    def __init__(self, shape_meta: ShapeMeta):
        super().__init__()
        self.shape_meta = shape_meta
        self.normalizer = Normalizer()

    def set_normalizer(self, normalizer: Normalizer) -> None:
        """Adopt normalisation fitted on the training data (keys: observation keys and "action")."""
        self.normalizer.load_state_dict(normalizer.state_dict())

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar training loss on a raw batch, and metrics to log."""
        raise NotImplementedError

    @torch.no_grad()
    def predict_action(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw actions ``(B, Ta, m)`` for raw observation histories ``{key: (B, To, ...)}``."""
        raise NotImplementedError

    @torch.no_grad()
    def predict_action_stateless(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """As :meth:`predict_action` but without touching rollout state (recurrent policies run
        the whole history from a zero state); used when a policy serves as a base or an init."""
        return self.predict_action(obs)

    @torch.no_grad()
    def frozen_base_actions(self, obs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """What a frozen base policy contributes to a training batch (normalised actions), or None.

        Policies built on a frozen base (Residual, DiffTOP with ``init="base"``) return it, and their
        ``compute_loss`` takes it from ``batch["base_action"]`` when the trainer has cached it.
        """
        return None

    def reset(self) -> None:
        """Forget any internal state (recurrent policies) at the start of an episode."""
