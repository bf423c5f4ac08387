"""Random-shift image augmentation (DrQ / TD-MPC) for pixel observations.

Why: TD-MPC learns from pixels only with it; each image is padded by ``pad`` pixels (edge
replication) and re-cropped at a random integer offset. Edge replication plus an integer crop is
the same as reading every output pixel at a clamped source index, so no padded copy is built:
one ``index_select`` moves whole rows, one ``gather`` shifts the columns. Exact for integer shifts
(no ``grid_sample`` interpolation) and ~4x faster on CPU than padding and gathering pixel by pixel
(0.21 s against 0.77 s for 640 stacks of 9x84x84, one thread). It runs on the replay buffer's uint8
frames (a quarter of the bytes to move) and casts at the end; on CPU its output is channels-last, the
layout the conv encoder is fast in there (with both, a pixel TD-MPC agent step took 648 ms instead of
1005: benchmarks/results/rl_pixels_quick.md against rl_pixels_quick_nchw.md).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["RandomShift"]


class RandomShift(nn.Module):
    """Shift each image of a ``(B, C, H, W)`` batch by a random offset in ``[-pad, pad]``^2.

    ``pad = 0`` is the identity (state observations). TD-MPC uses ``pad = img_size // 21`` (4 at 84).
    Returns float32 images.
    """

    def __init__(self, pad: int):
        super().__init__()
        self.pad = int(pad)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.pad <= 0 or x.dim() != 4:
            return x.float()
        n, c, h, w = x.shape
        p, dev = self.pad, x.device
        sx = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=dev)
        sy = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=dev)
        rows = (torch.arange(h, device=dev)[None] + sy[:, None] - p).clamp_(0, h - 1)  # (n, h)
        cols = (torch.arange(w, device=dev)[None] + sx[:, None] - p).clamp_(0, w - 1)  # (n, w)
        flat_rows = (torch.arange(n * c, device=dev).view(n, c, 1) * h + rows[:, None, :]).reshape(-1)
        out = x.reshape(n * c * h, w).index_select(0, flat_rows).view(n, c * h, w)
        out = out.gather(2, cols[:, None, :].expand(n, c * h, w))
        out = out.view(n, c, h, w)
        if dev.type == "cpu":  # the conv encoder's layout there (PixelEncoder), made on the uint8 bytes
            out = out.contiguous(memory_format=torch.channels_last)
        return out.float()
