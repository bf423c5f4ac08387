"""DiffTOP for imitation learning: a CVAE whose decoder is a differentiable trajectory optimization.

Paper eq. 7-9 and appendix E. Encoder: ``h_o`` (observation history -> state features ``z_s``),
``h_a`` (the expert action chunk; Identity) and ``h_l`` (``[z_s, a*]`` -> mean and log-variance
of a ``posterior_dim`` Gaussian). Decoder: with ``z_0 = [z~, z_s]`` and latent dynamics
``z_{t+1} = d(z_t, a_t)`` the action plan is

    a(θ) = argmax_{a in [-1, 1]^(H x m)} sum_{t<H} gamma^t f(z_t, a_t)

(normalised actions), solved by :class:`difftop.trajopt.TrajOpt` from an initialisation that is a
frozen base policy's action (``init="base"``), zero or ``N(0, I)`` clipped to the box. Training
minimises ``||a(θ) - a*||^2 + beta KL(q(z~|s, a*) || N(0, I))`` back-propagated *through the solve*
(implicit backward by default) into ``f``, ``d``, ``h_o`` and ``h_l``; at test time ``z~ ~ N(0, I)``
(or its mean 0 with ``sample_latent=False``).

Shapes: a batch's windows start ``To - 1`` steps before the current step (diffusion_policy's
convention), so the expert plan is ``action[:, To-1 : To-1+H]`` and the dataset horizon is
``T = To - 1 + H``. The objective is batched over samples (each sample its own problem, never the
batch flattened into one variable), and a failed solve (flagged in ``info``) is left out of the
loss instead of crashing training.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from difftop.il.policies.base import Policy, ShapeMeta
from difftop.il.policies.bc import build_encoder, freeze, normalize_obs, recent_obs
from difftop.il.policies.registry import register_policy
from difftop.nn.mlp import mlp
from difftop.nn.vjp import ConcatMLP, supported
from difftop.trajopt import TrajOptConfig, TrajOptInfo, latent_objective

__all__ = ["DiffTOPPolicy", "INITS", "kl_to_standard_normal"]

INITS = ("base", "zero", "random")
#: the choices of loss_weighting: "paper" is eq. 9 as printed (summed squared error + beta KL);
#: "official" is the release's policy/difftori.py:
#: 3000 * mean squared error over every action element + 10 * KL summed over the latent, batch mean.
LOSS_WEIGHTINGS = ("paper", "official")
OFFICIAL_ACTION_WEIGHT, OFFICIAL_KL_WEIGHT = 3000.0, 10.0


def _two(hidden: int | Sequence[int]) -> tuple[int, ...]:
    """Appendix C's networks have two hidden layers: an int is both widths (TD-MPC's ``mlp_dim``)."""
    return (int(hidden), int(hidden)) if isinstance(hidden, int) else tuple(hidden)


def kl_to_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """Per-sample ``KL(N(mu, exp(logvar)) || N(0, I))``, summed over the latent dimensions."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def trajopt_config(solver: str, backward: str, max_iters: int, tol: float,
                   trajopt: Mapping[str, Any] | None) -> TrajOptConfig:
    """The policy's trajopt settings (``solver``, ``backward``, ``max_iters``, ``tol`` and the ``trajopt``
    section: the other :class:`TrajOptConfig` keys, solver options under ``options``), checked once."""
    given = {"solver": solver, "backward": backward, "max_iters": max_iters, "tol": tol,
             **dict(trajopt or {})}
    return TrajOptConfig.from_mapping(given, where="policies.difftop")


@register_policy("difftop")
class DiffTOPPolicy(Policy):
    """The DiffTOP CVAE policy (see the module docstring).

    Args:
        shape_meta: ``obs_horizon`` To, ``horizon`` T = To - 1 + H (H, the planning horizon, is
            derived from it), ``n_action_steps`` Ta <= H actions executed per solve.
        base: a trained policy whose actions initialise the solve (frozen; saved inside this
            policy's state_dict so a checkpoint is self-contained).
        init: ``"base"``, ``"zero"`` or ``"random"`` (``N(0, I)`` clipped to the box).
        obs_encoder, encoder: the shared per-step observation encoder (:mod:`difftop.nn.encoders`:
            normalised states as they are, images through its conv net); its features over the
            history go through h_o.
        latent_dim: Zs, the state-feature size (Table 7: 50); posterior_dim: z~ (64). 0 drops the CVAE
            (no h_l, no KL): the deterministic DiffTOP of eq. 8. Why offer it: on our Push-T data the
            beta = 1 posterior collapses (KL ~1e-6), so z~ is 64 inputs of pure noise to f and d, and
            with them DiffTOP + BC-RNN learned a refinement of slope 0.07, without them 0.31.
        enc_hidden / fuse_hidden / mlp_hidden: widths of h_o, h_l and of f and d (appendix C:
            256, 256, 512).
        prox: weight of a proximal term ``-prox/2 ||A - A_init||^2`` added to the objective (0: eq. 7
            as printed). Why: with an untrained f the maximiser of eq. 7 sits on a vertex of the
            action box, where the argmax does not move with θ (zero gradient) and training stalls;
            the term keeps the solution interior, near the initialisation, as the official release's
            tiny solver steps (1e-4) implicitly do.
        zero_init_f: start f's last layer at zero (as TD-MPC's reward head), so that with prox > 0 the
            untrained policy returns its initialisation (a base policy's action) exactly and training
            refines it, instead of starting from a random displacement.
        beta: KL coefficient (Table 7: 1); gamma: discount of the objective.
        loss_weighting: ``"paper"`` (``||a - a*||^2`` summed over the plan + ``beta`` KL) or ``"official"``
            (the release's ``3000 * mean squared error + 10 * KL``, ``beta`` unused). Why offer it: relative
            to the summed error the release's KL weight is ``10 * H m / 3000`` (0.007 for Push-T's H m = 2),
            against ``beta = 1`` here, where our posterior collapsed (issue 31).
        sample_latent: at test time draw z~ ~ N(0, I) (paper) or use its mean 0.
        solver, backward, max_iters, tol, trajopt: :class:`TrajOpt` settings (extra keywords in
            ``trajopt``); Table 7: 100 iterations.
    """

    def __init__(self, shape_meta: ShapeMeta, *, base: Policy | None = None, init: str = "zero",
                 obs_encoder: str = "auto", encoder: Mapping[str, Any] | None = None, latent_dim: int = 50,
                 posterior_dim: int = 64, enc_hidden: int = 256, fuse_hidden: int = 256,
                 mlp_hidden: int = 512, beta: float = 1.0, gamma: float = 0.99, prox: float = 0.1,
                 zero_init_f: bool = True, sample_latent: bool = True, solver: str = "lbfgs",
                 backward: str = "implicit",
                 max_iters: int = 100, tol: float = 1e-5, trajopt: Mapping[str, Any] | None = None,
                 loss_weighting: str = "paper"):
        super().__init__(shape_meta)
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting must be one of {', '.join(LOSS_WEIGHTINGS)}, "
                             f"got {loss_weighting!r}")
        self.loss_weighting = loss_weighting
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        if init == "base" and base is None:
            raise ValueError("init='base' needs a base policy")
        if posterior_dim < 0:
            raise ValueError(f"posterior_dim must be >= 0 (0: no CVAE), got {posterior_dim}")
        To, T, Ta = shape_meta.obs_horizon, shape_meta.horizon, shape_meta.n_action_steps
        self.plan_horizon = H = T - To + 1
        if H < 1 or not 1 <= Ta <= H:
            raise ValueError(f"DiffTOP needs horizon >= obs_horizon and 1 <= n_action_steps <= horizon - "
                             f"obs_horizon + 1, got To={To}, T={T}, Ta={Ta}")
        m = shape_meta.action_dim
        self.init, self.beta, self.gamma, self.prox = init, float(beta), float(gamma), float(prox)
        self.sample_latent = bool(sample_latent)
        self.posterior_dim, self.latent_dim = int(posterior_dim), int(latent_dim)
        # Own encoder history: the base may need a longer one (shape_meta's To is the max of both).
        self.enc_horizon = min(To, int(shape_meta.extra.get("enc_obs_horizon", To)))
        self.obs_encoder = build_encoder(shape_meta, obs_encoder, encoder)
        self.h_o = mlp(self.obs_encoder.out_dim * self.enc_horizon, _two(enc_hidden), latent_dim, "elu")
        self.h_a = nn.Identity()
        self.h_l = (mlp(latent_dim + H * m, _two(fuse_hidden), 2 * posterior_dim, "elu")
                    if posterior_dim > 0 else None)
        z = posterior_dim + latent_dim
        self.f = mlp(z + m, _two(mlp_hidden), 1, "elu")
        if zero_init_f:
            nn.init.zeros_(self.f[-1].weight)
            nn.init.zeros_(self.f[-1].bias)
        self.d = mlp(z + m, _two(mlp_hidden), z, "elu")
        self.trajopt = trajopt_config(solver, backward, max_iters, tol, trajopt).build(low=-1.0, high=1.0)
        self.base = freeze(base) if base is not None else None

    # -- construction helpers -----------------------------------------------------------------
    @classmethod
    def make_shape_meta(cls, obs: Mapping[str, tuple[int, ...]], action_dim: int, params: dict,
                        base_meta: ShapeMeta | None) -> ShapeMeta:
        """The ShapeMeta for config ``params`` (pops ``obs_horizon``, ``plan_horizon``, ``n_action_steps``).

        With a base, the observation history is the longer of the two (each slices its own).
        """
        To = int(params.pop("obs_horizon", 1))
        H = int(params.pop("plan_horizon", 1))
        Ta = int(params.pop("n_action_steps", 1))
        params.pop("horizon", None)
        To_all = max(To, base_meta.obs_horizon) if base_meta is not None else To
        return ShapeMeta(obs=dict(obs), action_dim=int(action_dim), obs_horizon=To_all,
                         horizon=To_all - 1 + H, n_action_steps=Ta, extra={"enc_obs_horizon": To})

    def train(self, mode: bool = True) -> DiffTOPPolicy:
        super().train(mode)
        if self.base is not None:
            self.base.eval()  # frozen: no dropout / batch-norm updates, ever
        return self

    def reset(self) -> None:
        if self.base is not None:
            self.base.reset()

    # -- pieces (also used by the landscape plot) ---------------------------------------------
    def encode(self, obs: Mapping[str, Tensor]) -> Tensor:
        """``z_s = h_o(s)`` for raw observations ``(B, To, ...)`` (own history: the last ``enc_horizon``)."""
        nobs = normalize_obs(self.normalizer, recent_obs(obs, self.enc_horizon, self.obs_encoder.keys))
        return self.h_o(self.obs_encoder(nobs).flatten(1))

    def posterior(self, z_s: Tensor, a_star: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, logvar) of q(z~ | s, a*) for normalised expert plans ``(B, H, m)`` (empty without a CVAE)."""
        if self.h_l is None:
            empty = z_s.new_zeros(z_s.shape[0], 0)
            return empty, empty
        mu, logvar = self.h_l(torch.cat([z_s, self.h_a(a_star.flatten(1))], -1)).chunk(2, -1)
        return mu, logvar

    def objective(self, z_s: Tensor, z_tilde: Tensor, anchor: Tensor | None = None
                  ) -> Callable[[Tensor], Tensor]:
        """J(A) = sum_t gamma^t f(z_t, a_t) - prox/2 ||A - anchor||^2 over normalised plans (B, H, m).

        z_0 = [z~, z_s]; ``anchor`` is the initial plan (the proximal term is off when prox = 0).
        """
        z0 = torch.cat([z_tilde, z_s], -1)
        J = latent_objective(z0, *self._taped, gamma=self.gamma)
        if self.prox <= 0 or anchor is None:
            return J
        anchor, prox = anchor.detach(), self.prox

        def proximal(J: Callable[[Tensor], Tensor], anchor: Tensor) -> Callable[[Tensor], Tensor]:
            def objective(actions: Tensor) -> Tensor:
                return J(actions) - 0.5 * prox * (actions - anchor).pow(2).sum((1, 2))

            # restrictable to rows, as J is (the solvers compact stopped samples away)
            objective.rows = lambda idx: proximal(J.rows(idx), anchor.index_select(0, idx))
            if hasattr(J, "value_grad"):
                def value_grad(actions: Tensor) -> tuple[Tensor, Tensor]:
                    """J's graph-free (value, gradient) and the proximal term's, in autograd's order."""
                    v, g = J.value_grad(actions)
                    d = actions - anchor
                    return v - 0.5 * prox * d.pow(2).sum((1, 2)), g + (-(0.5 * prox)) * (2 * d.pow(1))

                objective.value_grad = value_grad
            return objective

        return proximal(J, anchor)

    @functools.cached_property
    def _taped(self) -> tuple:
        """(d, f) for the objective: with hand-written VJPs when they are plain MLPs (difftop/nn/vjp.py: the
        solver's graph-free evaluations skip autograd; same values), else the methods below."""
        if supported(self.d) and supported(self.f):
            return ConcatMLP(self.d), ConcatMLP(self.f)
        return self._dynamics, self._value

    def _dynamics(self, z: Tensor, a: Tensor) -> Tensor:
        return self.d(torch.cat([z, a.to(z.dtype)], -1))

    def _value(self, z: Tensor, a: Tensor) -> Tensor:
        return self.f(torch.cat([z, a.to(z.dtype)], -1)).squeeze(-1)

    @torch.no_grad()
    def initial_actions(self, obs: Mapping[str, Tensor], init: str | None = None, stateless: bool = False
                        ) -> Tensor:
        """Normalised initial plans ``(B, H, m)`` in the box: the base's actions, zero or random.

        ``stateless`` (training batches): a recurrent base runs over the given history from a zero
        state (its ``predict_action_stateless``), leaving its rollout state alone.
        """
        init = init or self.init
        ref = next(iter(obs.values()))
        B, H, m = ref.shape[0], self.plan_horizon, self.shape_meta.action_dim
        dev = self.f[0].weight.device
        if init == "zero":
            return torch.zeros(B, H, m, device=dev)
        if init == "random":
            return torch.randn(B, H, m, device=dev).clamp_(-1.0, 1.0)
        if self.base is None:
            raise RuntimeError("init='base' without a base policy")
        sub = recent_obs(obs, self.base.shape_meta.obs_horizon, list(self.base.shape_meta.obs))
        fn = getattr(self.base, "predict_action_stateless", None) if stateless else None
        raw = (fn or self.base.predict_action)(sub)  # (B, Ta_base, m) raw
        if raw.shape[1] < H:  # a shorter chunk than the plan: hold its last action
            raw = torch.cat([raw, raw[:, -1:].expand(B, H - raw.shape[1], m)], 1)
        return self.normalizer.normalize("action", raw[:, :H].to(dev)).clamp(-1.0, 1.0)

    @torch.no_grad()
    def frozen_base_actions(self, obs: Mapping[str, Tensor]) -> Tensor | None:
        return self.initial_actions(obs, stateless=True) if self.init == "base" else None

    def solve(self, obs: Mapping[str, Tensor], z_tilde: Tensor | None = None, init: Tensor | None = None
              ) -> tuple[Tensor, TrajOptInfo, Tensor]:
        """(normalised plan (B, H, m), solver info, z_s); z~ ~ N(0, I) unless given."""
        z_s = self.encode(obs)
        if z_tilde is None:
            z_tilde = z_s.new_zeros(z_s.shape[0], self.posterior_dim)
            if self.sample_latent:
                z_tilde.normal_()
        init = self.initial_actions(obs) if init is None else init
        init = init.to(z_s.dtype)
        plan, info = self.trajopt(self.objective(z_s, z_tilde, init), init)
        return plan, info, z_s

    # -- Policy interface ----------------------------------------------------------------------
    def compute_loss(self, batch: dict) -> tuple[Tensor, dict[str, float]]:
        obs, To, H = batch["obs"], self.shape_meta.obs_horizon, self.plan_horizon
        a_star = self.normalizer.normalize("action", batch["action"][:, To - 1: To - 1 + H])
        z_s = self.encode(obs)
        mu, logvar = self.posterior(z_s, a_star)
        z_tilde = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
        init = batch.get("base_action")  # the base's plans cached by the trainer (il.yaml's base_cache)
        init = (self.initial_actions(obs, stateless=True) if init is None else init).to(z_s.dtype)
        plan, info = self.trajopt(self.objective(z_s, z_tilde, init), init)
        mse = (plan - a_star).pow(2).sum((1, 2))
        kl = kl_to_standard_normal(mu, logvar)
        # A failed solve (NaN objective: left at init) says nothing about θ: leave it out. torch.where
        # (not indexing) so that no NaN of a failed sample reaches the others' gradients.
        ok = ~info.failed & torch.isfinite(mse) & torch.isfinite(kl)
        n_ok = ok.sum()
        if self.loss_weighting == "official":  # 3000 * mean over every element + 10 * batch mean of KL
            per_el = mse / (H * a_star.shape[-1])
            term = OFFICIAL_ACTION_WEIGHT * per_el + OFFICIAL_KL_WEIGHT * kl
        else:
            term = mse + self.beta * kl
        per = torch.where(ok, term, torch.zeros_like(mse))
        loss = per.sum() / n_ok if bool(n_ok) else mse.new_tensor(float("nan"))
        s = info.summary()
        mse, kl = mse.detach(), kl.detach()
        metrics = {
            "mse": float(mse[ok].mean()) if bool(n_ok) else math.nan,
            "kl": float(kl[ok].mean()) if bool(n_ok) else math.nan,
            "init_mse": float((init - a_star).pow(2).sum((1, 2)).mean()),
            # how far the solve moved the initialisation, per action element (0: no refinement learned)
            "refine_abs": float((plan.detach() - init).abs().mean()),
            # per action element, as BC / Residual report their "mse" (the two above sum over H x m)
            "action_mse": float(mse[ok].mean()) / (H * a_star.shape[-1]) if bool(n_ok) else math.nan,
            "solve_iters": s["iterations"],
            "solve_converged": s["converged"],
            "solve_failed": 1.0 - float(n_ok) / len(ok),
        }
        return loss, metrics

    @torch.no_grad()
    def predict_action(self, obs: dict[str, Tensor]) -> Tensor:
        plan, _, _ = self.solve(obs)
        Ta = self.shape_meta.n_action_steps
        return self.normalizer.unnormalize("action", plan[:, :Ta])

