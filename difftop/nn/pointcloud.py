"""Point-cloud encoders, by name: the paper's PointNet and DP3's light encoder.

Why two: the paper's ManiSkill policies use a PointNet (appendix C, :class:`~difftop.nn.encoders.
PointNetEncoder`), while the authors' MetaWorld release builds on DP3 (3D Diffusion Policy), whose
encoder is deliberately small: a per-point MLP 3->64->128->256 with LayerNorm, a max-pool over the
points and a projection to 64 features with LayerNorm. Both take ``(B, N, D)`` point clouds (xyz,
optionally with colours) and are invariant to the order of the points.

:func:`subsample_points` keeps ``n`` of a cloud's points before the encoder (``ObsEncoder(num_points=n)``).
Why: the per-point MLP's cost is linear in the points, and on the CPU it is nearly all of a training
step (``difftop bench il obs=pointcloud``, benchmarks/results/il_pointcloud.md). The stored clouds are
farthest-point samples *in selection order* (:func:`difftop.envs.pointcloud.farthest_point_sample`
returns the indices in the order it picks them), so their first ``n`` points are themselves the
farthest-point sample of ``n`` (same start point): ``prefix`` is that subset, free and deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from difftop.errors import UserError
from difftop.nn.encoders import PointNetEncoder

__all__ = ["DP3Encoder", "POINT_ENCODERS", "POINT_SAMPLES", "make_point_encoder", "max_pool_points",
           "subsample_points"]

#: point-cloud encoder names accepted by :func:`make_point_encoder`
POINT_ENCODERS = ("pointnet", "dp3")
#: how :func:`subsample_points` picks the points it keeps
POINT_SAMPLES = ("prefix", "random")


def subsample_points(
    x: torch.Tensor, n: int | None, mode: str = "prefix", training: bool = False
) -> torch.Tensor:
    """``n`` points of each cloud of ``x (..., N, D)``; ``x`` itself when ``n`` is None or ``N``.

    ``prefix``: the first ``n`` (a farthest-point sample of ``n`` for clouds stored in farthest-point
    order, as every difftop env stores them), always. ``random``: while ``training``, a uniform random
    subset per cloud (a fresh augmentation each step, in the stored order); in eval the prefix, so that
    a policy acts on the same ``n`` points whatever its batch.
    """
    if n is None or int(n) == x.shape[-2]:
        return x
    n = int(n)
    if not 0 < n <= x.shape[-2]:
        raise UserError(f"num_points must be in [1, {x.shape[-2]}] for these clouds, got {n}")
    if mode not in POINT_SAMPLES:
        raise UserError(f"unknown point_sample {mode!r}; valid: {', '.join(POINT_SAMPLES)}")
    if mode == "prefix" or not training:
        return x[..., :n, :]
    # the n smallest of N uniform keys per cloud, sorted back into stored order: one (M, N) topk, no loop
    keys = torch.rand(x.shape[:-1], device=x.device)
    idx = keys.topk(n, -1, largest=False, sorted=False).indices.sort(-1).values
    return x.gather(-2, idx.unsqueeze(-1).expand(*idx.shape, x.shape[-1]))


def max_pool_points(h: torch.Tensor) -> torch.Tensor:
    """``(..., N, C) -> (..., C)``: the max over the points, as ``amax(-2)`` but cheaper to differentiate.

    Why not ``amax``: its backward splits the gradient among tied maxima, materialising a full
    ``(..., N, C)`` mask, a broadcast product and a copy; ``max(-2)``'s backward scatters the
    ``(..., C)`` gradient at the argmax indices into zeros. Same forward; the same parameter gradients
    (ties after a ReLU are zeros, which pass no gradient, and tied duplicate points have identical
    activations); 128 clouds of 512 points, PointNet forward+backward: 704 ms instead of 857 ms (1 CPU
    thread, benchmarks/results/il_pointcloud.md).
    """
    return h.max(-2).values


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
        return self.proj(max_pool_points(self.point_mlp(x.float())))


def make_point_encoder(kind: str, in_dim: int, dims: Sequence[int] = (64, 128, 256), out_dim: int = 128,
                       act: str = "relu") -> nn.Module:
    """The point-cloud encoder ``kind`` (``pointnet`` | ``dp3``) for points with ``in_dim`` channels."""
    if kind == "pointnet":
        return PointNetEncoder(in_dim, dims, out_dim, act)
    if kind == "dp3":
        return DP3Encoder(in_dim, dims, out_dim)
    raise UserError(f"unknown point_encoder {kind!r}; valid: {', '.join(POINT_ENCODERS)}")
