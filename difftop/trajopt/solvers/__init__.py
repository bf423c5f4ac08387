"""Solvers for max_A J(A) over a box, all batched with per-sample convergence."""

from .base import Result, Solver, State, run_solver
from .first_order import LBFGS, ProjectedGradient
from .second_order import LevenbergMarquardt, Newton

SOLVERS: dict[str, type[Solver]] = {
    "lbfgs": LBFGS,
    "pgd": ProjectedGradient,
    "newton": Newton,
    "lm": LevenbergMarquardt,
}


def make_solver(name: str, **options) -> Solver:
    if name not in SOLVERS:
        raise ValueError(f"unknown trajopt solver {name!r}; choose one of {sorted(SOLVERS)} or 'theseus'")
    return SOLVERS[name](**options)


__all__ = ["SOLVERS", "make_solver", "run_solver", "Solver", "State", "Result", "LBFGS",
           "ProjectedGradient", "Newton", "LevenbergMarquardt"]
