"""The fast paths of the layer give the reference path's actions and gradients on the problem family.

* fixed-shape path (solver option sync_every > 1): branch-free iterations with per-sample masks, the
  termination test every k iterations (the GPU-friendly path) vs the reference path (sync_every=1);
* recorded graph: the implicit backward reuses the graph of the solve's last evaluation instead of
  evaluating the objective again (reference: the re-evaluation);
* compiled evaluations (TrajOpt(compile_objective=True)) vs eager ones, and the fallback when compiling fails;
* the ftol stopping rule the benchmark replays on traces (bench.trajopt_family.simulate_rule) is the one
  the solver applies, so a rule tuned on the replay is the rule users get.
Problems: difftop.bench.family specs at small network sizes (the family's shapes, warm starts, gains and
hard/smooth min), float64 so that "to float tolerance" is tight.
"""

from __future__ import annotations

import pytest
import torch

from difftop.bench.family import build, draw
from difftop.bench.trajopt_family import simulate_rule, trace
from difftop.trajopt import TrajOpt
from difftop.trajopt.evaluate import Problem

DT = torch.float64
FAMILY = draw("test", 6, seed=5, horizons=(1, 8), action_dims=(2, 14), head_gains=[0.3, 1.0, 3.0],
              q_taus=[0.0, 0.05])


def _problem(spec, batch=4):
    return build(spec, batch, latent_dim=12, mlp_dim=24, dtype=DT)


def _solve_and_grad(P, layer):
    """Actions, info and the gradient of a first-action loss with respect to every model parameter."""
    P.model.zero_grad(set_to_none=True)
    z0 = P.model.h(P.obs)
    actions, info = layer(P.objective(z0), P.init(z0))
    w = torch.linspace(-1, 1, actions.shape[-1], dtype=DT)
    (actions[:, 0] * w).sum().backward()
    grads = torch.cat([p.grad.flatten() for p in P.model.parameters() if p.grad is not None])
    return actions.detach(), info, grads


@pytest.mark.parametrize("spec", FAMILY, ids=lambda s: f"{s.name}-H{s.horizon}m{s.action_dim}-{s.init}")
def test_fixed_shape_path_matches_reference(spec):
    P = _problem(spec)
    a_ref, info_ref, g_ref = _solve_and_grad(P, TrajOpt())
    a_fix, info_fix, g_fix = _solve_and_grad(P, TrajOpt(sync_every=8))
    torch.testing.assert_close(a_fix, a_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_fix, g_ref, rtol=1e-10, atol=1e-12)
    assert torch.equal(info_fix.iterations, info_ref.iterations)
    assert torch.equal(info_fix.status, info_ref.status)
    # The gradient reaches the model (the comparison is not of zeros) unless every first action sits
    # on a bound, where its derivative is 0.
    assert g_ref.abs().max() > 0 or bool((a_ref[:, 0].abs() == 1).all())


def test_recorded_graph_matches_re_evaluation(monkeypatch):
    spec = FAMILY[3]
    P = _problem(spec, batch=1)
    calls = {"n": 0}
    objective = P.objective

    def counting(z0):
        J = objective(z0)

        def f(a):
            calls["n"] += 1
            return J(a)
        return f

    P.objective = counting
    a_fast, info, g_fast = _solve_and_grad(P, TrajOpt())
    fast_calls = calls["n"]
    # Every evaluation of the solve is one of init + iterations: the backward added none.
    assert fast_calls == int(info.iterations.max()) + 1
    # Reference: no evaluation keeps its graph, so the implicit backward evaluates the objective again.
    plain = Problem.value_grad

    def no_record(self, x, create_graph=False):
        self.record = False
        return plain(self, x, create_graph)

    monkeypatch.setattr(Problem, "value_grad", no_record)
    calls["n"] = 0
    a_ref, _, g_ref = _solve_and_grad(P, TrajOpt())
    assert calls["n"] == fast_calls + 1
    torch.testing.assert_close(a_fast, a_ref, rtol=0, atol=0)
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("window,grad", [(1, 0.0), (3, 0.5)])
def test_replayed_stopping_rule_is_the_solvers(window, grad):
    ftol = 3e-3
    for spec in FAMILY[:4]:
        P = _problem(spec, batch=6)
        J, pgn = trace(P, TrajOpt(ftol=0.0), 50)
        stop = simulate_rule(J, pgn, ftol, window, grad).clamp(max=50)
        with torch.no_grad():
            z0 = P.model.h(P.obs)
            _, info = TrajOpt(ftol=ftol, ftol_window=window, ftol_grad=grad)(P.objective(z0), P.init(z0))
        expect = J.gather(0, stop.unsqueeze(0)).squeeze(0)
        torch.testing.assert_close(info.objective.double(), expect, rtol=0, atol=0)


def test_ftol_window_is_checked():
    with pytest.raises(ValueError, match="ftol_window"):
        TrajOpt(ftol_window=0)


def test_compiled_objective_matches_reference(monkeypatch):
    """compile_objective=True: the graph-free evaluations run through torch.compile (one compile, ~10-20 s
    on a loaded 2-core CPU), same iterates, actions and gradients as the eager reference to rounding."""
    import difftop.trajopt.evaluate as evaluate

    spec = FAMILY[3]
    P = _problem(spec, batch=2)
    a_ref, info_ref, g_ref = _solve_and_grad(P, TrajOpt())
    layer = TrajOpt(compile_objective=True)
    _solve_and_grad(P, layer)  # compiles
    used = {"n": 0}
    call = evaluate.CompiledValueGrad.__call__

    def spy(self, *a):
        out = call(self, *a)
        used["n"] += out is not None
        return out

    monkeypatch.setattr(evaluate.CompiledValueGrad, "__call__", spy)
    a_c, info_c, g_c = _solve_and_grad(P, layer)  # the next acting step (new z0) reuses the compiled graph
    assert layer._compiled.error is None
    # every evaluation but the first (eager: does J depend on the actions?) went through the compiled graph
    assert used["n"] == int(info_c.iterations.max()) > 2
    torch.testing.assert_close(a_c, a_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_c, g_ref, rtol=1e-8, atol=1e-10)
    assert torch.equal(info_c.iterations, info_ref.iterations)
    assert torch.equal(info_c.status, info_ref.status)


def test_compile_failure_falls_back_to_eager(monkeypatch):
    import difftop.trajopt.evaluate as evaluate

    def broken(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("cannot trace this objective")
        return run

    monkeypatch.setattr(evaluate.torch, "compile", broken)
    P = _problem(FAMILY[1], batch=2)
    a_ref, info_ref, g_ref = _solve_and_grad(P, TrajOpt())
    layer = TrajOpt(compile_objective=True)
    with pytest.warns(RuntimeWarning, match="fell back to eager"):
        a_c, info_c, g_c = _solve_and_grad(P, layer)
    assert isinstance(layer._compiled.error, RuntimeError)
    # the fallback evaluates with autograd, the defaults with the model's hand-written VJP (difftop/nn/vjp.py)
    torch.testing.assert_close(a_c, a_ref, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(g_c, g_ref, rtol=1e-12, atol=1e-14)


def test_compiled_layer_pickles_without_its_graph():
    import copy
    import pickle

    layer = TrajOpt(compile_objective=True)
    for other in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
        assert other._compiled is not None and other._compiled._fn is None and other._compiled.error is None
