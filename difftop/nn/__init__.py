"""Neural building blocks of the learned models: TD-MPC's TOLD world model (h, d, R, pi, Q)."""

from difftop.nn.told import (
    TOLD,
    PixelEncoder,
    StateEncoder,
    mlp,
    orthogonal_init,
    q_head,
    truncated_normal_sample,
)

__all__ = [
    "TOLD",
    "PixelEncoder",
    "StateEncoder",
    "mlp",
    "orthogonal_init",
    "q_head",
    "truncated_normal_sample",
]
