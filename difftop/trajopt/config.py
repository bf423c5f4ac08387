"""TrajOptConfig: the one set of trajectory-optimization settings that RL and IL share.

Why a class of its own: RL (the ``trajopt:`` section of configs/rl.yaml) and IL (configs/il_policy/
difftop.yaml) each picked a few keys out of their config and passed them to :class:`TrajOpt` by hand,
so a key one of them forgot (the RL agent passed no solver options: ``trajopt.solver=theseus`` could not
set the release's LM step size or damping) was silently dropped, and a bad value surfaced as a
traceback from deep inside the first solve. Here every key and value is checked once, when the config
is read, and a mistake is one line naming the key (a :class:`difftop.errors.UserError`).
"""

from __future__ import annotations

import inspect
from collections.abc import Collection, Mapping
from dataclasses import InitVar, dataclass, field, fields
from typing import Any

from difftop.errors import UserError
from difftop.utils.checks import require_int, require_number

from .bounds import BOUNDS
from .layer import BACKWARD_MODES, THESEUS_OPTIONS, UNCONVERGED_MODES, TrajOpt
from .refine import REFINE_OPTIONS
from .solvers import SOLVERS

__all__ = ["TrajOptConfig", "SOLVER_NAMES", "IMPLICIT_SOLVERS"]

#: every solver name a config may give (the layer's own solvers, then the optional Theseus backend)
SOLVER_NAMES = (*SOLVERS, "theseus", "lm_refine")
IMPLICIT_SOLVERS = ("auto", "dense", "cg")

# option -> (kind, lower bound, lower bound open): the checks of the values `options` may hold.
_NUMBER_OPTIONS: dict[str, tuple[float | None, bool]] = {
    "armijo": (0.0, True), "max_step": (0.0, True), "sign_step": (0.0, True), "eig_floor": (0.0, True),
    "damping": (0.0, False), "implicit_fallback": (0.0, True), "implicit_eig_floor": (0.0, True),
    "cg_tol": (0.0, True), "step_size": (0.0, True), "residual_offset": (None, False),
    "abs_err_tolerance": (0.0, False), "rel_err_tolerance": (0.0, False), "ftol_grad": (0.0, False),
}
_INT_OPTIONS = {"max_backtracks": 1, "memory": 1, "sign_iters": 0, "max_damping_tries": 1, "cg_max_iters": 1,
                "ftol_window": 1, "sync_every": 1, "compact": 0,
                "dense_max_batch": 0}
_BOOL_OPTIONS = ("reduced", "clamp_in_cost", "fast_single")
_OPTIONAL = ("max_step", "cg_tol", "cg_max_iters")  # null means "the default rule"
#: TrajOpt keywords that are not solver options but are set through `options` too (rarely changed)
_LAYER_OPTIONS = ("implicit_fallback", "implicit_eig_floor", "cg_tol", "cg_max_iters", "dense_max_batch")


def _solver_options(solver: str) -> tuple[str, ...]:
    """The option names `solver` takes: its constructor's keywords (and the base Solver's), plus the
    layer's implicit-backward knobs; for theseus, the backend's."""
    if solver == "theseus":
        return THESEUS_OPTIONS
    if solver == "lm_refine":
        return REFINE_OPTIONS
    names: list[str] = []
    for cls in SOLVERS[solver].__mro__:
        if "__init__" in vars(cls):
            names += [p.name for p in inspect.signature(cls.__init__).parameters.values()
                      if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD]
    return tuple(dict.fromkeys(n for n in (*names, *_LAYER_OPTIONS) if n != "self"))


def _plain(value: Any) -> Any:
    """A config node (omegaconf DictConfig/ListConfig or builtins) as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig":
        return [_plain(v) for v in value]
    return value


def _choice(key: str, value: Any, choices: Collection[str]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise UserError(f"{key} must be one of {', '.join(choices)}, got {value!r}")


@dataclass(frozen=True)
class TrajOptConfig:
    """Trajectory-optimization settings, checked once; ``build()`` makes the :class:`TrajOpt`.

    solver: lbfgs | pgd | newton | lm | theseus; backward: implicit | unroll | truncated | none;
    max_iters (>= 0), tol (>= 0), ftol (>= 0), backward_iters (>= 0): as TrajOpt;
    implicit_solver: auto | dense | cg; implicit_unconverged: memory | exact;
    bounds: project | tanh | sigmoid | barrier, bounds_weight (>= 0): as TrajOpt (difftop.trajopt.bounds);
    compile_objective (bool): as TrajOpt (torch.compile of the objective's value and gradient);
    objective_vjp (bool): as TrajOpt (the objective's own graph-free value and gradient, when it has one);
    options: further options of the chosen solver (lbfgs: memory, sign_iters, sign_step, reduced;
    newton: eig_floor; lm: damping, max_damping_tries; any of these: max_backtracks, armijo, max_step,
    implicit_fallback, implicit_eig_floor, cg_tol, cg_max_iters, dense_max_batch; theseus: step_size,
    damping, residual_offset, clamp_in_cost, abs_err_tolerance, rel_err_tolerance; lm_refine: step_size,
    damping, residual_offset, clamp_in_cost).
    Defaults are TrajOpt's. ``where`` (not stored) is the config path used in error messages.
    """

    solver: str = "lbfgs"
    backward: str = "implicit"
    max_iters: int = 50
    tol: float = 1e-5
    ftol: float = 3e-2
    backward_iters: int = 5
    implicit_solver: str = "auto"
    implicit_unconverged: str = "memory"
    bounds: str = "project"
    bounds_weight: float = 1e-3
    compile_objective: bool = False
    objective_vjp: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    where: InitVar[str] = "trajopt"

    def __post_init__(self, where: str) -> None:
        _choice(f"{where}.solver", self.solver, SOLVER_NAMES)
        _choice(f"{where}.backward", self.backward, BACKWARD_MODES)
        require_int(f"{where}.max_iters", self.max_iters, minimum=0)
        require_number(f"{where}.tol", self.tol, low=0.0)
        require_number(f"{where}.ftol", self.ftol, low=0.0)
        require_int(f"{where}.backward_iters", self.backward_iters, minimum=0)
        _choice(f"{where}.implicit_solver", self.implicit_solver, IMPLICIT_SOLVERS)
        _choice(f"{where}.implicit_unconverged", self.implicit_unconverged, UNCONVERGED_MODES)
        _choice(f"{where}.bounds", self.bounds, BOUNDS)
        require_number(f"{where}.bounds_weight", self.bounds_weight, low=0.0)
        for flag in ("compile_objective", "objective_vjp"):
            if not isinstance(getattr(self, flag), bool):
                raise UserError(f"{where}.{flag} must be true or false, got {getattr(self, flag)!r}")
        if self.solver == "lm_refine" and self.backward == "implicit":
            raise UserError(f"{where}.backward=implicit does not apply to lm_refine (never converged); "
                            "use truncated, unroll or none")
        options = _plain(self.options) if self.options is not None else {}
        if not isinstance(options, dict):
            raise UserError(f"{where}.options must be a mapping of solver options, got {self.options!r}")
        valid = _solver_options(self.solver)
        for name, value in options.items():
            key = f"{where}.options.{name}"
            if name not in valid:
                raise UserError(f"{key} is not an option of solver {self.solver}; valid: {', '.join(valid)}")
            optional = name in _OPTIONAL
            if name in _INT_OPTIONS:
                require_int(key, value, minimum=_INT_OPTIONS[name], optional=optional)
            elif name in _BOOL_OPTIONS:
                if not isinstance(value, bool):
                    raise UserError(f"{key} must be true or false, got {value!r}")
            elif name in _NUMBER_OPTIONS:
                low, low_open = _NUMBER_OPTIONS[name]
                require_number(key, value, low=low, low_open=low_open, optional=optional)
        object.__setattr__(self, "options", options)  # a plain copy: the caller's mapping is not shared

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None, where: str = "trajopt", *,
                     ignore: Collection[str] = ()) -> TrajOptConfig:
        """The config of a mapping (a dict or an omegaconf node), every key and value checked.

        where: the mapping's path in the user's config, for messages (``trajopt.solver must be ...``).
        ignore: keys of the same section that belong to the caller, not to the solver (RL's ``q_tau``).
        Unknown keys are refused, listing the valid ones; missing keys take TrajOpt's defaults.
        """
        if mapping is None:
            mapping = {}
        if not isinstance(mapping, Mapping):
            raise UserError(f"{where} must be a mapping of trajopt settings, got {mapping!r}")
        keys = [f.name for f in fields(cls)]
        values = {}
        for k, v in mapping.items():
            if k in ignore:
                continue
            if k not in keys:
                raise UserError(f"{where}.{k} is not a trajopt setting; valid: {', '.join(keys)}")
            values[k] = _plain(v)
        return cls(**values, where=where)

    def kwargs(self) -> dict[str, Any]:
        """The TrajOpt keyword arguments of this config."""
        kw = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "options"}
        return {**kw, **self.options}

    def build(self, **overrides) -> TrajOpt:
        """The TrajOpt layer; overrides (e.g. low=, high=, or any setting) win over the config's values."""
        return TrajOpt(**{**self.kwargs(), **overrides})
