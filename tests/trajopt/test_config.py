"""TrajOptConfig: RL's and IL's one set of trajectory-optimization settings, checked once with one-line
errors naming the key; and the Theseus backend's LM settings reaching it through TrajOpt."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from difftop.errors import UserError
from difftop.trajopt import TrajOpt, TrajOptConfig, optimize
from difftop.trajopt.theseus_backend import is_available

needs_theseus = pytest.mark.skipif(not is_available(), reason="theseus-ai not installed")


def test_defaults_are_trajopts():
    layer = TrajOptConfig().build()
    ref = TrajOpt()
    for k in ("solver_name", "backward", "max_iters", "tol", "ftol", "backward_iters", "implicit_solver",
              "implicit_unconverged", "solver_options"):
        assert getattr(layer, k) == getattr(ref, k), k


def test_from_mapping_builds_the_layer_with_every_setting():
    rl = {"solver": "lbfgs", "backward": "implicit", "max_iters": 20, "tol": 1e-4,
          "implicit_unconverged": "exact", "q_tau": 0.05, "ftol": 1e-6, "backward_iters": 3,
          "implicit_solver": "cg", "options": {"memory": 4, "sign_iters": 2, "cg_max_iters": 7}}
    cfg = TrajOptConfig.from_mapping(rl, ignore=("q_tau",))
    layer = cfg.build(low=-0.5, high=0.5)
    assert (layer.max_iters, layer.tol, layer.ftol, layer.backward_iters) == (20, 1e-4, 1e-6, 3)
    assert (layer.implicit_solver, layer.implicit_unconverged) == ("cg", "exact")
    assert layer.solver.memory == 4 and layer.solver.sign_iters == 2 and layer.cg_max_iters == 7
    assert (layer.low, layer.high) == (-0.5, 0.5)
    assert layer._compiled is None and TrajOptConfig(compile_objective=True).build()._compiled is not None
    assert cfg.build(max_iters=3).max_iters == 3  # overrides win
    assert dataclasses.replace(cfg, max_iters=5).max_iters == 5
    rl["options"]["memory"] = 99
    assert cfg.options["memory"] == 4  # a copy: the caller's mapping is not shared


def test_omegaconf_nodes_are_accepted():
    omegaconf = pytest.importorskip("omegaconf")
    node = omegaconf.OmegaConf.create({"solver": "lm", "max_iters": 10, "options": {"damping": 1e-2}})
    cfg = TrajOptConfig.from_mapping(node, where="policies.difftop")
    assert cfg.options == {"damping": 1e-2} and type(cfg.options) is dict
    assert cfg.build().solver.damping == 1e-2


LB = "trajopt.options.damping is not an option of solver lbfgs; valid: memory"
BAD = [
    ({"solver": "foo"}, "trajopt.solver must be one of lbfgs, pgd, newton, lm, theseus, lm_refine, "
                        "got 'foo'"),
    ({"slover": "lm"}, "trajopt.slover is not a trajopt setting; valid: solver, backward, max_iters, tol, "
                       "ftol, backward_iters, implicit_solver, implicit_unconverged, bounds, bounds_weight, "
                       "compile_objective, objective_vjp, options"),
    ({"compile_objective": "yes"}, "trajopt.compile_objective must be true or false, got 'yes'"),
    ({"objective_vjp": 1}, "trajopt.objective_vjp must be true or false, got 1"),
    ({"backward": "implicit_cg"}, "trajopt.backward must be one of implicit, unroll, truncated, none, "
                                  "got 'implicit_cg'"),
    ({"max_iters": -1}, "trajopt.max_iters must be an integer >= 0, got -1"),
    ({"max_iters": 2.5}, "trajopt.max_iters must be an integer >= 0, got 2.5"),
    ({"max_iters": True}, "trajopt.max_iters must be an integer >= 0, got True"),
    ({"tol": "small"}, "trajopt.tol must be a number >= 0, got 'small'"),
    ({"tol": -1e-5}, "trajopt.tol must be a number >= 0, got -1e-05"),
    ({"ftol": float("nan")}, "trajopt.ftol must be a number >= 0, got nan"),
    ({"backward_iters": -2}, "trajopt.backward_iters must be an integer >= 0, got -2"),
    ({"implicit_solver": "lu"}, "trajopt.implicit_solver must be one of auto, dense, cg, got 'lu'"),
    ({"implicit_unconverged": "skip"},
     "trajopt.implicit_unconverged must be one of memory, exact, got 'skip'"),
    ({"options": [1, 2]}, "trajopt.options must be a mapping of solver options, got [1, 2]"),
    ({"options": {"memory": 0}}, "trajopt.options.memory must be an integer >= 1, got 0"),
    ({"options": {"sign_step": 0}}, "trajopt.options.sign_step must be a number > 0, got 0"),
    ({"options": {"reduced": "yes"}}, "trajopt.options.reduced must be true or false, got 'yes'"),
    ({"options": {"damping": 1e-3}}, LB),
    ({"solver": "lm", "options": {"damping": -1.0}},
     "trajopt.options.damping must be a number >= 0, got -1.0"),
    ({"solver": "newton", "options": {"memory": 3}},
     "trajopt.options.memory is not an option of solver newton"),
    ({"solver": "theseus", "options": {"memory": 3}},
     "trajopt.options.memory is not an option of solver theseus; valid: step_size, damping, residual_offset"),
    ({"solver": "theseus", "options": {"step_size": 0}},
     "trajopt.options.step_size must be a number > 0, got 0"),
]


@pytest.mark.parametrize("mapping,message", BAD, ids=[str(m) for m, _ in BAD])
def test_bad_settings_are_one_line_user_errors_naming_the_key(mapping, message):
    with pytest.raises(UserError) as err:
        TrajOptConfig.from_mapping(mapping)
    text = str(err.value)
    assert text.startswith(message) and "\n" not in text


def test_messages_use_the_callers_path():
    with pytest.raises(UserError, match=r"^policies\.difftop\.max_iters must be an integer >= 0, got -3$"):
        TrajOptConfig.from_mapping({"max_iters": -3}, where="policies.difftop")
    with pytest.raises(UserError, match=r"^trajopt must be a mapping"):
        TrajOptConfig.from_mapping(["lbfgs"])
    assert TrajOptConfig.from_mapping(None) == TrajOptConfig()


def test_direct_construction_is_checked_too():
    with pytest.raises(UserError, match=r"^trajopt\.solver must be one of"):
        TrajOptConfig(solver="adam")


@needs_theseus
def test_theseus_lm_settings_reach_the_backend():
    """The release's per-task LM settings (iterations, step size, damping, truncated iterations) are set
    through TrajOpt / TrajOptConfig, and give what solve_theseus gives with them."""
    from difftop.trajopt.theseus_backend import solve_theseus

    t = torch.tensor([0.3, -0.2])

    def J(A):
        return -((A - t) ** 2).sum((1, 2))

    init = torch.zeros(3, 2, 2)
    settings = {"max_iters": 7, "backward_iters": 2, "step_size": 0.05, "damping": 0.1}
    cfg = TrajOptConfig.from_mapping({"solver": "theseus", "backward": "truncated", "max_iters": 7,
                                      "backward_iters": 2, "options": {"step_size": 0.05, "damping": 0.1}})
    a, info = cfg.build()(J, init)
    a_ref, info_ref = solve_theseus(J, init, backward="truncated", tol=cfg.tol, **settings)
    assert torch.equal(a, a_ref) and torch.equal(info.iterations, info_ref.iterations)
    assert (info.iterations <= 7).all()
    a_default, _ = optimize(J, init, solver="theseus", backward="truncated")
    assert not torch.allclose(a, a_default)  # the settings changed the solve
    with pytest.raises(ValueError, match="solver 'theseus' has no option 'memory'"):
        TrajOpt(solver="theseus", memory=3)
