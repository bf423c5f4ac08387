"""Observation encoders shared by the imitation policies: states, images, point clouds.

- :class:`MLPEncoder`: a state vector -> features (the identity when it has no layers, as
  diffusion_policy feeds normalised low-dimensional observations straight to the head).
- :class:`ConvEncoder`: an image ``(C, H, W)`` (uint8, or already normalised float) -> features;
  a small residual conv net with GroupNorm, robomimic's spatial-softmax keypoints and a Linear
  (torchvision has no CPU build here, so it is plain torch). Optional random crop while
  training and centre crop in eval, as robomimic's and diffusion_policy's image policies do;
  uint8 images are cropped before they are converted to float.
- :class:`PointNetEncoder`: a point cloud ``(N, D)`` -> features (shared per-point MLP + max pool).
- :class:`ObsEncoder`: every observation key of a policy, chosen by shape (1-D state, 2-D point
  cloud, 3-D image), applied over any leading ``(B, To)`` axes and concatenated per step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from difftop.errors import UserError
from difftop.nn.mlp import ACTIVATIONS, activation, mlp

__all__ = [
    "ACTIVATIONS",
    "ENCODER_KINDS",
    "ConvEncoder",
    "MLPEncoder",
    "ObsEncoder",
    "PointNetEncoder",
    "SpatialSoftmax",
    "crop_size",
]

ENCODER_KINDS = ("auto", "state", "image", "pointcloud")


def _groups(channels: int, groups: int) -> int:
    # GroupNorm needs groups | channels; fall back to the largest common divisor.
    return math.gcd(channels, groups) or 1


class MLPEncoder(nn.Module):
    """State vector ``(..., in_dim)`` -> ``(..., out_dim)``; the identity with no layers."""

    def __init__(
        self, in_dim: int, hidden: Sequence[int] = (), out_dim: int | None = None, act: str = "relu"
    ):
        super().__init__()
        if not hidden and out_dim is None:
            self.net: nn.Module = nn.Identity()
            self.out_dim = in_dim
        else:
            self.out_dim = int(out_dim if out_dim is not None else hidden[-1])
            self.net = nn.Sequential(mlp(in_dim, hidden, self.out_dim, act), activation(act))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float())


class SpatialSoftmax(nn.Module):
    """Feature maps ``(B, C, H, W)`` -> expected (x, y) of ``num_kp`` softmax keypoints ``(B, 2 num_kp)``.

    robomimic's pooling: a 1x1 conv to ``num_kp`` maps, a softmax over the pixels, and the
    expected pixel coordinate in [-1, 1]; it keeps *where* things are, which average pooling loses.
    """

    def __init__(self, in_channels: int, height: int, width: int, num_kp: int = 32, temperature: float = 1.0):
        super().__init__()
        self.keypoints = nn.Conv2d(in_channels, num_kp, 1)
        self.temperature = float(temperature)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
        self.register_buffer("pos", torch.stack([xs.reshape(-1), ys.reshape(-1)], -1), persistent=False)
        self.out_dim = 2 * num_kp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.keypoints(x).flatten(2) / self.temperature  # (B, K, HW)
        return (logits.softmax(-1) @ self.pos).flatten(1)  # (B, K*2)


class _ResBlock(nn.Module):
    """Two 3x3 convs with GroupNorm and a strided shortcut (a ResNet basic block)."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.GroupNorm(_groups(cout, groups), cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.GroupNorm(_groups(cout, groups), cout),
        )
        self.skip = nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.GroupNorm(_groups(cout, groups), cout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


def crop_size(crop: Sequence[int] | int | float | None, h: int, w: int) -> tuple[int, int] | None:
    """The ``(height, width)`` of :class:`ConvEncoder`'s crop of ``h x w`` images, or None (no crop).

    ``crop``: a pair of pixel sizes, one int (square), or a float in (0, 1], the fraction of each side
    (rounded). Why a fraction: one setting serves every camera and task of a comparison, e.g. 0.9 crops
    Push-T's 96x96 to 86x86 and robomimic's 84x84 to 76x76 (robomimic's own crop).
    """
    if crop is None:
        return None
    if isinstance(crop, bool):
        raise UserError(f"crop must be [height, width], one int or a fraction in (0, 1], got {crop!r}")
    if isinstance(crop, float):
        if not 0.0 < crop <= 1.0:
            raise UserError(f"a fractional crop must be in (0, 1], got {crop}")
        size = (max(1, round(h * crop)), max(1, round(w * crop)))
    elif isinstance(crop, int):
        size = (crop, crop)
    elif isinstance(crop, Sequence) and len(crop) == 2 and all(isinstance(v, int) for v in crop):
        size = (int(crop[0]), int(crop[1]))
    else:
        raise UserError(f"crop must be [height, width], one int or a fraction in (0, 1], got {crop!r}")
    if not (0 < size[0] <= h and 0 < size[1] <= w):
        raise UserError(f"crop {size} does not fit in images of size {(h, w)}")
    return size


class ConvEncoder(nn.Module):
    """Image ``(B, C, H, W)`` -> ``(B, out_dim)``: stem conv, strided residual blocks, spatial softmax.

    uint8 input is mapped to [-1, 1] here (so the encoder works with or without an ``image``
    normalizer field); float input is taken as already normalised. GroupNorm instead of
    BatchNorm, as diffusion_policy does, so eval and small batches behave like training.
    ``crop`` (pixels or a fraction of each side, :func:`crop_size`): a random crop per sample while
    training, the centre crop in eval.
    """

    def __init__(
        self,
        shape: Sequence[int],
        channels: Sequence[int] = (32, 64, 128),
        num_kp: int = 32,
        out_dim: int = 64,
        crop: Sequence[int] | int | float | None = None,
        groups: int = 8,
    ):
        super().__init__()
        if len(shape) != 3:
            raise UserError(f"ConvEncoder needs a (C, H, W) image shape, got {tuple(shape)}")
        c, h, w = (int(s) for s in shape)
        self.crop = crop_size(crop, h, w)
        ch = [int(x) for x in channels]
        layers: list[nn.Module] = [
            nn.Conv2d(c, ch[0], 3, 2, 1, bias=False),
            nn.GroupNorm(_groups(ch[0], groups), ch[0]),
            nn.ReLU(),
        ]
        for cin, cout in zip([ch[0], *ch[:-1]], ch):
            layers.append(_ResBlock(cin, cout, 2, groups))
        self.trunk = nn.Sequential(*layers)
        hh, ww = self.crop or (h, w)
        with torch.no_grad():
            fh, fw = self.trunk(torch.zeros(1, c, hh, ww)).shape[-2:]
        self.pool = SpatialSoftmax(ch[-1], fh, fw, num_kp)
        self.proj = nn.Linear(self.pool.out_dim, out_dim)
        self.out_dim = int(out_dim)

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        ch, cw = self.crop
        h, w = x.shape[-2:]
        if not self.training:
            top, left = (h - ch) // 2, (w - cw) // 2
            return x[..., top : top + ch, left : left + cw]
        # A random crop per sample: index the (B, C, h-ch+1, w-cw+1, ch, cw) view of every window
        # (no copy) at each sample's offset. Why not one advanced index over (B, ch, cw) pixel
        # coordinates: on 128 x 3x96x96 that gather took 37-45 ms, this takes 3 ms (1 CPU thread).
        b = x.shape[0]
        top = torch.randint(0, h - ch + 1, (b, 1), device=x.device)
        left = torch.randint(0, w - cw + 1, (b, 1), device=x.device)
        windows = x.unfold(2, ch, 1).unfold(3, cw, 1)
        return windows[torch.arange(b, device=x.device), :, top[:, 0], left[:, 0]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.crop is not None:  # before the float conversion: a quarter of the bytes to move
            x = self._crop(x)
        # uint8 -> [-1, 1] in place: one float copy (BC-RNN's 1024 frames a step: 0.1 s, not 0.36 s)
        x = x.float().mul_(2.0 / 255.0).sub_(1.0) if x.dtype == torch.uint8 else x.float()
        return self.proj(self.pool(self.trunk(x)))


class PointNetEncoder(nn.Module):
    """Point cloud ``(B, N, D)`` -> ``(B, out_dim)``: per-point MLP with LayerNorm, max over points."""

    def __init__(
        self, in_dim: int, dims: Sequence[int] = (64, 128, 256), out_dim: int = 128, act: str = "relu"
    ):
        super().__init__()
        self.point_mlp = mlp(in_dim, dims, None, act, norm=nn.LayerNorm)
        self.proj = nn.Linear(int(dims[-1]) if dims else int(in_dim), out_dim)
        self.out_dim = int(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from difftop.nn.pointcloud import max_pool_points  # it imports this module

        return self.proj(max_pool_points(self.point_mlp(x.float())))


class ObsEncoder(nn.Module):
    """Per-step features ``(..., F)`` of the chosen observation keys ``{key: (..., *shape)}``.

    ``kind`` picks the keys by their per-step shape: ``auto`` every key (1-D state, 2-D point
    cloud, 3-D image), ``state`` 1-D keys only, ``image`` images and 1-D keys (e.g. Push-T's
    image + agent position), ``pointcloud`` point clouds and 1-D keys. The 1-D keys are
    concatenated (in ``obs_shapes`` order) into one :class:`MLPEncoder`; each image or point
    cloud key has its own encoder, as robomimic and diffusion_policy do per camera;
    ``point_encoder`` picks the point-cloud one (``pointnet`` | ``dp3``, :mod:`difftop.nn.pointcloud`);
    ``num_points`` (None: all) keeps that many points of each cloud before it, picked by ``point_sample``
    (:func:`~difftop.nn.pointcloud.subsample_points`: ``prefix``, the farthest-point subset of a stored
    cloud, or ``random`` while training). Each point encoder runs once on all ``B x To`` clouds.
    """

    def __init__(
        self,
        obs_shapes: Mapping[str, Sequence[int]],
        kind: str = "auto",
        state_hidden: Sequence[int] = (),
        state_dim: int | None = None,
        image_channels: Sequence[int] = (32, 64, 128),
        num_kp: int = 32,
        image_dim: int = 64,
        crop: Sequence[int] | None = None,
        point_dims: Sequence[int] = (64, 128, 256),
        point_dim: int = 128,
        act: str = "relu",
        point_encoder: str = "pointnet",
        num_points: int | None = None,
        point_sample: str = "prefix",
    ):
        super().__init__()
        from difftop.nn.pointcloud import POINT_SAMPLES, make_point_encoder  # it imports this module

        if kind not in ENCODER_KINDS:
            raise UserError(f"unknown obs_encoder {kind!r}; valid: {', '.join(ENCODER_KINDS)}")
        shapes = {k: tuple(int(s) for s in v) for k, v in obs_shapes.items()}
        bad = {k: s for k, s in shapes.items() if len(s) not in (1, 2, 3)}
        if bad:
            raise UserError(f"observation shapes must be 1-D, 2-D (points) or 3-D (images): {bad}")
        use = {"auto": (1, 2, 3), "state": (1,), "image": (1, 3), "pointcloud": (1, 2)}[kind]
        self.state_keys = [k for k, s in shapes.items() if len(s) == 1 and 1 in use]
        self.point_keys = [k for k, s in shapes.items() if len(s) == 2 and 2 in use]
        self.image_keys = [k for k, s in shapes.items() if len(s) == 3 and 3 in use]
        needs = {"image": self.image_keys, "pointcloud": self.point_keys}.get(kind, True)
        if not (self.state_keys or self.point_keys or self.image_keys) or not needs:
            raise UserError(f"obs_encoder={kind!r} finds no usable observation key in {shapes}")
        self.shapes = shapes
        if point_sample not in POINT_SAMPLES:
            raise UserError(f"unknown point_sample {point_sample!r}; valid: {', '.join(POINT_SAMPLES)}")
        for k in self.point_keys:
            if num_points is not None and not 0 < int(num_points) <= shapes[k][0]:
                raise UserError(f"num_points must be in [1, {shapes[k][0]}] for {k!r}, got {num_points}")
        self.num_points = None if num_points is None else int(num_points)
        self.point_sample = point_sample
        self.state = None
        out = 0
        if self.state_keys:
            self.state = MLPEncoder(
                sum(shapes[k][0] for k in self.state_keys), tuple(state_hidden), state_dim, act
            )
            out += self.state.out_dim
        self.images = nn.ModuleDict(
            {k: ConvEncoder(shapes[k], image_channels, num_kp, image_dim, crop) for k in self.image_keys}
        )
        self.points = nn.ModuleDict(
            {k: make_point_encoder(point_encoder, shapes[k][1], point_dims, point_dim, act)
             for k in self.point_keys}
        )
        out += image_dim * len(self.image_keys) + point_dim * len(self.point_keys)
        self.out_dim = out

    @property
    def keys(self) -> list[str]:
        return [*self.state_keys, *self.point_keys, *self.image_keys]

    def forward(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        from difftop.nn.pointcloud import subsample_points

        missing = [k for k in self.keys if k not in obs]
        if missing:
            raise KeyError(f"observation keys {missing} missing; got {sorted(obs)}")
        for k in self.keys:
            s = self.shapes[k]
            if tuple(obs[k].shape[obs[k].ndim - len(s) :]) != s:
                raise ValueError(f"observation {k!r} has shape {tuple(obs[k].shape)}, expected (..., *{s})")
        feats = []
        if self.state is not None:
            feats.append(self.state(torch.cat([obs[k].float() for k in self.state_keys], -1)))
        for group in (self.points, self.images):
            for k, enc in group.items():
                x = obs[k]
                lead = x.shape[: x.ndim - len(self.shapes[k])]
                if group is self.points:
                    x = subsample_points(x, self.num_points, self.point_sample, self.training)
                feats.append(enc(x.reshape(-1, *x.shape[len(lead) :])).reshape(*lead, -1))
        return torch.cat(feats, -1)
