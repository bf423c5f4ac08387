"""Diffusion Policy (Chi et al. 2023): a 1-D conv U-Net denoises an action chunk given observations.

The architecture follows diffusion_policy's ``ConditionalUnet1D`` (written afresh here): the
chunk ``(B, T, m)`` is a ``m``-channel signal over ``T`` steps; each level has two residual
blocks (conv-GroupNorm-Mish twice) whose first half is FiLM-modulated (per-channel scale and
bias) by the condition = [diffusion-step embedding (sinusoidal + MLP), flattened observation
features of the ``To`` steps]; levels halve the length, the decoder mirrors them with skip
connections. A ``T`` that is not a multiple of ``2^(levels-1)`` is padded by repeating the
last step and cropped back (diffusion_policy requires divisibility instead).

Training: DDPM, epsilon prediction, ``num_train_timesteps`` (100) with ``squaredcos_cap_v2``;
acting: DDIM with ``num_inference_steps`` (10) from Gaussian noise (or DDPM with
``sampler="ddpm"``), returning chunk steps ``To - 1 .. To - 1 + Ta`` in raw units. Schedulers
are ``diffusers``'. Keep an EMA copy of the weights in the trainer, as diffusion_policy does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler
from torch import nn

from difftop.errors import UserError
from difftop.il.policies.base import Policy, ShapeMeta
from difftop.il.policies.bc import action_window, build_encoder, normalize_obs, recent_obs
from difftop.il.policies.registry import register_policy
from difftop.nn.mlp import mlp

__all__ = ["ConditionalUnet1D", "DiffusionPolicy"]

SAMPLERS = ("ddim", "ddpm")


class SinusoidalEmbedding(nn.Module):
    """Timesteps ``(B,)`` -> ``(B, dim)`` sin/cos features at geometric frequencies."""

    def __init__(self, dim: int):
        super().__init__()
        half = dim // 2
        self.register_buffer(
            "freqs", torch.exp(-math.log(10000) * torch.arange(half) / max(half - 1, 1)), False
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x = t.float()[:, None] * self.freqs[None]
        return torch.cat([x.sin(), x.cos()], -1)


def _conv_block(cin: int, cout: int, k: int, groups: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(cin, cout, k, padding=k // 2), nn.GroupNorm(groups, cout), nn.Mish())


class FiLMResBlock1D(nn.Module):
    """conv block -> ``scale * h + bias`` from the condition -> conv block, plus a 1x1 skip."""

    def __init__(self, cin: int, cout: int, cond_dim: int, k: int, groups: int):
        super().__init__()
        self.block1, self.block2 = _conv_block(cin, cout, k, groups), _conv_block(cout, cout, k, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * cout))
        self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        return self.block2(self.block1(x) * scale + bias) + self.skip(x)


class ConditionalUnet1D(nn.Module):
    """Noise prediction ``eps(x_t, t, cond)`` for chunks ``x_t`` ``(B, T, m)``."""

    def __init__(
        self,
        action_dim: int,
        cond_dim: int,
        down_dims: Sequence[int] = (64, 128, 256),
        kernel_size: int = 5,
        n_groups: int = 8,
        step_embed_dim: int = 128,
    ):
        super().__init__()
        dims = [int(d) for d in down_dims]
        if not dims or any(d % n_groups for d in dims):
            raise UserError(f"down_dims {dims} must be non-empty multiples of n_groups={n_groups}")
        e = step_embed_dim
        self.step_embed = nn.Sequential(SinusoidalEmbedding(e), *mlp(e, (4 * e,), e, "mish"))
        c = step_embed_dim + cond_dim
        pairs = list(zip([action_dim, *dims[:-1]], dims))
        self.down = nn.ModuleList()
        for i, (a, b) in enumerate(pairs):
            last = i == len(pairs) - 1
            down = nn.Identity() if last else nn.Conv1d(b, b, 3, 2, 1)
            self.down.append(
                nn.ModuleList(
                    [
                        FiLMResBlock1D(a, b, c, kernel_size, n_groups),
                        FiLMResBlock1D(b, b, c, kernel_size, n_groups),
                        down,
                    ]
                )
            )
        self.mid = nn.ModuleList(
            [FiLMResBlock1D(dims[-1], dims[-1], c, kernel_size, n_groups) for _ in range(2)]
        )
        self.up = nn.ModuleList()
        for a, b in reversed(pairs[1:]):
            self.up.append(
                nn.ModuleList(
                    [
                        FiLMResBlock1D(2 * b, a, c, kernel_size, n_groups),
                        FiLMResBlock1D(a, a, c, kernel_size, n_groups),
                        nn.ConvTranspose1d(a, a, 4, 2, 1),
                    ]
                )
            )
        self.final = nn.Sequential(
            _conv_block(dims[0], dims[0], kernel_size, n_groups), nn.Conv1d(dims[0], action_dim, 1)
        )
        self.multiple = 2 ** (len(dims) - 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        steps = x.shape[1]
        pad = -steps % self.multiple
        h = F.pad(x.transpose(1, 2), (0, pad), mode="replicate") if pad else x.transpose(1, 2)
        c = torch.cat([self.step_embed(t.expand(x.shape[0])), cond], -1)
        skips = []
        for res1, res2, down in self.down:
            h = res2(res1(h, c), c)
            skips.append(h)
            h = down(h)
        for res in self.mid:
            h = res(h, c)
        for res1, res2, up in self.up:
            h = up(res2(res1(torch.cat([h, skips.pop()], 1), c), c))
        return self.final(h)[..., :steps].transpose(1, 2)


@register_policy("diffusion")
class DiffusionPolicy(Policy):
    """DDPM-trained, DDIM-sampled action chunks conditioned on encoded observations."""

    def __init__(
        self,
        shape_meta: ShapeMeta,
        obs_encoder: str = "auto",
        encoder: Mapping[str, Any] | None = None,
        down_dims: Sequence[int] = (64, 128, 256),
        kernel_size: int = 5,
        n_groups: int = 8,
        step_embed_dim: int = 128,
        num_train_timesteps: int = 100,
        num_inference_steps: int = 10,
        beta_schedule: str = "squaredcos_cap_v2",
        sampler: str = "ddim",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
    ):
        super().__init__(shape_meta)
        if sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
        if prediction_type not in ("epsilon", "sample"):
            raise UserError(f"prediction_type must be 'epsilon' or 'sample', got {prediction_type!r}")
        if not 1 <= num_inference_steps <= num_train_timesteps:
            raise UserError(f"need 1 <= num_inference_steps <= num_train_timesteps ({num_train_timesteps})")
        self.window = action_window(shape_meta)
        self.encoder = build_encoder(shape_meta, obs_encoder, encoder)
        cond_dim = self.encoder.out_dim * shape_meta.obs_horizon
        self.unet = ConditionalUnet1D(
            shape_meta.action_dim, cond_dim, down_dims, kernel_size, n_groups, step_embed_dim
        )
        sched = dict(
            num_train_timesteps=int(num_train_timesteps),
            beta_start=1e-4,
            beta_end=0.02,
            beta_schedule=beta_schedule,
            clip_sample=bool(clip_sample),
            prediction_type=prediction_type,
        )
        self.noise_scheduler = DDPMScheduler(variance_type="fixed_small", **sched)
        self.sampler = (
            DDIMScheduler(set_alpha_to_one=True, steps_offset=0, **sched)
            if sampler == "ddim"
            else DDPMScheduler(**sched)
        )
        self.num_inference_steps = int(num_inference_steps)
        self.prediction_type = prediction_type

    def _cond(self, obs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        nobs = normalize_obs(self.normalizer, recent_obs(obs, self.shape_meta.obs_horizon, self.encoder.keys))
        return self.encoder(nobs).flatten(1)

    def compute_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        x0 = self.normalizer.normalize("action", batch["action"])
        noise = torch.randn_like(x0)
        t = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (x0.shape[0],), device=x0.device
        )
        pred = self.unet(self.noise_scheduler.add_noise(x0, noise, t), t, self._cond(batch["obs"]))
        loss = F.mse_loss(pred, noise if self.prediction_type == "epsilon" else x0)
        return loss, {"mse": loss.item()}

    @torch.no_grad()
    def sample_chunk(
        self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """A whole denoised chunk ``(B, T, m)`` in raw units (deterministic given ``generator`` for DDIM)."""
        cond = self._cond(obs)
        shape = (cond.shape[0], self.shape_meta.horizon, self.shape_meta.action_dim)
        x = torch.randn(shape, generator=generator, device=cond.device, dtype=cond.dtype)
        self.sampler.set_timesteps(self.num_inference_steps, device=cond.device)
        for t in self.sampler.timesteps:
            out = self.unet(x, t.to(cond.device), cond)
            x = self.sampler.step(out, t, x, generator=generator).prev_sample
        return self.normalizer.unnormalize("action", x)

    @torch.no_grad()
    def predict_action(
        self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return self.sample_chunk(obs, generator)[:, self.window]
