"""Per-sample diagnostics returned by every solver.

Why a dataclass of tensors: a training loop wants to log means and a test wants to
index one sample; both are one attribute access away, and nothing is a Python list.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

# Status codes, one per sample. Bit flags so that several events can be reported at once.
OK = 0
NONFINITE_INIT = 1  # objective or gradient NaN/inf at the initial actions: sample left at init
NONFINITE_STEP = 2  # a NaN/inf was met during the solve (a trial rejected): the sample went on from,
#                     or stopped at, its last finite iterate; it may still have converged
DAMPED = 4  # the Newton/LM system was indefinite or singular and had to be damped
IMPLICIT_DAMPED = 8  # the Hessian at the solution was not negative definite: implicit gradient damped
NOT_CONVERGED = 16  # reached max_iters without meeting the tolerance
BACKWARD_FALLBACK = 32  # backward could not use the requested mode for this sample
IMPLICIT_INEXACT = 64  # implicit backward at a non-converged point: the solver's quasi-Newton estimate of
#                        the inverse Hessian replaced the exact solve (TrajOpt(implicit_unconverged=...))
INIT_REPLACED = 128  # the initial actions contained NaN/inf: the solve started from the box centre instead
NO_ACTION_GRADIENT = 256  # the objective does not depend on the actions (its output does not require grad,
#                           or autograd found no path to the actions: detached, or computed in numpy):
#                           nothing to optimise, the initial actions are returned, not converged

FLAG_NAMES = {
    NONFINITE_INIT: "nonfinite_init",
    NONFINITE_STEP: "nonfinite_step",
    DAMPED: "damped",
    IMPLICIT_DAMPED: "implicit_damped",
    NOT_CONVERGED: "not_converged",
    BACKWARD_FALLBACK: "backward_fallback",
    IMPLICIT_INEXACT: "implicit_inexact",
    INIT_REPLACED: "init_replaced",
    NO_ACTION_GRADIENT: "no_action_gradient",
}


@dataclass
class TrajOptInfo:
    """What happened to each of the B problems of a batch (all tensors have leading dim B)."""

    iterations: torch.Tensor  # (B,) int64, iterations this sample actually took
    converged: torch.Tensor  # (B,) bool, projected-gradient norm below tol
    objective: torch.Tensor  # (B,) final objective value (detached)
    grad_norm: torch.Tensor  # (B,) final projected-gradient infinity norm (detached)
    status: torch.Tensor  # (B,) int64 bit flags, see the constants above
    solver: str = ""
    backward: str = ""

    @classmethod
    def empty(cls, device=None, dtype: torch.dtype = torch.float32, solver: str = "", backward: str = ""
              ) -> TrajOptInfo:
        """The info of an empty batch (B = 0): every field a (0,) tensor."""
        z = torch.zeros(0, dtype=torch.long, device=device)
        f = torch.zeros(0, dtype=dtype, device=device)
        return cls(iterations=z, converged=z.bool(), objective=f, grad_norm=f.clone(), status=z.clone(),
                   solver=solver, backward=backward)

    def flagged(self, flag: int) -> torch.Tensor:
        """(B,) bool: samples for which `flag` was raised."""
        return (self.status & flag) != 0

    @property
    def failed(self) -> torch.Tensor:
        """(B,) bool: samples whose objective could not be evaluated or optimised (left at init, stopped
        short of convergence by a NaN/inf, or an objective that does not depend on the actions)."""
        lost = self.flagged(NONFINITE_INIT | NO_ACTION_GRADIENT)
        return lost | (self.flagged(NONFINITE_STEP) & ~self.converged)

    def describe(self, i: int) -> list[str]:
        """Names of the flags raised for sample i."""
        s = int(self.status[i])
        return [name for bit, name in FLAG_NAMES.items() if s & bit]

    def summary(self) -> dict[str, float]:
        """Batch means, ready for a CSV/TensorBoard logger."""
        out = {
            "iterations": self.iterations.double().mean().item(),
            "converged": self.converged.double().mean().item(),
            "objective": self.objective.double().mean().item(),
            "grad_norm": self.grad_norm.double().mean().item(),
        }
        for bit, name in FLAG_NAMES.items():
            out[name] = ((self.status & bit) != 0).double().mean().item()
        return out

    def to(self, device) -> TrajOptInfo:
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in kw.items():
            if isinstance(v, torch.Tensor):
                kw[k] = v.to(device)
        return TrajOptInfo(**kw)
