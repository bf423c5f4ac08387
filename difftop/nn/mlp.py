"""The one MLP builder of difftop: TD-MPC's networks, DiffTOP's f / d / h_o, the IL baselines' heads.

Why one builder: every network here is a stack of ``Linear [-> norm] -> act [-> Dropout]`` blocks
and a last ``Linear``; building them in one place keeps the layer order, and so the order of the
random draws of the default Linear init and the ``state_dict`` keys (``0.weight``, ``2.weight``,
...), the same everywhere. Activations are given by name (configs), class or instance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from difftop.errors import UserError

__all__ = ["ACTIVATIONS", "Activation", "activation", "mlp"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "mish": nn.Mish,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}

Activation = str | type[nn.Module] | nn.Module


def activation(act: Activation) -> nn.Module:
    """A fresh activation module for a name in :data:`ACTIVATIONS` or a class; an instance is
    returned as is (activations are stateless, so sharing one is harmless)."""
    if isinstance(act, nn.Module):
        return act
    if isinstance(act, str):
        if act not in ACTIVATIONS:
            raise UserError(f"unknown activation {act!r}; valid: {', '.join(ACTIVATIONS)}")
        return ACTIVATIONS[act]()
    return act()


def mlp(
    in_dim: int,
    hidden: Sequence[int],
    out_dim: int | None,
    act: Activation = "relu",
    *,
    dropout: float = 0.0,
    norm: Callable[[int], nn.Module] | None = None,
) -> nn.Sequential:
    """``Linear(d, h) [-> norm(h)] -> act [-> Dropout]`` for each width ``h`` of ``hidden``, then
    ``Linear(., out_dim)``; ``out_dim=None`` ends after the last hidden block (a feature trunk).

    ``hidden`` is a sequence of widths (TD-MPC's two layers of ``mlp_dim`` are ``(mlp_dim, mlp_dim)``).
    """
    if isinstance(hidden, int):
        raise TypeError("hidden must be a sequence of widths, e.g. (512, 512), not an int")
    layers: list[nn.Module] = []
    d = int(in_dim)
    for h in hidden:
        h = int(h)
        layers.append(nn.Linear(d, h))
        if norm is not None:
            layers.append(norm(h))
        layers.append(activation(act))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        d = h
    if out_dim is not None:
        layers.append(nn.Linear(d, int(out_dim)))
    return nn.Sequential(*layers)
