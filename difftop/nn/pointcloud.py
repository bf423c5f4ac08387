"""Point-cloud encoders, by name: the paper's PointNet and DP3's light encoder.

Why two: the paper's ManiSkill policies use a PointNet (appendix C, :class:`~difftop.nn.encoders.
PointNetEncoder`), while the authors' MetaWorld release builds on DP3 (3D Diffusion Policy), whose
encoder is deliberately small: a per-point MLP 3->64->128->256 with LayerNorm, a max-pool over the
points and a projection to 64 features with LayerNorm. Both take ``(B, N, D)`` point clouds (xyz,
optionally with colours) and are invariant to the order of the points.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from difftop.errors import UserError
from difftop.nn.encoders import PointNetEncoder

__all__ = ["DP3Encoder", "POINT_ENCODERS", "make_point_encoder"]

#: point-cloud encoder names accepted by :func:`make_point_encoder`
POINT_ENCODERS = ("pointnet", "dp3")


class DP3Encoder(nn.Module):
    """DP3's point encoder: ``(B, N, D) -> (B, out_dim)``.

    Linear+LayerNorm+ReLU per point through ``dims`` (DP3: 64, 128, 256), max over points, then
    Linear+LayerNorm to ``out_dim`` (DP3: 64). The final LayerNorm keeps the feature scale fixed
    whatever the cloud's extent, which DP3 found matters for a diffusion head conditioned on it.
    """

    def __init__(self, in_dim: int = 3, dims: Sequence[int] = (64, 128, 256), out_dim: int = 64):
        super().__init__()
        dims = [int(d) for d in dims]
        if not dims or int(in_dim) < 1:
            raise UserError(f"DP3Encoder needs in_dim >= 1 and a hidden width, got {in_dim}, {dims}")
        layers: list[nn.Module] = []
        for a, b in zip([int(in_dim), *dims[:-1]], dims):
            layers += [nn.Linear(a, b), nn.LayerNorm(b), nn.ReLU()]
        self.point_mlp = nn.Sequential(*layers)
        self.proj = nn.Sequential(nn.Linear(dims[-1], int(out_dim)), nn.LayerNorm(int(out_dim)))
        self.out_dim = int(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.point_mlp(x.float()).amax(-2))


def make_point_encoder(kind: str, in_dim: int, dims: Sequence[int] = (64, 128, 256), out_dim: int = 128,
                       act: str = "relu") -> nn.Module:
    """The point-cloud encoder ``kind`` (``pointnet`` | ``dp3``) for points with ``in_dim`` channels."""
    if kind == "pointnet":
        return PointNetEncoder(in_dim, dims, out_dim, act)
    if kind == "dp3":
        return DP3Encoder(in_dim, dims, out_dim)
    raise UserError(f"unknown point_encoder {kind!r}; valid: {', '.join(POINT_ENCODERS)}")
