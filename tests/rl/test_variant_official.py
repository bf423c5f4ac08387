"""``variant=official``: the release's settings reach the built agent and its trajopt layer (issue 31).

The configs are composed by Hydra from the real configs/ (as ``difftop rl`` does) and resolved by the
trainer's ``resolve_config``; the agent is built on a made-up observation shape (no environment).
"""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from difftop.cli import CONFIG_DIR
from difftop.errors import UserError
from difftop.rl.difftop_agent import make_agent, resolve_variant
from difftop.rl.trainer import resolve_config

TINY = ["mlp_dim=32", "enc_dim=16", "latent_dim=8", "num_samples=16", "num_elites=4", "iterations=2",
        "batch_size=16", "horizon=3", "seed_steps=0", "device=cpu"]


def _cfg(*overrides: str):
    with initialize_config_dir(version_base=None, config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name="rl", overrides=[*TINY, *overrides])
    cfg = dict(cfg)
    cfg.pop("hydra", None)
    return resolve_config(OmegaConf.create(cfg))


def _agent(*overrides: str, obs_dim: int = 5, action_dim: int = 1):
    cfg = _cfg(*overrides)
    return cfg, make_agent(cfg, (obs_dim,), action_dim)


def _wake(agent) -> None:
    """Give the zero-initialised heads (reward, Q, Q_s: TD-MPC's init) small random weights, so that the
    objective and the PG loss depend on the actions as in a trained model."""
    with torch.no_grad():
        for p in [*agent.model.parameters(), *agent.actor.critic.parameters()]:
            if not bool(p.any()):
                p.normal_(0.0, 0.3)


def test_official_settings_reach_the_layer_for_cartpole_swingup_sparse():
    cfg, agent = _agent("variant=official", "task=cartpole-swingup-sparse")
    actor, layer = agent.actor, agent.actor.trajopt
    # the release's cfgs/tasks/cartpole-swingup-sparse.yaml, read back from the built solver
    assert (layer.solver_name, layer.backward, layer.max_iters, layer.backward_iters) == \
        ("lm_refine", "truncated", 50, 5)
    assert layer.solver_options == {"step_size": 1e-3, "damping": 0.5, "residual_offset": 1000.0,
                                    "clamp_in_cost": True}
    assert cfg.action_repeat == 8
    assert (actor.terminal, actor.mppi_steps, actor.pg_reduce) == ("pi", 6000, "sum")
    assert actor.mppi is not None and cfg.explore_std == 0.0 and cfg.pg_grad_clip_norm == 100
    assert cfg.qs_horizon is None


@pytest.mark.parametrize("task,expected", [
    ("reacher-easy", (4, 100, 1e-4, 1e-2)),
    ("walker-run", (2, 200, 3e-5, 1e-3)),
    ("cartpole-swingup", (4, 50, 1e-3, 1e-3)),  # no task file in the release: its defaults
])
def test_official_per_task_table(task, expected):
    cfg = _cfg("variant=official", f"task={task}")
    t = cfg.trajopt
    got = (cfg.action_repeat, t.max_iters, t.options.step_size, t.options.damping)
    assert got == expected


def test_command_line_values_win_over_the_table():
    cfg = _cfg("variant=official", "task=reacher-easy", "trajopt.max_iters=7", "action_repeat=2",
               "trajopt.options.damping=0.3")
    assert (cfg.trajopt.max_iters, cfg.action_repeat, cfg.trajopt.options.damping) == (7, 2, 0.3)
    assert cfg.trajopt.options.step_size == 1e-4


def test_default_variant_is_unchanged():
    cfg, agent = _agent("task=cartpole-swingup")
    layer = agent.actor.trajopt
    assert (layer.solver_name, layer.backward, layer.bounds, layer.max_iters) == ("lbfgs", "implicit",
                                                                                   "project", 50)
    assert (agent.actor.terminal, agent.actor.mppi, agent.actor.pg_reduce) == ("action", None, "mean")
    assert cfg.action_repeat == 8 and cfg.explore_std == 0.15


def test_solver_options_and_bounds_pass_through_the_trajopt_section():
    _, agent = _agent("task=cartpole-swingup", "trajopt.bounds=tanh", "+trajopt.options.memory=3")
    layer = agent.actor.trajopt
    assert layer.bounds == "tanh" and layer.solver.memory == 3
    with pytest.raises(UserError, match="variant must be one of"):
        resolve_variant(OmegaConf.create({"variant": "authors"}))
    with pytest.raises(UserError, match="terminal must be one of"):
        resolve_variant(OmegaConf.create({"variant": "difftop", "terminal": "q"}))


def test_official_actor_warms_up_with_mppi_then_refines_h_actions():
    torch.manual_seed(0)
    _, agent = _agent("variant=official", "task=cartpole-swingup-sparse", "mppi_steps=10")
    _wake(agent)
    actor, obs = agent.actor, torch.randn(1, 5)
    actor.act(obs, step=3, t0=True)  # MPPI: no solve, no policy gradient
    assert actor._pg_count == 0 and actor.mppi.planner.prev_mean is not None
    z0 = agent.model.h(obs)
    with torch.no_grad():
        plan = actor.solve(z0, step=10**6, explore=False, record=False)
    assert plan.shape == (1, 3, 1)  # H actions (terminal pi), not H + 1
    a = actor.act(obs, step=10, t0=True)
    assert actor._pg_count == 1 and a.shape == (1,)
    # the policy gradient reaches the model although every action may sit at a bound
    assert any(float(acc.abs().sum()) > 0 for acc in actor._pg_acc)


def test_pg_reduce_sum_is_count_times_the_mean():
    norms = {}
    for reduce in ("mean", "sum"):
        torch.manual_seed(0)
        _, agent = _agent("variant=official", "task=cartpole-swingup-sparse", "mppi_steps=0",
                          f"pg_reduce={reduce}", "pg_grad_clip_norm=1e9")
        _wake(agent)
        obs = torch.randn(1, 5)
        for _ in range(3):
            agent.actor.act(obs, step=100, t0=True)
        norms[reduce] = agent.actor.end_episode()["pg_grad_norm"]
    assert norms["mean"] > 0
    assert norms["sum"] == pytest.approx(3 * norms["mean"], rel=1e-5)


def test_pg_null_uses_a_frozen_random_critic_and_leaves_the_default_alone():
    grads = {}
    for null in (False, True):
        torch.manual_seed(0)
        _, agent = _agent("task=cartpole-swingup", f"pg_null={str(null).lower()}")
        _wake(agent)
        actor, obs = agent.actor, torch.randn(4, 5)
        assert (actor.null_critic is not None) == null and ("null_critic" in agent.modules()) == null
        a = actor.solve(agent.model.h(obs), step=10**6, explore=False)[:, 0]
        g = torch.autograd.grad(actor._pg_loss(obs, a).sum(), actor.pg_params, allow_unused=True)
        grads[null] = torch.cat([x.flatten() for x in g if x is not None])
        if null:  # frozen: no parameter of it is trained, and the trained Q_s gets no PG gradient
            assert not any(p.requires_grad for p in actor.null_critic.parameters())
    assert grads[True].norm() > 0 and not torch.allclose(grads[True], grads[False])


def test_official_acting_is_the_same_with_and_without_the_hand_written_evaluations():
    """variant=official's objective (terminal min Q(z_H, pi(z_H))) has the graph-free value_grad, which
    lm_refine's iterations without a graph take (trajopt.objective_vjp=true, the default): the executed
    actions and the accumulated policy gradient are those of autograd in every iteration."""
    out = {}
    for vjp in ("true", "false"):
        torch.manual_seed(0)
        _, agent = _agent("variant=official", "task=cartpole-swingup-sparse", "mppi_steps=0",
                          f"trajopt.objective_vjp={vjp}", action_dim=1)
        _wake(agent)
        actor, obs = agent.actor, torch.randn(1, 5)
        assert actor.trajopt.objective_vjp == (vjp == "true")
        assert hasattr(actor.objective(agent.model.h(obs)), "value_grad")
        acts = [actor.act(obs + 0.1 * k, step=10**6, t0=k == 0) for k in range(3)]  # H = 3
        out[vjp] = (torch.stack(acts), [g.clone() for g in actor._pg_acc])
    assert torch.equal(out["true"][0], out["false"][0])
    assert all(torch.equal(x, y) for x, y in zip(out["true"][1], out["false"][1]))
    assert any(bool(g.abs().sum() > 0) for g in out["true"][1])
