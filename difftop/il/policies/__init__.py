"""Imitation policies by name: build, save and rebuild them.

A policy is a :class:`~difftop.il.policies.base.Policy` subclass registered with
``@register_policy("name")`` in its own module of this package, plus its hyper-parameters in
``difftop/configs/il_policy/<name>.yaml`` (:mod:`difftop.il.policies.registry`: names are found
without importing, and a module is imported when its policy is built, so a missing or broken module
breaks only its own name). Every class takes ``(shape_meta, **params)``, plus a trained policy as
``base=`` (DiffTOP, Residual) or ``init_policy=`` (IBC) when its signature has one. A class may define
``make_shape_meta(obs, action_dim, params, base_meta)`` to derive its
:class:`~difftop.il.policies.base.ShapeMeta` from its config (popping the keys it uses);
otherwise the config keys ``obs_horizon``, ``horizon`` (null: ``To - 1 + Ta``) and
``n_action_steps`` are used, with the history raised to the base's when that is longer.

A policy is saved and rebuilt from a *spec*: ``{"name", "params", "shape_meta", "base"}`` (the
base's own spec, or None); its weights (the frozen base's included) live in its state_dict.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any

from difftop.errors import UserError
from difftop.il.policies.base import Policy, ShapeMeta
from difftop.il.policies.registry import POLICIES, policy_class, register_policy

__all__ = ["BASE_ARGS", "POLICIES", "Policy", "ShapeMeta", "base_arg", "build_policy", "policy_class",
           "policy_from_spec", "policy_from_state", "policy_spec", "register_policy"]

SHAPE_KEYS = ("obs_horizon", "horizon", "n_action_steps")


BASE_ARGS = ("base", "init_policy")


def base_arg(cls: type) -> str | None:
    """The constructor keyword through which ``cls`` takes a trained policy, or None."""
    params = inspect.signature(cls.__init__).parameters
    return next((a for a in BASE_ARGS if a in params), None)


def make_shape_meta(cls: type, obs: Mapping[str, tuple[int, ...]], action_dim: int, params: dict,
                    base_meta: ShapeMeta | None = None) -> ShapeMeta:
    """The ShapeMeta a policy of class ``cls`` with config ``params`` needs (pops the shape keys)."""
    hook = getattr(cls, "make_shape_meta", None)
    if hook is not None:
        return hook(obs, action_dim, params, base_meta)
    To = int(params.pop("obs_horizon", None) or 1)
    if base_meta is not None:
        To = max(To, base_meta.obs_horizon)
    Ta = int(params.pop("n_action_steps", None) or 1)
    T = int(params.pop("horizon", None) or To - 1 + Ta)
    return ShapeMeta(obs={k: tuple(v) for k, v in obs.items()}, action_dim=int(action_dim), obs_horizon=To,
                     horizon=T, n_action_steps=Ta)


def build_policy(name: str, obs: Mapping[str, tuple[int, ...]], action_dim: int, params: Mapping[str, Any],
                 base: Policy | None = None) -> tuple[Policy, dict]:
    """(policy, spec) for config ``params`` (shape keys and constructor keywords)."""
    cls = policy_class(name)
    kw = dict(params)
    arg = base_arg(cls)
    if base is not None and arg is None:
        raise UserError(f"policy {name!r} takes no base policy; drop base=")
    if base is None and arg is not None and inspect.signature(cls.__init__).parameters[arg].default is \
            inspect.Parameter.empty:
        raise UserError(f"policy {name!r} needs base=<checkpoint of a trained policy>")
    meta = make_shape_meta(cls, obs, action_dim, kw, base.shape_meta if base is not None else None)
    try:
        policy = cls(meta, **kw, **({arg: base} if base is not None else {}))
    except (TypeError, ValueError) as e:
        raise UserError(f"policy {name!r}: {e}") from None
    policy._difftop_spec = policy_spec(name, meta, kw, base)
    return policy, policy._difftop_spec


def policy_spec(name: str, meta: ShapeMeta, params: Mapping[str, Any], base: Policy | None) -> dict:
    """What :func:`policy_from_spec` needs to rebuild the architecture (no weights)."""
    base_spec = getattr(base, "_difftop_spec", None) if base is not None else None
    if base is not None and base_spec is None:
        raise ValueError("a base policy must come from policy_from_spec / build_policy to be saved")
    return {"name": name, "params": dict(params), "shape_meta": dataclasses.asdict(meta), "base": base_spec}


def policy_from_spec(spec: Mapping[str, Any]) -> Policy:
    """Rebuild a policy (with random weights: load its state_dict next) from a spec."""
    base = policy_from_spec(spec["base"]) if spec.get("base") else None
    cls = policy_class(spec["name"])
    m = dict(spec["shape_meta"])
    meta = ShapeMeta(obs={k: tuple(v) for k, v in m.pop("obs").items()}, **m)
    policy = cls(meta, **dict(spec["params"]), **({base_arg(cls): base} if base is not None else {}))
    policy._difftop_spec = dict(spec)
    return policy


def policy_from_state(state: Mapping[str, Any], ema: bool = True) -> Policy:
    """The trained policy of an IL checkpoint dict (its EMA weights when it has them and ``ema``)."""
    policy = policy_from_spec(state["spec"])
    weights = state.get("ema") if ema and state.get("ema") is not None else state["policy"]
    policy.load_state_dict(weights)
    policy.eval()
    return policy
