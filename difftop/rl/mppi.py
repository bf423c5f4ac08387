"""TD-MPC's MPPI planner over a TOLD latent model, batched over B start states.

Faithful to ``TDMPC.plan`` / ``TDMPC.estimate_value`` of the original TD-MPC
(github.com/nicklashansen/tdmpc, ``src/algorithm/tdmpc.py``), with B independent problems solved
in one go (B = 1 is the original). Per call and per state:

1. ``int(mixture_coef * num_samples)`` policy trajectories are rolled out once with
   ``pi(z, min_std)`` and reused unchanged in every iteration;
2. the Gaussian starts at mean 0 and std ``max_std``; when ``t0`` is False the previous call's
   final mean, shifted one step forward (last step 0), is the starting mean;
3. each iteration samples ``num_samples`` sequences ``clamp(mean + std * N(0, 1), low, high)``,
   appends the policy sequences, scores every sequence with :func:`estimate_value` (NaN -> 0),
   keeps the ``num_elites`` best, weighs them by ``exp(temperature * (value - max value))``
   and sets ``mean = momentum * mean + (1 - momentum) * weighted mean`` and
   ``std = clamp(weighted std, std_min, max_std)``, where ``std_min`` follows
   ``std_schedule`` (TD-MPC's ``linear(0.5, min_std, 25000)``);
4. one elite sequence is drawn with probability equal to its weight; its first action is
   returned, plus ``std[0] * N(0, 1)`` when not in eval mode.

Deviations, all no-ops for the original's use: the returned action is clamped to the action
bounds (TD-MPC leaves the exploration noise unclamped and lets the environment clip); the
warm start copies only the overlap when the horizon changed between calls (TD-MPC changes it
only at episode starts, where ``t0`` is True); all random numbers of one call are drawn up front
(in one draw, or one per state when ``generator`` is a list of B generators: planning a batch
then gives each state exactly the action it gets when planned alone with its own generator).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from difftop.rl.schedules import linear_schedule

__all__ = ["MPPIPlanner", "estimate_value"]

Generators = torch.Generator | Sequence[torch.Generator] | None


def estimate_value(
    model,
    z: torch.Tensor,
    actions: torch.Tensor,
    discount: float,
    *,
    pi_std: float = 0.0,
    pi_noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Model-predicted return of action sequences: TD-MPC's ``estimate_value``.

    ``G = sum_{t<H} discount^t R(z_t, a_t) + discount^H min(Q1, Q2)(z_H, pi(z_H, pi_std))`` with
    ``z_{t+1} = d(z_t, a_t)``. This is also the trajectory-optimisation objective (maximise it).

    Args:
        model: anything with TOLD's ``next(z, a) -> (z', r)``, ``pi(z, std, noise=...)`` and
            ``Q(z, a) -> (q1, q2)``.
        z: start latents ``(..., latent_dim)``.
        actions: ``(H, ..., action_dim)``, time first (as in TD-MPC).
        discount: gamma.
        pi_std: std of pi's terminal action; 0 (default) is deterministic, TD-MPC's planner uses
            ``min_std``.
        pi_noise: optional standard-normal draws ``(..., action_dim)`` for that terminal action.

    Returns: ``(..., 1)``. Differentiable (no ``no_grad`` inside).
    """
    value = 0.0
    gamma_t = 1.0
    for t in range(actions.shape[0]):
        z, reward = model.next(z, actions[t])
        value = value + gamma_t * reward
        gamma_t *= discount
    q1, q2 = model.Q(z, model.pi(z, pi_std, noise=pi_noise, generator=generator))
    return value + gamma_t * torch.min(q1, q2)


class MPPIPlanner:
    """TD-MPC's MPPI planner (see the module docstring), configured once, batched over states.

    Hyper-parameter names and defaults are TD-MPC's (``cfgs/default.yaml``); ``max_std`` is the
    initial std and the upper clamp (2 in TD-MPC). ``std_schedule`` / ``horizon_schedule`` default
    to TD-MPC's ``linear(0.5, min_std, 25000)`` and ``linear(1, horizon, 25000)``.
    ``eval_action``: ``"sample"`` (TD-MPC: in eval mode the score-sampled elite's first action,
    without noise) or ``"mean"`` (the first action of the final mean: deterministic given the samples).
    """

    def __init__(
        self,
        model,
        action_dim: int | None = None,
        *,
        horizon: int = 5,
        iterations: int = 6,
        num_samples: int = 512,
        num_elites: int = 64,
        mixture_coef: float = 0.05,
        min_std: float = 0.05,
        max_std: float = 2.0,
        temperature: float = 0.5,
        momentum: float = 0.1,
        discount: float = 0.99,
        action_low: float | Sequence[float] | torch.Tensor = -1.0,
        action_high: float | Sequence[float] | torch.Tensor = 1.0,
        std_schedule: str | float | None = None,
        horizon_schedule: str | float | None = None,
        eval_action: str = "sample",
    ):
        self.model = model
        self.action_dim = int(action_dim if action_dim is not None else model.action_dim)
        self.horizon = int(horizon)
        self.iterations = int(iterations)
        self.num_samples = int(num_samples)
        self.num_elites = int(num_elites)
        self.mixture_coef = float(mixture_coef)
        self.num_pi_trajs = int(self.mixture_coef * self.num_samples)
        self.min_std = float(min_std)
        self.max_std = float(max_std)
        self.temperature = float(temperature)
        self.momentum = float(momentum)
        self.discount = float(discount)
        self.std_schedule = std_schedule if std_schedule is not None else f"linear(0.5,{min_std},25000)"
        self.horizon_schedule = (
            horizon_schedule if horizon_schedule is not None else f"linear(1,{horizon},25000)"
        )
        if eval_action not in ("sample", "mean"):
            raise ValueError(f"eval_action must be 'sample' or 'mean', got {eval_action!r}")
        self.eval_action = eval_action
        if self.horizon < 1 or self.iterations < 1 or self.num_samples < 1:
            raise ValueError("horizon, iterations and num_samples must be >= 1")
        if not 1 <= self.num_elites <= self.num_samples + self.num_pi_trajs:
            raise ValueError("num_elites must be in [1, num_samples + int(mixture_coef * num_samples)]")
        low = torch.as_tensor(action_low, dtype=torch.float64).expand(self.action_dim).clone()
        high = torch.as_tensor(action_high, dtype=torch.float64).expand(self.action_dim).clone()
        if not bool((low < high).all()):
            raise ValueError("action_low must be < action_high")
        self.action_low, self.action_high = low, high
        self._prev_mean: torch.Tensor | None = None  # (H, B, A), time first
        self._bounds_cache: dict = {}
        self._buffers: tuple | None = None  # (key, normal (B, K), uniform (B,), actions (H, B, N+P, A))

    # ----------------------------------------------------------------- state
    def reset(self) -> None:
        """Forget the warm start (equivalent to the next call having ``t0=True``)."""
        self._prev_mean = None

    @property
    def prev_mean(self) -> torch.Tensor | None:
        """Final mean of the last call, ``(B, H, action_dim)``, the warm start of the next call."""
        return None if self._prev_mean is None else self._prev_mean.transpose(0, 1).clone()

    @prev_mean.setter
    def prev_mean(self, mean: torch.Tensor | None) -> None:
        self._prev_mean = None if mean is None else mean.detach().transpose(0, 1).clone()

    # ----------------------------------------------------------------- schedules
    def planning_horizon(self, step: int | None = None, horizon: int | None = None) -> int:
        """``horizon`` if given, else ``int(min(H, horizon_schedule(step)))`` (H itself when step is None)."""
        if horizon is not None:
            return int(horizon)
        if step is None:
            return self.horizon
        return max(1, int(min(self.horizon, linear_schedule(self.horizon_schedule, step))))

    def std_floor(self, step: int | None = None, std: float | None = None) -> float:
        """Lower clamp of the sampling std: ``std`` if given, else ``std_schedule(step)``, else min_std."""
        if std is not None:
            return float(std)
        if step is None:
            return self.min_std
        return float(linear_schedule(self.std_schedule, step))

    # ----------------------------------------------------------------- value
    def estimate_value(
        self,
        z: torch.Tensor,
        actions: torch.Tensor,
        *,
        pi_std: float | None = None,
        pi_noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """:func:`estimate_value` with this planner's model and discount; ``pi_std`` defaults to
        ``min_std`` as in TD-MPC's planner (pass 0 for the deterministic objective)."""
        return estimate_value(
            self.model,
            z,
            actions,
            self.discount,
            pi_std=self.min_std if pi_std is None else pi_std,
            pi_noise=pi_noise,
            generator=generator,
        )

    # ----------------------------------------------------------------- internals
    def _bounds(self, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (dtype, device)
        if key not in self._bounds_cache:
            self._bounds_cache[key] = (
                self.action_low.to(device=device, dtype=dtype),
                self.action_high.to(device=device, dtype=dtype),
            )
        return self._bounds_cache[key]

    def _noise_size(self, horizon: int) -> int:
        n, p, a = self.num_samples, self.num_pi_trajs, self.action_dim
        return horizon * p * a + self.iterations * (horizon * n * a + (n + p) * a) + a

    def _draw(self, batch: int, horizon: int, dtype, device, generator: Generators):
        k = self._noise_size(horizon)
        key = (batch, horizon, dtype, device)
        if self._buffers is None or self._buffers[0] != key:
            n_all = self.num_samples + self.num_pi_trajs
            self._buffers = (
                key,
                torch.empty(batch, k, dtype=dtype, device=device),
                torch.empty(batch, dtype=dtype, device=device),
                torch.empty(horizon, batch, n_all, self.action_dim, dtype=dtype, device=device),
            )
        _, normal, uniform, actions = self._buffers
        if generator is None or isinstance(generator, torch.Generator):
            normal.normal_(generator=generator)
            uniform.uniform_(generator=generator)
        else:
            gens = list(generator)
            if len(gens) != batch:
                raise ValueError(f"got {len(gens)} generators for a batch of {batch} states")
            for b, g in enumerate(gens):  # one draw per state: RNG only, the planning is batched
                normal[b].normal_(generator=g)
                uniform[b : b + 1].uniform_(generator=g)
        return normal, uniform, actions

    # ----------------------------------------------------------------- planning
    @torch.no_grad()
    def plan(
        self,
        z0: torch.Tensor,
        *,
        t0: bool,
        eval_mode: bool,
        step: int | None = None,
        horizon: int | None = None,
        std: float | None = None,
        generator: Generators = None,
    ) -> torch.Tensor:
        """Plan the next action for each of the B latent states ``z0`` ``(B, latent_dim)``.

        Args:
            t0: first step of an episode: do not warm-start from the previous call's mean.
            eval_mode: no exploration noise on the returned action.
            step: training step, drives the horizon and std schedules (None: full horizon, min_std).
            horizon, std: explicit overrides of the scheduled horizon / std lower clamp.
            generator: None (global RNG), one ``torch.Generator``, or a list of B generators.

        Returns: ``(B, action_dim)`` actions within the action bounds.
        """
        if z0.dim() != 2:
            raise ValueError(f"z0 must be (B, latent_dim), got shape {tuple(z0.shape)}")
        model = self.model
        bsz, latent = z0.shape
        dtype, device = z0.dtype, z0.device
        hor = self.planning_horizon(step, horizon)
        std_min = self.std_floor(step, std)
        n, p, e, a_dim = self.num_samples, self.num_pi_trajs, self.num_elites, self.action_dim
        low, high = self._bounds(dtype, device)
        normal, uniform, actions = self._draw(bsz, hor, dtype, device, generator)

        # Slice the per-state draws: [pi rollouts | per iteration: samples, terminal pi | final].
        off = hor * p * a_dim
        pi_eps = normal[:, :off].view(bsz, hor, p, a_dim).transpose(0, 1)
        iter_eps = []
        for _ in range(self.iterations):
            s_eps = normal[:, off : off + hor * n * a_dim].view(bsz, hor, n, a_dim).transpose(0, 1)
            off += hor * n * a_dim
            t_eps = normal[:, off : off + (n + p) * a_dim].view(bsz, n + p, a_dim)
            off += (n + p) * a_dim
            iter_eps.append((s_eps, t_eps))
        final_eps = normal[:, off : off + a_dim]

        # Policy trajectories, rolled out once and reused in every iteration (TD-MPC).
        if p > 0:
            z = z0.unsqueeze(1).expand(bsz, p, latent)
            for t in range(hor):
                a_t = torch.clamp(model.pi(z, self.min_std, noise=pi_eps[t]), low, high)
                actions[t, :, n:] = a_t
                z, _ = model.next(z, a_t)

        # Initial distribution, warm-started from the previous mean shifted by one step.
        z = z0.unsqueeze(1).expand(bsz, n + p, latent)
        mean = torch.zeros(hor, bsz, a_dim, dtype=dtype, device=device)
        std_t = torch.full((hor, bsz, a_dim), self.max_std, dtype=dtype, device=device)
        if not t0 and self._prev_mean is not None:
            prev = self._prev_mean
            if prev.shape[1] != bsz:
                raise ValueError(f"warm start holds {prev.shape[1]} states, got {bsz}; use t0=True")
            overlap = min(hor, prev.shape[0]) - 1
            if overlap > 0:
                mean[:overlap] = prev[1 : overlap + 1].to(dtype=dtype, device=device)

        for s_eps, t_eps in iter_eps:
            actions[:, :, :n] = torch.clamp(mean.unsqueeze(2) + std_t.unsqueeze(2) * s_eps, low, high)
            value = estimate_value(
                model, z, actions, self.discount, pi_std=self.min_std, pi_noise=t_eps
            ).nan_to_num_(0)  # (B, N+P, 1)
            elite_idxs = value.squeeze(-1).topk(e, dim=1).indices  # (B, E)
            elite_value = value.gather(1, elite_idxs.unsqueeze(-1))  # (B, E, 1)
            idx_a = elite_idxs.view(1, bsz, e, 1).expand(hor, bsz, e, a_dim)
            elite_actions = actions.gather(2, idx_a)  # (H, B, E, A)

            score = torch.exp(self.temperature * (elite_value - elite_value.amax(1, keepdim=True)))
            score = score / score.sum(1, keepdim=True)  # (B, E, 1)
            denom = score.sum(1) + 1e-9  # (B, 1)
            new_mean = (score * elite_actions).sum(2) / denom  # (H, B, A)
            new_std = torch.sqrt((score * (elite_actions - new_mean.unsqueeze(2)) ** 2).sum(2) / denom)
            new_std = new_std.clamp(std_min, self.max_std)
            mean = self.momentum * mean + (1.0 - self.momentum) * new_mean
            std_t = new_std

        # Draw one elite per state with probability = score; act with its first action.
        cdf = score.squeeze(-1).cumsum(1)  # (B, E)
        u = (uniform.unsqueeze(1) * cdf[:, -1:]).contiguous()
        choice = torch.searchsorted(cdf.contiguous(), u).clamp_(max=e - 1)  # (B, 1)
        first = elite_actions[0].gather(1, choice.unsqueeze(-1).expand(bsz, 1, a_dim)).squeeze(1)
        self._prev_mean = mean
        if eval_mode:
            act = mean[0].clone() if self.eval_action == "mean" else first
        else:
            act = first + std_t[0] * final_eps
        return torch.clamp(act, low, high)
