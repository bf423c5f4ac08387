"""Random-shift image augmentation (DrQ / TD-MPC) for pixel observations.

Why: TD-MPC learns from pixels only with it; each image is padded by ``pad`` pixels (edge
replication) and re-cropped at a random integer offset. Implemented as an integer gather (no
``grid_sample`` interpolation), which is exact for integer shifts and cheaper on CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RandomShift"]


class RandomShift(nn.Module):
    """Shift each image of a ``(B, C, H, W)`` batch by a random offset in ``[-pad, pad]``^2.

    ``pad = 0`` is the identity (state observations). TD-MPC uses ``pad = img_size // 21`` (4 at 84).
    """

    def __init__(self, pad: int):
        super().__init__()
        self.pad = int(pad)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.pad <= 0 or x.dim() != 4:
            return x
        n, _, h, w = x.shape
        p = self.pad
        padded = F.pad(x.float(), (p, p, p, p), mode="replicate")
        sx = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=x.device)
        sy = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=x.device)
        rows = (sy[:, None] + torch.arange(h, device=x.device)[None])  # (n, h)
        cols = (sx[:, None] + torch.arange(w, device=x.device)[None])  # (n, w)
        bidx = torch.arange(n, device=x.device)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]]  # (n, h, w, C)
        return out.permute(0, 3, 1, 2).contiguous()
