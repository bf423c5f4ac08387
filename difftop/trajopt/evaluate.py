"""Batched evaluation of an objective and its derivatives with respect to the actions.

The objective maps actions (B, H, m) to (B,) values. Because samples are independent,
the gradient of J.sum() is the per-sample gradient, and a Hessian-vector product of the
summed gradient is the per-sample product: one autograd call serves the whole batch.
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

Objective = Callable[[Tensor], Tensor]


def _value_and_grad(objective: Objective, x: Tensor, shape: tuple) -> tuple[Tensor, Tensor]:
    """(J, dJ/dx) of the objective at flattened x, with torch.func (a pure function: what torch.compile
    traces into one forward-backward graph)."""

    def f(v: Tensor):
        J = objective(v.reshape(shape)).reshape(shape[0])
        return J.sum(), J

    g, (_, J) = torch.func.grad_and_value(f, has_aux=True)(x)
    return J, g


class CompiledValueGrad:
    """The objective's value and gradient through torch.compile, for the graph-free evaluations of a solve
    (TrajOpt(compile_objective=True)); built once per layer and reused across its calls.

    Why: at batch 1 about two thirds of an evaluation of a TD-MPC-sized latent objective is per-op
    overhead (Python, dispatcher, autograd nodes), not arithmetic (results/trajopt/README.md); a compiled
    forward-backward graph removes most of it. Why not always: the first call for each new objective
    code, model or shape compiles, ~20 s on a 2-core CPU (measured in results/trajopt/README.md), which
    a short script or a test never earns back. A call that fails to compile (an objective dynamo cannot
    trace) turns the layer back to eager evaluation for good, with one warning: same results, no speed-up.
    Guards: a new closure of the same code (a new z0 each acting step) reuses the compiled graph.
    """

    def __init__(self):
        self._fn = None
        self.error: Exception | None = None  # why compilation was turned off
        # dynamo keeps its compiled graphs, and its limit of 8 recompilations, per code object: a copy of
        # the code per layer keeps one layer's models and shapes from using up another layer's budget
        # (past the limit dynamo silently runs eager)
        self._code = types.FunctionType(_value_and_grad.__code__.replace(), _value_and_grad.__globals__,
                                        "_value_and_grad")

    def __getstate__(self) -> dict:
        """Pickled (a saved or deep-copied layer) without the compiled graph: rebuilt on first use."""
        return {"error": self.error}

    def __setstate__(self, state: dict) -> None:
        self.__init__()
        self.error = state["error"]

    def __call__(self, objective: Objective, x: Tensor, shape: tuple) -> tuple[Tensor, Tensor] | None:
        if self.error is not None:
            return None
        if self._fn is None:
            self._fn = torch.compile(self._code, dynamic=False)
        try:
            with torch.no_grad():  # a graph-free evaluation: no graph to the parameters either
                J, g = self._fn(objective, x.detach(), tuple(shape))
        except Exception as e:  # noqa: BLE001 - any compile/trace failure falls back to eager
            self.error = e
            warnings.warn(f"trajopt: compile_objective fell back to eager evaluation ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})", RuntimeWarning, stacklevel=2)
            return None
        return J.detach(), g.detach()


class Problem:
    """Wraps a user objective on flattened (B, n) variables."""

    def __init__(self, objective: Objective, shape: torch.Size, compiled: CompiledValueGrad | None = None,
                 fast: bool = True):
        self.objective = objective
        # Graph-free value_grad calls after the first (which checks that J depends on the actions at all)
        # go through this compiled function when given (TrajOpt(compile_objective=True)).
        self.compiled = compiled
        # ... or through the objective's own graph-free `value_grad(actions) -> (J, dJ/dA)` when it has
        # one (latent_objective over functions with a hand-written VJP, difftop/nn/vjp.py)
        own = getattr(objective, "value_grad", None) if fast else None
        self.fast = own if callable(own) and compiled is None else None
        # whether the first evaluation may skip autograd's check that J depends on the actions at all: a
        # select()ed problem (its parent's first evaluation checked), and an objective with its own
        # value_grad (the latent objective feeds every action into a Linear layer: it depends on them)
        self.checked = self.fast is not None
        self.evals = 0
        self.shape = shape  # (B, H, m)
        self.batch = shape[0]
        self.n = shape[1] * shape[2]
        self._eye = None
        # When `record` is set, value_grad keeps the graph of its evaluation in `recorded`
        # (x_leaf, J, g): the implicit backward reuses it if the solve ends at that point,
        # instead of evaluating the objective once more (see run_solver).
        self.record = False
        self.recorded: tuple[Tensor, Tensor, Tensor] | None = None
        # Set when an evaluation found no autograd path from the actions to J (a detached output, or
        # one computed outside torch): J then does not depend on the actions as far as the solvers can
        # tell, and run_solver flags the batch NO_ACTION_GRADIENT instead of reporting "converged".
        self.no_action_grad = False
        # (B,) unit of J per sample (see solvers.base.objective_scale): 1 for well-scaled problems;
        # set by run_solver after the first evaluation, read by every scale-dependent threshold.
        self.scale: Tensor | None = None

    @property
    def can_select(self) -> bool:
        """Whether the objective can be restricted to some of its rows (`objective.rows(idx)`)."""
        return callable(getattr(self.objective, "rows", None))

    def select(self, idx: Tensor) -> Problem:
        """The problem of the samples idx alone (solver compaction, solvers.base.compact_step): the
        objective's `rows(idx)`, their units of J; graph-free (no record, no compiled evaluation)."""
        sub = Problem(self.objective.rows(idx), torch.Size((idx.shape[0], *self.shape[1:])),
                      fast=self.fast is not None)
        sub.scale = None if self.scale is None else self.scale.index_select(0, idx)
        sub.no_action_grad = self.no_action_grad
        sub.checked = sub.checked or self.evals > 0
        return sub

    def absorb(self, sub: Problem) -> None:
        """Take back what a select()ed problem learnt: its evaluations, a lost dependence on the actions."""
        self.evals += sub.evals
        self.no_action_grad |= sub.no_action_grad

    def _call(self, x: Tensor) -> Tensor:
        J = self.objective(x.reshape(self.shape))
        if J.shape != (self.batch,):
            if J.numel() == self.batch:
                J = J.reshape(self.batch)
            else:
                raise ValueError(
                    f"trajopt: objective must return shape ({self.batch},), got {tuple(J.shape)}"
                )
        return J

    @staticmethod
    def _leaf(x: Tensor, create_graph: bool) -> Tensor:
        # In graph mode x may carry a graph to the parameters (unrolling); keep it.
        if create_graph and x.requires_grad:
            return x
        return x.detach().requires_grad_(True)

    def value(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self._call(x)

    def value_grad(self, x: Tensor, create_graph: bool = False) -> tuple[Tensor, Tensor]:
        self.evals += 1
        if self.compiled is not None and self.evals > 1 and not create_graph and not self.record \
                and not self.no_action_grad:
            out = self.compiled(self.objective, x, tuple(self.shape))
            if out is not None:
                return out
        first = self.evals == 1
        # the objective's own value_grad keeps no graph; with `record` the first evaluation still goes
        # through autograd, so that a solve that ends where it started (every action held at a bound, as
        # in a third of RL states) needs no further evaluation for its implicit backward
        if self.fast is not None and (self.checked or not first) and not (self.record and first) \
                and not create_graph and not self.no_action_grad:
            J, g = self.fast(x.reshape(self.shape))
            return J.reshape(self.batch), g.reshape(self.batch, self.n)
        if self.record and not create_graph:
            J, g, xl = self.grad_graph(x)
            self.recorded = (xl, J, g)
            return J.detach(), g.detach()
        with torch.enable_grad():
            xl = self._leaf(x, create_graph)
            J = self._call(xl)
            if not J.requires_grad:  # objective constant in the actions
                self.no_action_grad = True
                g = torch.zeros_like(xl)
            else:
                (g,) = torch.autograd.grad(J.sum(), xl, create_graph=create_graph, allow_unused=True)
                if g is None:
                    self.no_action_grad = True
                    g = torch.zeros_like(xl)
        if not create_graph:
            J, g = J.detach(), g.detach()
        return J, g

    def value_grad_hess(self, x: Tensor, create_graph: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Value, gradient and dense (B, n, n) Hessian (n batched Hessian-vector products)."""
        with torch.enable_grad():
            xl = self._leaf(x, create_graph)
            J = self._call(xl)
            if not J.requires_grad:
                self.no_action_grad = True
                z = torch.zeros_like(xl)
                return J.detach(), z, z.new_zeros(self.batch, self.n, self.n)
            (g,) = torch.autograd.grad(J.sum(), xl, create_graph=True, allow_unused=True)
            self.no_action_grad |= g is None
            if g is None or not g.requires_grad:  # linear (or constant) in the actions
                g = torch.zeros_like(xl) if g is None else g
                H = xl.new_zeros(self.batch, self.n, self.n)
            else:
                H = self._hessian_rows(g, xl, create_graph)
        if not create_graph:
            J, g, H = J.detach(), g.detach(), H.detach()
        H = 0.5 * (H + H.transpose(1, 2))
        return J, g, H

    def _hessian_rows(self, g: Tensor, xl: Tensor, create_graph: bool) -> Tensor:
        if self._eye is None or self._eye.dtype != g.dtype or self._eye.device != g.device:
            eye = torch.eye(self.n, dtype=g.dtype, device=g.device)
            self._eye = eye.unsqueeze(1).expand(self.n, self.batch, self.n)
        (Hr,) = torch.autograd.grad(
            g, xl, grad_outputs=self._eye, is_grads_batched=True, create_graph=create_graph,
            retain_graph=True, allow_unused=True,
        )
        if Hr is None:
            return xl.new_zeros(self.batch, self.n, self.n)
        return Hr.permute(1, 0, 2)

    def grad_graph(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(J, g, x_leaf) at fixed actions x with g's graph kept: g depends on the objective's
        parameters (for the implicit backward) and on x_leaf (for Hessian-vector products)."""
        with torch.enable_grad():
            xl = x.detach().requires_grad_(True)
            J = self._call(xl)
            if not J.requires_grad:
                self.no_action_grad = True
                return J, torch.zeros_like(xl), xl
            (g,) = torch.autograd.grad(J.sum(), xl, create_graph=True, allow_unused=True)
            if g is None:
                self.no_action_grad = True
                g = torch.zeros_like(xl)
        return J, g, xl
