"""A family of TD-MPC-sized planning problems, drawn independently of the fixed benchmark problem.

Why: `difftop bench trajopt` times one problem, with an iteration count picked on that problem; a
user's problem differs (horizon, action dimension, warm start, scale of the learned heads, hard or
smooth min). The family draws such problems from a seeded generator, one split to tune the layer's
defaults on and a held-out split (other seeds, other shapes) to report them on, so that a default is
never judged on the problems it was chosen on.

Independence from bench/problem.py: own seeds, observation sizes, head initialisation (scaled normal
instead of orthogonal, non-zero biases) and warm starts (pi's rollout, zeros, uniform, pi plus noise).
Trained models join a split as problem files (`difftop.bench.trained`: a run's TOLD weights and a sample
of its replay buffer's observations), one problem each, with the agent's own horizon, discount, hard
min of the twin Q and pi's rollout as the warm start.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from difftop.nn import TOLD
from difftop.trajopt import latent_objective, smooth_min

INITS = ("policy", "zeros", "uniform", "noisy")


@dataclass(frozen=True)
class Spec:
    """One problem of the family: everything needed to rebuild it bit for bit."""

    name: str
    seed: int
    horizon: int  # action steps optimised (1: the terminal value only)
    action_dim: int
    obs_dim: int
    head_gain: float  # std of the heads' last layer is head_gain / sqrt(fan_in)
    q_tau: float  # 0: hard min(Q1, Q2); > 0: smooth minimum
    init: str  # warm start, one of INITS
    checkpoint: str = ""  # a trained problem's file (difftop.bench.trained); "" for a drawn problem

    def as_dict(self) -> dict:
        return asdict(self)


def draw(split: str, n: int, *, seed: int, horizons: tuple[int, int], action_dims: tuple[int, int],
         head_gains, q_taus, inits=INITS) -> list[Spec]:
    """n problems of one split. Horizons and action dims are spread over their ranges (stratified, then
    shuffled), the other factors cycle through their lists in a seeded order, so a small family still
    covers every value."""
    rng = random.Random(f"{split}-{seed}")
    lo_h, hi_h = horizons
    lo_m, hi_m = action_dims
    hs = [lo_h + round(i * (hi_h - lo_h) / max(n - 1, 1)) for i in range(n)]
    ms = [lo_m + round(i * (hi_m - lo_m) / max(n - 1, 1)) for i in range(n)]
    rng.shuffle(ms)

    def cycle(values) -> list:
        values = list(values)
        order = [values[i % len(values)] for i in range(n)]
        rng.shuffle(order)
        return order

    gains, taus, starts = cycle(head_gains), cycle(q_taus), cycle(inits)
    out = []
    for i in range(n):
        s = rng.randrange(1 << 30)
        out.append(Spec(name=f"{split}{i}", seed=s, horizon=hs[i], action_dim=ms[i],
                        obs_dim=rng.randrange(8, 41), head_gain=float(gains[i]), q_tau=float(taus[i]),
                        init=str(starts[i])))
    return out


def problem_file(path: str) -> Path:
    """A problem file's path as given, or relative to the repository (where results/ lives)."""
    p = Path(path)
    return p if p.is_file() or p.is_absolute() else Path(__file__).resolve().parents[2] / p


def trained_specs(split: str, paths, seed: int) -> list[Spec]:
    """One problem per trained-model file (its shapes read from the file; head_gain 0 marks trained)."""
    from difftop.bench.trained import load

    out = []
    for i, path in enumerate(paths):
        _, _, meta = load(problem_file(str(path)))
        out.append(Spec(name=f"{split}-{Path(str(path)).stem}", seed=seed + i, horizon=int(meta["horizon"]),
                        action_dim=int(meta["action_dim"]), obs_dim=int(meta["obs_dim"]), head_gain=0.0,
                        q_tau=0.0, init="policy", checkpoint=str(path)))
    return out


@dataclass
class FamilyProblem:
    """A built problem at one batch size: model, observations and warm start."""

    spec: Spec
    model: TOLD
    obs: Tensor  # (B, obs_dim)
    gamma: float = 0.99

    def terminal(self, z: Tensor, a: Tensor) -> Tensor:
        q1, q2 = self.model.Q(z, a)
        return smooth_min(q1, q2, tau=self.spec.q_tau)

    def objective(self, z0: Tensor):
        m = self.model
        # the model's taped functions (same values as dynamics / reward / terminal above; the solvers'
        # graph-free evaluations then skip autograd, difftop/nn/vjp.py)
        return latent_objective(z0, m.dynamics_fn, m.reward_fn, m.q_min_fn(self.spec.q_tau), gamma=self.gamma,
                                batch_rewards=True)

    def init(self, z0: Tensor) -> Tensor:
        """The warm start (B, H, m) of the spec's kind; random ones are seeded by the spec."""
        B, H, m = z0.shape[0], self.spec.horizon, self.spec.action_dim
        with torch.no_grad():
            if self.spec.init == "zeros":
                return z0.new_zeros(B, H, m)
            g = torch.Generator().manual_seed(self.spec.seed + 1)
            if self.spec.init == "uniform":
                return (2 * torch.rand(B, H, m, generator=g) - 1).to(z0)
            z, acts = z0, [self.model.pi(z0)]
            for _ in range(H - 1):
                z = self.model.dynamics(z, acts[-1])
                acts.append(self.model.pi(z))
            a = torch.stack(acts, 1)
            if self.spec.init == "noisy":
                a = (a + 0.3 * torch.randn(B, H, m, generator=g).to(a)).clamp(-1, 1)
            return a


def build(spec: Spec, batch: int, *, latent_dim: int = 50, mlp_dim: int = 512, dtype=torch.float32
          ) -> FamilyProblem:
    """The spec's problem at `batch` observations (the model does not depend on the batch size)."""
    if spec.init not in INITS:
        raise ValueError(f"family: init must be one of {INITS}, got {spec.init!r}")
    if spec.checkpoint:
        return _build_trained(spec, batch, dtype)
    torch.manual_seed(spec.seed)
    model = TOLD((spec.obs_dim,), spec.action_dim, latent_dim=latent_dim, mlp_dim=mlp_dim)
    g = torch.Generator().manual_seed(spec.seed)
    with torch.no_grad():
        for head in (model.reward_net, *model.q_nets):
            last = head[-1]
            std = spec.head_gain / math.sqrt(last.weight.shape[1])
            last.weight.copy_(std * torch.randn(last.weight.shape, generator=g))
            last.bias.copy_(0.1 * spec.head_gain * torch.randn(last.bias.shape, generator=g))
    model = model.to(dtype)
    obs = torch.randn(batch, spec.obs_dim, generator=g).to(dtype)
    return FamilyProblem(spec=spec, model=model, obs=obs)


def _build_trained(spec: Spec, batch: int, dtype) -> FamilyProblem:
    """A trained problem at `batch` of its stored observations (a seeded draw; with replacement only when
    the file holds fewer)."""
    from difftop.bench.trained import load

    model, obs_all, meta = load(problem_file(spec.checkpoint), dtype)
    g = torch.Generator().manual_seed(spec.seed)
    n = len(obs_all)
    pick = torch.randperm(n, generator=g)[:batch] if batch <= n else torch.randint(n, (batch,), generator=g)
    return FamilyProblem(spec=spec, model=model, obs=obs_all[pick], gamma=float(meta["discount"]))
