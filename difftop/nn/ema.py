"""One exponential moving average of a network's weights, for RL target networks and IL weight EMAs.

``ema_update_(target, source, tau)``: ``target <- target + tau * (source - target)``, i.e.
``(1 - tau) * target + tau * source``. ``tau`` is the weight of the *new* value:

- TD-MPC's target networks: ``tau = 0.01`` every ``update_freq`` updates (a soft update);
- an EMA of the weights with decay ``d`` (the IL trainer's ``ema_decay``): ``tau = 1 - d``.

Only the parameters the source trains (``requires_grad``) are averaged: a frozen part, such as the
base policy inside a Residual or DiffTOP IL policy, never changes, so its copy is left as loaded.
Buffers (normaliser statistics, running means) are copied, not averaged: they are statistics of
the data, which the copy must share with the network it shadows.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ema_update_"]


@torch.no_grad()
def ema_update_(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Move ``target`` (a copy of ``source``, e.g. ``copy.deepcopy``) towards ``source`` by ``tau``."""
    pairs = [(t, s) for t, s in zip(target.parameters(), source.parameters(), strict=True) if s.requires_grad]
    if pairs:
        # one multi-tensor op (per-tensor lerp_ in the same order: the same numbers)
        torch._foreach_lerp_([t for t, _ in pairs], [s for _, s in pairs], float(tau))
    for t, s in zip(target.buffers(), source.buffers(), strict=True):
        t.copy_(s)
