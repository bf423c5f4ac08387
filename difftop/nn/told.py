"""TD-MPC's Task-Oriented Latent Dynamics (TOLD) model and its building blocks.

Faithful to the original TD-MPC (Hansen, Wang & Su 2022, github.com/nicklashansen/tdmpc,
``src/algorithm/helper.py`` and ``src/algorithm/tdmpc.py``):

* every MLP is ``Linear -> ELU -> Linear -> ELU -> Linear``;
* each Q head is ``Linear -> LayerNorm -> Tanh -> Linear -> ELU -> Linear``;
* the state encoder is ``Linear(obs, enc_dim) -> ELU -> Linear(enc_dim, latent)``;
* the pixel encoder divides by 255 and runs four ReLU convolutions
  (7x7/2, 5x5/2, 3x3/2, 3x3/2, ``num_channels`` each) followed by one Linear to the latent;
* all Linear layers get an orthogonal init (gain 1), all Conv2d layers an orthogonal init with
  the ReLU gain, biases are zero, and then the last Linear of the reward head and of both Q
  heads is zeroed so that reward and Q are exactly 0 at initialisation;
* ``pi(z, std)`` is ``tanh(mlp(z))``, plus, when ``std > 0``, Gaussian noise scaled by ``std``,
  clipped to +-0.3 and the result clamped into ``[-1 + 1e-6, 1 - 1e-6]`` with a straight-through
  gradient (TD-MPC's ``TruncatedNormal(mu, std).sample(clip=0.3)``).

The sub-module attribute names (``_encoder``, ``_dynamics``, ``_reward``, ``_pi``, ``_Q1``,
``_Q2``) and the layer indices inside them are the original's, so a TD-MPC ``state_dict`` loads
as is; callers reach the parts through the read-only properties ``encoder``, ``dynamics_net``,
``reward_net``, ``pi_net`` and ``q_nets``. Every method works on any number of leading batch
dimensions and any float dtype.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import nn

from difftop.nn.mlp import mlp
from difftop.nn.vjp import ConcatMLP, PiValue, TwinMin

__all__ = [
    "PI_NOISE_CLIP",
    "PixelEncoder",
    "StateEncoder",
    "TOLD",
    "orthogonal_init",
    "q_head",
    "truncated_normal_sample",
]

PI_NOISE_CLIP = 0.3  # TD-MPC: model.pi(...) samples TruncatedNormal(mu, std).sample(clip=0.3)
_TRUNC_EPS = 1e-6  # TD-MPC's TruncatedNormal keeps samples in [low + eps, high - eps]


def q_head(in_dim: int, hidden: int) -> nn.Sequential:
    """TD-MPC's Q function: ``Linear -> LayerNorm -> Tanh -> Linear -> ELU -> Linear(., 1)``."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.Tanh(),
                         *mlp(hidden, (hidden,), 1, nn.ELU))


def orthogonal_init(m: nn.Module) -> None:
    """TD-MPC's init, for ``module.apply``: orthogonal Linear (gain 1) and Conv2d (ReLU gain), zero bias."""
    if isinstance(m, nn.Linear):
        nn.init.orthogonal_(m.weight.data)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        nn.init.orthogonal_(m.weight.data, nn.init.calculate_gain("relu"))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def truncated_normal_sample(
    mu: torch.Tensor,
    std: float | torch.Tensor,
    *,
    clip: float | None = PI_NOISE_CLIP,
    low: float = -1.0,
    high: float = 1.0,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """TD-MPC's ``TruncatedNormal(mu, std, low, high).sample(clip)``.

    ``eps = clamp(std * N(0, 1), -clip, clip)``; ``x = mu + eps`` clamped into
    ``[low + 1e-6, high - 1e-6]`` in the forward pass while the gradient passes straight through
    the clamp. ``noise`` (standard normal, broadcastable to ``mu``) replaces the internal draw.
    """
    if noise is None:
        noise = torch.randn(mu.shape, dtype=mu.dtype, device=mu.device, generator=generator)
    eps = noise * std
    if clip is not None:
        eps = eps.clamp(-clip, clip)
    x = mu + eps
    clamped = x.clamp(low + _TRUNC_EPS, high - _TRUNC_EPS)
    return x - x.detach() + clamped.detach()


def _conv_out(size: int, kernel: int, stride: int) -> int:
    return (size - kernel) // stride + 1


class _NormalizeImg(nn.Module):
    """Divides pixel observations by 255 (TD-MPC's ``NormalizeImg``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.div(255.0)


class PixelEncoder(nn.Sequential):
    """TD-MPC's pixel encoder for frame-stacked RGB, ``(..., 3 * frame_stack, H, W)`` in 0..255.

    Layers (indices as in TD-MPC): 0 ``/255``, 1 Conv(C, nc, 7, s2), 2 ReLU, 3 Conv(nc, nc, 5, s2),
    4 ReLU, 5 Conv(nc, nc, 3, s2), 6 ReLU, 7 Conv(nc, nc, 3, s2), 8 ReLU, 9 Flatten,
    10 Linear(nc * h' * w', latent_dim). For 84x84 frames ``h' = w' = 3``.
    uint8 or any float input is cast to the parameters' dtype before the division.

    On CPU a large batch runs in slices of ``cpu_chunk`` frames: one update's H * B frames at once
    overflow the caches (measured on 2 EPYC cores, 640 frames of 9x84x84: 1.28 s no-grad and 3.55 s
    forward + backward in one call, 0.67 s and 2.37 s in slices of 128; over 16-512, slices of 64 were
    fastest for forward + backward), in channels-last layout, where oneDNN's convolutions are faster
    (256 frames, one thread: no grad 142 -> 69 ms, forward + backward 350 -> 213 ms;
    difftop/diagnostics/conv_layout_timing.py). A batch already channels-last, as
    :class:`difftop.rl.augment.RandomShift` makes it on CPU, is not copied. On GPU the batch goes
    whole, in the layout it comes in.
    """

    KERNELS_STRIDES = ((7, 2), (5, 2), (3, 2), (3, 2))
    cpu_chunk = 64

    def __init__(self, obs_shape: Sequence[int], latent_dim: int, num_channels: int = 32):
        c, h, w = (int(s) for s in obs_shape)
        layers: list[nn.Module] = [_NormalizeImg()]
        in_ch = c
        for k, s in self.KERNELS_STRIDES:
            layers += [nn.Conv2d(in_ch, num_channels, k, stride=s), nn.ReLU()]
            in_ch = num_channels
            h, w = _conv_out(h, k, s), _conv_out(w, k, s)
        if h < 1 or w < 1:
            raise ValueError(f"frames of shape {tuple(obs_shape)} are too small for the TD-MPC conv stack")
        layers += [nn.Flatten(), nn.Linear(num_channels * h * w, latent_dim)]
        super().__init__(*layers)
        self.obs_shape = (c, int(obs_shape[1]), int(obs_shape[2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-3]
        x = x.reshape(-1, *x.shape[-3:]).to(self[1].weight.dtype)
        if x.device.type == "cpu":
            outs = [super(PixelEncoder, self).forward(c.contiguous(memory_format=torch.channels_last))
                    for c in x.split(self.cpu_chunk)]
            out = outs[0] if len(outs) == 1 else torch.cat(outs)
        else:
            out = super().forward(x)
        return out.reshape(*lead, -1)


class StateEncoder(nn.Sequential):
    """TD-MPC's state encoder: ``Linear(obs_dim, enc_dim) -> ELU -> Linear(enc_dim, latent_dim)``."""

    def __init__(self, obs_dim: int, latent_dim: int, enc_dim: int = 256):
        super().__init__(*mlp(obs_dim, (enc_dim,), latent_dim, nn.ELU))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.to(self[0].weight.dtype))


class TOLD(nn.Module):
    """Task-Oriented Latent Dynamics model (TD-MPC): encoder h, dynamics d, reward R, policy pi, twin Q.

    Args:
        obs_shape: ``(obs_dim,)`` for ``obs_type="state"``; ``(3 * frame_stack, H, W)`` for pixels.
        action_dim: action dimension (actions live in [-1, 1]).
        latent_dim, mlp_dim, enc_dim, num_channels: TD-MPC's sizes (defaults: 50, 512, 256, 32).
        obs_type: ``"state"`` or ``"pixels"`` (TD-MPC's ``modality``).
    """

    def __init__(
        self,
        obs_shape: tuple[int, ...],
        action_dim: int,
        latent_dim: int = 50,
        mlp_dim: int = 512,
        enc_dim: int = 256,
        num_channels: int = 32,
        obs_type: str = "state",
    ):
        super().__init__()
        if obs_type not in ("state", "pixels"):
            raise ValueError(f"obs_type must be 'state' or 'pixels', got {obs_type!r}")
        self.obs_shape = tuple(int(s) for s in obs_shape)
        self.action_dim = int(action_dim)
        self.latent_dim = int(latent_dim)
        self.obs_type = obs_type
        if obs_type == "pixels":
            if len(self.obs_shape) != 3:
                raise ValueError(f"pixel obs_shape must be (C, H, W), got {self.obs_shape}")
            self._encoder: nn.Module = PixelEncoder(self.obs_shape, latent_dim, num_channels)
        else:
            if len(self.obs_shape) != 1:
                raise ValueError(f"state obs_shape must be (obs_dim,), got {self.obs_shape}")
            self._encoder = StateEncoder(self.obs_shape[0], latent_dim, enc_dim)
        za = latent_dim + action_dim
        hidden = (mlp_dim, mlp_dim)
        self._dynamics = mlp(za, hidden, latent_dim, nn.ELU)
        self._reward = mlp(za, hidden, 1, nn.ELU)
        self._pi = mlp(latent_dim, hidden, action_dim, nn.ELU)
        self._Q1, self._Q2 = q_head(za, mlp_dim), q_head(za, mlp_dim)
        self.apply(orthogonal_init)
        for m in (self._reward, self._Q1, self._Q2):
            m[-1].weight.data.fill_(0)
            m[-1].bias.data.fill_(0)

    # -- the parts, read-only (the attribute names stay TD-MPC's, for its state_dict keys) ------
    encoder = property(lambda self: self._encoder, doc="h: observations -> latents.")
    dynamics_net = property(lambda self: self._dynamics, doc="d's MLP over ``[z, a]``.")
    reward_net = property(lambda self: self._reward, doc="R's MLP over ``[z, a]``.")
    pi_net = property(lambda self: self._pi, doc="pi's MLP over ``z`` (before the tanh).")
    q_nets = property(lambda self: (self._Q1, self._Q2), doc="The twin Q heads over ``[z, a]``.")

    def track_q_grad(self, enable: bool = True) -> None:
        """Enable/disable gradient tracking of the Q networks' parameters (used by the pi update)."""
        for m in (self._Q1, self._Q2):
            for p in m.parameters():
                p.requires_grad_(enable)

    # -- the objective's functions with a hand-written VJP (difftop/nn/vjp.py): same values as
    # dynamics / reward / min of Q below, and the fast graph-free path of latent_objective
    @functools.cached_property
    def dynamics_fn(self) -> ConcatMLP:
        """``d(z, a)`` as a `ConcatMLP` (callable like `dynamics`)."""
        return ConcatMLP(self._dynamics)

    @functools.cached_property
    def reward_fn(self) -> ConcatMLP:
        """``R(z, a)`` as a `ConcatMLP` (callable like `reward`)."""
        return ConcatMLP(self._reward)

    def q_min_fn(self, tau: float = 0.0) -> TwinMin:
        """``smooth_min(*Q(z, a), tau=tau)`` as a `TwinMin` (B,)."""
        cache = self.__dict__.setdefault("_q_min_fns", {})
        if tau not in cache:
            cache[tau] = TwinMin(ConcatMLP(self._Q1), ConcatMLP(self._Q2), tau)
        return cache[tau]

    def pi_value_fn(self, tau: float = 0.0) -> PiValue:
        """``smooth_min(*Q(z, pi(z)), tau=tau)`` as a `PiValue` (B,): the terminal value of TD-MPC's
        `estimate_value` (hard min at tau = 0) with a hand-written VJP to z."""
        cache = self.__dict__.setdefault("_pi_value_fns", {})
        if tau not in cache:
            cache[tau] = PiValue(self._pi, self.q_min_fn(tau))
        return cache[tau]

    def h(self, obs: torch.Tensor) -> torch.Tensor:
        """Encode observations ``(..., *obs_shape)`` into latents ``(..., latent_dim)``."""
        return self._encoder(obs)

    def next(self, z: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Next latent ``(..., latent_dim)`` and one-step reward ``(..., 1)``."""
        x = torch.cat([z, a], dim=-1)
        return self._dynamics(x), self._reward(x)

    def dynamics(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Next latent ``d(z, a)``, ``(..., latent_dim)``."""
        return self._dynamics(torch.cat([z, a], dim=-1))

    def reward(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """One-step reward ``R(z, a)``, ``(..., 1)``."""
        return self._reward(torch.cat([z, a], dim=-1))

    def pi(
        self,
        z: torch.Tensor,
        std: float | torch.Tensor = 0.0,
        *,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Policy action ``tanh(mlp(z))``; with ``std > 0`` a TD-MPC truncated-normal sample around it.

        ``noise``: optional standard-normal draws (shape of the action) used instead of sampling.
        """
        mu = torch.tanh(self._pi(z))
        if isinstance(std, torch.Tensor) or std > 0:
            return truncated_normal_sample(mu, std, noise=noise, generator=generator)
        return mu

    def Q(self, z: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Twin state-action values ``(q1, q2)``, each ``(..., 1)``."""
        x = torch.cat([z, a], dim=-1)
        return self._Q1(x), self._Q2(x)
