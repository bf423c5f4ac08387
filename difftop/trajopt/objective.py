"""Builders for the paper's latent trajectory objectives (eq. 4/5 for RL, eq. 7 for IL).

A trajectory of T action steps a_0..a_{T-1} is scored by rolling the latent dynamics
z_{t+1} = d(z_t, a_t) from z_0:
  RL (terminal given):  sum_{t<T-1} gamma^t R(z_t, a_t) + gamma^{T-1} V(z_{T-1}, a_{T-1})
  RL (state_value):     sum_{t<T}   gamma^t R(z_t, a_t) + gamma^T V(z_T)   (TD-MPC's estimate_value)
  IL (neither):         sum_{t<T}   gamma^t f(z_t, a_t)
so the paper's horizon H is T-1 in the first RL form (eq. 5 as printed) and T in the second.
Everything is batched over the B samples; the only Python loop is over the (short) horizon.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Fn = Callable[[Tensor, Tensor], Tensor]


def _scalar(v: Tensor) -> Tensor:
    return v.squeeze(-1) if v.dim() == 2 and v.shape[-1] == 1 else v


def smooth_min(*values: Tensor, tau: float = 0.0) -> Tensor:
    """min over values; with tau > 0 the smooth -tau * logsumexp(-v / tau).

    Why: the optimum of min(Q1, Q2) often sits on the kink Q1 = Q2 where Newton-type methods
    never converge; the smooth minimum removes the kink (and is within tau*log(k) of it).
    """
    v = torch.stack([_scalar(x) for x in values], 0)
    if tau <= 0:
        return v.min(0).values
    return -tau * torch.logsumexp(-v / tau, 0)


def rollout(z0: Tensor, actions: Tensor, dynamics: Fn) -> list[Tensor]:
    """Latent states z_0..z_{T-1} visited by the actions (B, T, m).

    The last action's successor is not needed by either objective form."""
    zs = [z0]
    for t in range(actions.shape[1] - 1):
        zs.append(dynamics(zs[-1], actions[:, t]))
    return zs


def latent_objective(z0: Tensor, dynamics: Fn, reward: Fn, terminal: Fn | None = None, *,
                     gamma: float = 0.99, batch_rewards: bool = False,
                     state_value: Callable[[Tensor], Tensor] | None = None) -> Callable[[Tensor], Tensor]:
    """J(A) for A of shape (B, T, m): the paper's latent objective, closing over z0 and the modules.

    dynamics(z, a) -> z', reward(z, a) -> (B,) or (B, 1), terminal(z, a) -> (B,) or (B, 1)
    (e.g. a Q head; use `smooth_min` for twin heads). Gradients flow to z0 and to every
    parameter of the three functions.
    state_value(z) -> (B,) or (B, 1), instead of `terminal`: a value of the latent after the last
      action, every action rewarded (TD-MPC's estimate_value with V(z) = min Q(z, pi(z)): the release's
      `terminal=pi`, `difftop.nn.vjp.PiValue`); bit for bit estimate_value's with per-step rewards.
    batch_rewards: evaluate the reward once on the rollout's (z_t, a_t) pairs stacked along the
      batch, instead of once per step; the reward must then be row-wise (any leading batch size,
      no per-sample tensor of shape (B, ...) inside). Same values to rounding; at batch 1 an
      evaluation is ~15% and the implicit backward ~25% cheaper (per-op overhead, and each weight
      gradient of the reward is formed once instead of once per step).
    The objective has a `rows(idx)` method: the same objective for the samples idx alone (z0's rows),
    which lets the solvers stop evaluating samples that have stopped (solver option `compact`). A
    hand-written objective gets the same by defining such a method.
    """
    if z0.dim() != 2:
        raise ValueError(f"latent_objective: z0 must be (B, latent), got {tuple(z0.shape)}")
    if terminal is not None and state_value is not None:
        raise ValueError("latent_objective: give terminal(z, a) or state_value(z), not both")

    def objective(actions: Tensor) -> Tensor:
        if actions.shape[0] != z0.shape[0]:
            raise ValueError(f"latent_objective: actions batch {actions.shape[0]} != z0 batch {z0.shape[0]}")
        B, T = actions.shape[:2]
        zs = rollout(z0, actions, dynamics)
        if state_value is not None:
            zs.append(dynamics(zs[-1], actions[:, T - 1]))
        last = T - 1 if terminal is not None else T
        discs = [1.0]
        for _ in range(last):
            discs.append(discs[-1] * gamma)
        if batch_rewards and last > 0:
            acts = actions[:, :last].transpose(0, 1).reshape(last * B, actions.shape[2])
            r = _scalar(reward(torch.cat(zs[:last], 0), acts)).reshape(last, B)
            total = (r.new_tensor(discs[:last]).unsqueeze(-1) * r).sum(0)
        else:
            total = z0.new_zeros(B)
            for t in range(last):
                total = total + discs[t] * _scalar(reward(zs[t], actions[:, t]))
        if terminal is not None:
            total = total + discs[last] * _scalar(terminal(zs[T - 1], actions[:, T - 1]))
        if state_value is not None:
            total = total + discs[last] * _scalar(state_value(zs[T]))
        return total

    def rows(idx: Tensor) -> Callable[[Tensor], Tensor]:
        """The objective of the samples idx alone (the solvers' compaction of stopped samples)."""
        return latent_objective(z0.index_select(0, idx), dynamics, reward, terminal, gamma=gamma,
                                batch_rewards=batch_rewards, state_value=state_value)

    objective.rows = rows
    if all(_taped(f) for f in (dynamics, reward, terminal, state_value) if f is not None):
        objective.value_grad = _value_grad(z0, dynamics, reward, terminal, gamma, batch_rewards, state_value)
    return objective


def _taped(f) -> bool:
    return callable(getattr(f, "taped", None)) and callable(getattr(f, "vjp", None))


def _value_grad(z0: Tensor, dynamics, reward, terminal, gamma: float, batch_rewards: bool, state_value=None):
    """(J, dJ/dA) of the latent objective without autograd, for functions with `taped`/`vjp`
    (difftop/nn/vjp.py): the solvers' graph-free evaluations (evaluate.Problem.value_grad) take it.

    The same sums as `objective` above, in the same order; the backward walks the rollout once, from the
    last step to the first, adding each step's reward (and the terminal's) gradient to the latent's."""

    def value_grad(actions: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            B, T, m = actions.shape
            zs, tapes = [z0], []
            for t in range(T - 1 if state_value is None else T):
                z, tape = dynamics.taped(zs[-1], actions[:, t])
                zs.append(z)
                tapes.append(tape)
            last = T - 1 if terminal is not None else T
            discs = [1.0]
            for _ in range(last):
                discs.append(discs[-1] * gamma)
            gz = [None] * T  # dJ/dz_t from the reward and terminal at step t
            ga = [None] * T
            if batch_rewards and last > 0:
                acts = actions[:, :last].transpose(0, 1).reshape(last * B, m)
                r, tape = reward.taped(torch.cat(zs[:last], 0), acts)
                d = r.new_tensor(discs[:last]).unsqueeze(-1)
                total = (d * _scalar(r).reshape(last, B)).sum(0)
                gzr, gar = reward.vjp(tape, d.expand(last, B).reshape(r.shape))
                gz[:last] = gzr.reshape(last, B, -1).unbind(0)
                ga[:last] = gar.reshape(last, B, m).unbind(0)
            else:
                total = z0.new_zeros(B)
                for t in range(last):
                    r, tape = reward.taped(zs[t], actions[:, t])
                    total = total + discs[t] * _scalar(r)
                    gz[t], ga[t] = reward.vjp(tape, r.new_full(r.shape, discs[t]))
            if terminal is not None:
                q, tape = terminal.taped(zs[T - 1], actions[:, T - 1])
                total = total + discs[last] * _scalar(q)
                gz[T - 1], ga[T - 1] = terminal.vjp(tape, q.new_full(q.shape, discs[last]))
            if state_value is not None:
                v, tape = state_value.taped(zs[T])
                total = total + discs[last] * _scalar(v)
                g = state_value.vjp(tape, v.new_full(v.shape, discs[last]))  # dJ/dz_T
                gzd, gad = dynamics.vjp(tapes[T - 1], g)
                ga[T - 1] = ga[T - 1] + gad
                gz[T - 1] = gz[T - 1] + gzd
            g = gz[T - 1]
            for t in range(T - 2, -1, -1):  # back through z_{t+1} = d(z_t, a_t)
                gzd, gad = dynamics.vjp(tapes[t], g)
                ga[t] = ga[t] + gad
                g = gz[t] + gzd
            return total, torch.stack(ga, 1)

    return value_grad
