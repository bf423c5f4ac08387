"""Box constraints low <= x <= high on flattened actions.

Bounds are handled by projection and an active set, never by clamping inside the
objective (a clamp there zeroes gradients at the bounds and hides the optimum).
"""

from __future__ import annotations

import torch


class Box:
    """Bounds broadcast to the flattened (B, n) actions; low/high may be scalars or tensors."""

    def __init__(self, low, high, shape: torch.Size, dtype: torch.dtype, device: torch.device):
        B, n = shape[0], shape[1] * shape[2]
        scalars = isinstance(low, (int, float)) and isinstance(high, (int, float))
        if scalars:  # checked in Python: no tensor op, no device sync (the common case)
            if low != low or high != high:
                raise ValueError("trajopt: bounds contain NaN")
            if low > high:
                raise ValueError("trajopt: some lower bound is above its upper bound")
        low = torch.as_tensor(low, dtype=dtype, device=device)
        high = torch.as_tensor(high, dtype=dtype, device=device)
        # Accept bounds shaped like the actions (B,H,m), like one step (m,), or scalars.
        check_bounds_shape(low, high, shape)
        self.low = torch.broadcast_to(low, shape).reshape(B, n)  # n, not -1: B = 0 is allowed
        self.high = torch.broadcast_to(high, shape).reshape(B, n)
        if not scalars:
            if torch.isnan(self.low).any() or torch.isnan(self.high).any():
                raise ValueError("trajopt: bounds contain NaN")
            if (self.low > self.high).any():
                raise ValueError("trajopt: some lower bound is above its upper bound")
        self.width = (self.high - self.low).clamp(max=1e6)

    def select(self, idx: torch.Tensor) -> Box:
        """The box of the samples idx (solver compaction)."""
        out = Box.__new__(Box)
        out.low, out.high = self.low.index_select(0, idx), self.high.index_select(0, idx)
        out.width = self.width.index_select(0, idx)
        return out

    def centre(self) -> torch.Tensor:
        """(B, n) the middle of the box, clamped into it; 0 where a side is unbounded (a start point
        for samples whose given initial actions are not finite)."""
        both = torch.isfinite(self.low) & torch.isfinite(self.high)
        mid = torch.where(both, 0.5 * (self.low + self.high), torch.zeros_like(self.low))
        return self.project(mid)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        # torch.clamp with tensor bounds keeps the gradient of x for interior entries (needed for unrolling)
        return torch.maximum(torch.minimum(x, self.high), self.low)

    def fixed_mask(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Variables held at a bound with the (ascent) gradient pushing outward: constants of the problem."""
        at_low = x <= self.low
        at_high = x >= self.high
        return (at_low & (g <= 0)) | (at_high & (g >= 0))


def check_bounds_shape(low, high, shape) -> None:
    """Tensor bounds must broadcast to the actions' (B, H, m) without changing it: a clear error now,
    instead of torch's "expanded size ... must match" from inside the solver."""
    for name, b in (("low", low), ("high", high)):
        if isinstance(b, torch.Tensor) and b.dim() > 0:
            try:
                ok = torch.broadcast_shapes(b.shape, shape) == tuple(shape)
            except RuntimeError:
                ok = False
            if not ok:
                raise ValueError(
                    f"trajopt: {name} has shape {tuple(b.shape)}, which does not broadcast to the actions' "
                    f"shape (B, H, m) = {tuple(shape)}; give a scalar, (m,), (H, m), (B, 1, 1) or (B, H, m)")
