"""Neural building blocks of the learned models: TD-MPC's TOLD world model (h, d, R, pi, Q).

The one MLP builder is :func:`difftop.nn.mlp.mlp` and the one weight-EMA update
:func:`difftop.nn.ema.ema_update_` (import them from their modules: ``difftop.nn.mlp`` stays the module).
"""

from difftop.nn.ema import ema_update_
from difftop.nn.told import (
    TOLD,
    PixelEncoder,
    StateEncoder,
    orthogonal_init,
    q_head,
    truncated_normal_sample,
)

__all__ = [
    "TOLD",
    "PixelEncoder",
    "StateEncoder",
    "ema_update_",
    "orthogonal_init",
    "q_head",
    "truncated_normal_sample",
]
