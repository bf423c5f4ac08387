"""Per-key affine normalizers fitted on a dataset and saved inside a policy's state_dict.

Each key has ``y = x * scale + offset`` with buffers ``scale`` and ``offset`` shaped like one
sample of the key (right-aligned broadcasting, so ``(B, To, 5)`` works with a ``(5,)`` scale).
Modes: ``minmax`` maps each dimension's [min, max] to [-1, 1] (diffusion_policy's default),
``meanstd`` to zero mean and unit variance, ``image`` maps uint8 [0, 255] to [-1, 1] (not
fitted), ``identity`` leaves the key alone. A dimension whose range (or std) is below ``eps``
gets scale 1 and is centred on 0, so constant dimensions never divide by zero.

The fields are sub-modules with buffers, so a policy holding a :class:`Normalizer` saves it in
its checkpoint; loading a state_dict into an unfitted :class:`Normalizer` creates the fields.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

MODES = ("minmax", "meanstd", "image", "identity")


class AffineField(nn.Module):
    """``y = x * scale + offset`` for one key."""

    def __init__(self, scale: torch.Tensor, offset: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().clone().float())
        self.register_buffer("offset", offset.detach().clone().float())

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.scale.dtype) * self.scale + self.offset

    def unnormalize(self, y: torch.Tensor) -> torch.Tensor:
        return (y.to(self.scale.dtype) - self.offset) / self.scale


def fit_field(x: np.ndarray | torch.Tensor, mode: str = "minmax", eps: float = 1e-4) -> AffineField:
    """An :class:`AffineField` fitted on samples ``x`` ``(N, ...)`` (stats over the first axis)."""
    if mode not in MODES:
        raise ValueError(f"unknown normalizer mode {mode!r}; valid: {', '.join(MODES)}")
    if mode == "image":
        return AffineField(torch.tensor(2.0 / 255.0), torch.tensor(-1.0))
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).double()
    if x.ndim < 1 or len(x) == 0:
        raise ValueError("cannot fit a normalizer on an empty array")
    if mode == "identity":
        return AffineField(torch.ones(x.shape[1:]), torch.zeros(x.shape[1:]))
    if mode == "minmax":
        lo, hi = x.amin(0), x.amax(0)
        flat = (hi - lo) < eps
        scale = torch.where(flat, torch.ones_like(lo), 2.0 / (hi - lo).clamp_min(eps))
        offset = torch.where(flat, -(hi + lo) / 2, -1.0 - lo * scale)
    else:
        mean, std = x.mean(0), x.std(0, unbiased=False)
        flat = std < eps
        scale = torch.where(flat, torch.ones_like(std), 1.0 / std.clamp_min(eps))
        offset = -mean * scale
    return AffineField(scale, offset)


class Normalizer(nn.Module):
    """A set of per-key :class:`AffineField` normalizers (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.fields = nn.ModuleDict()

    @classmethod
    def fit(
        cls,
        data: Mapping[str, np.ndarray | torch.Tensor],
        mode: str | Mapping[str, str] = "minmax",
        eps: float = 1e-4,
    ) -> Normalizer:
        """Fit every key of ``data`` (arrays ``(N, ...)``); ``mode`` is one mode or one per key."""
        norm = cls()
        for k, x in data.items():
            m = mode if isinstance(mode, str) else mode.get(k, "minmax")
            norm[k] = fit_field(x, m, eps)
        return norm

    def __setitem__(self, key: str, field: AffineField) -> None:
        if "." in key or not key:
            raise ValueError(f"normalizer keys must be non-empty and contain no '.', got {key!r}")
        self.fields[key] = field

    def __getitem__(self, key: str) -> AffineField:
        if key not in self.fields:
            raise KeyError(f"no normalizer for {key!r}; fitted keys: {', '.join(self.fields) or '(none)'}")
        return self.fields[key]

    def __contains__(self, key: str) -> bool:
        return key in self.fields

    def keys(self) -> list[str]:
        return list(self.fields)

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        return self[key].normalize(x)

    def unnormalize(self, key: str, y: torch.Tensor) -> torch.Tensor:
        return self[key].unnormalize(y)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Normalize every key of ``batch`` that has a field; pass the others through."""
        return {k: self.fields[k].normalize(v) if k in self.fields else v for k, v in batch.items()}

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        # Create the fields a checkpoint holds before torch loads their buffers.
        head = prefix + "fields."
        for name in state_dict:
            if name.startswith(head) and name.endswith(".scale"):
                key = name[len(head) : -len(".scale")]
                offset = state_dict.get(f"{head}{key}.offset")
                if key not in self.fields and offset is not None:
                    self.fields[key] = AffineField(
                        torch.ones_like(state_dict[name]), torch.zeros_like(offset)
                    )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)
