"""TD-MPC losses and target updates; DiffTOP's policy-gradient loss through the solve; the agents'
composition (world model + actor) and their checkpoints."""

import copy

import numpy as np
import pytest
import torch

from difftop.rl.difftop_agent import DiffTOPAgent, TrajOptActor, make_agent
from difftop.rl.mppi import MPPIPlanner
from difftop.rl.replay import ReplayBuffer
from difftop.rl.tdmpc import LEGACY_ACTOR_KEYS, MPPIActor, TDMPCAgent, WorldModel

OBS, M, L = 5, 2, 12


def _buffer(horizon=3, episodes=3, seed=0):
    rng = np.random.default_rng(seed)
    buf = ReplayBuffer((OBS,), M, L, capacity=episodes * L, horizon=horizon)
    for _ in range(episodes):
        buf.add_episode(rng.normal(size=(L + 1, OBS)).astype(np.float32),
                        rng.uniform(-1, 1, (L, M)).astype(np.float32), rng.normal(size=L).astype(np.float32))
    return buf


def _nonzero_heads(agent, concave: float = 0.0):
    """Re-initialise the zero-initialised last layers so every gradient path is alive.

    ``concave``: add -concave * ||A||^2 to the agent's objective. Random MLP objectives put the
    first action at a bound, where its derivative is rightly 0; the penalty makes the optimum
    interior so gradients through the solve can be seen (the objective still comes from the model).
    """
    g = torch.Generator().manual_seed(0)
    actor = agent.actor
    heads = [agent.model.reward_net, *agent.model.q_nets]
    if hasattr(actor, "critic"):
        heads += [actor.critic.q1.head, actor.critic.q2.head]
    for m in heads:
        with torch.no_grad():
            m[-1].weight.copy_(torch.randn(m[-1].weight.shape, generator=g) * 0.3)
            m[-1].bias.normal_(generator=g)
    if concave:
        build = actor.objective

        def objective(z0):
            J = build(z0)
            return lambda A: J(A) - concave * A.pow(2).sum((1, 2))

        actor.objective = objective
    agent.world_model.target = copy.deepcopy(agent.model).requires_grad_(False)
    if hasattr(actor, "critic"):
        actor.critic_target = copy.deepcopy(actor.critic).requires_grad_(False)


def _params(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _changed(before, module):
    return {n for n, p in module.named_parameters() if not torch.equal(before[n], p.detach())}


def test_reward_loss_matches_hand_computation(tiny_cfg):
    torch.manual_seed(0)
    agent = TDMPCAgent(tiny_cfg(agent="tdmpc"), (OBS,), M)
    b = _buffer().sample(8, np.random.default_rng(0), horizon=2)
    wm = agent.world_model
    _, _, _, metrics = wm.losses(b)
    m, rho = agent.model, agent.cfg.rho
    with torch.no_grad():
        z = m.h(b.obs[0])
        want = (m.reward(z, b.action[0]) - b.reward[0]).pow(2)
        z = m.dynamics(z, b.action[0])
        want = want + rho * (m.reward(z, b.action[1]) - b.reward[1]).pow(2)
    assert metrics["reward_loss"] == pytest.approx(want.mean().item(), rel=1e-5)
    # consistency with the target encoder of the next observation
    with torch.no_grad():
        z1 = m.dynamics(m.h(b.obs[0]), b.action[0])
        c0 = (z1 - wm.target.h(b.obs[1])).pow(2).mean(-1)
    total, zs, prio, metrics = wm.losses(b)
    assert len(zs) == 3 and prio.shape == (8, 1)
    assert metrics["consistency_loss"] >= c0.mean().item() - 1e-6  # plus rho * step-2 term >= 0


def test_update_moves_model_priorities_and_ema_target_every_other_step(tiny_cfg):
    torch.manual_seed(0)
    agent = TDMPCAgent(tiny_cfg(agent="tdmpc"), (OBS,), M)
    buf = _buffer()
    pr0 = buf._priority.copy()
    target = agent.world_model.target
    tgt0 = _params(target)
    before = _params(agent.model)
    metrics = agent.update(buf, step=1)  # odd step: no target update
    assert _changed(tgt0, target) == set()
    assert not np.array_equal(pr0, buf._priority)
    assert {"consistency_loss", "reward_loss", "value_loss", "pi_loss", "grad_norm"} <= metrics.keys()
    changed = _changed(before, agent.model)
    assert any(n.startswith("_encoder") for n in changed) and any(n.startswith("_pi") for n in changed)
    online = _params(agent.model)
    agent.update(buf, step=2)  # even step: target <- lerp(target, online_after_step, tau)
    tau = agent.cfg.tau
    for n, p in target.named_parameters():
        want = tgt0[n] + tau * (dict(agent.model.named_parameters())[n].detach() - tgt0[n])
        assert torch.allclose(p, want, atol=1e-6), n
    assert online  # silence


def test_pi_update_only_moves_pi(tiny_cfg):
    torch.manual_seed(0)
    agent = TDMPCAgent(tiny_cfg(agent="tdmpc"), (OBS,), M)
    _nonzero_heads(agent)
    b = _buffer().sample(8, np.random.default_rng(0))
    zs = [agent.model.h(b.obs[0]).detach()]
    before = _params(agent.model)
    agent.world_model.update_pi(zs)
    changed = _changed(before, agent.model)
    assert changed and all(n.startswith("_pi") for n in changed)
    assert all(p.requires_grad for p in agent.model.q_nets[0].parameters())  # Q grads re-enabled


def test_batched_pg_reaches_encoder_dynamics_reward_q_and_nothing_else(tiny_cfg):
    torch.manual_seed(0)
    cfg = tiny_cfg(agent="difftop", pg_mode="batched")
    agent = DiffTOPAgent(cfg, (OBS,), M)
    _nonzero_heads(agent, concave=5.0)
    b = _buffer().sample(8, np.random.default_rng(0))
    wm, actor = agent.world_model, agent.actor
    wm.optim.zero_grad(set_to_none=True)
    metrics = actor.backward(b, wm.prepare(b), step=10**6)
    assert np.isfinite(metrics["pg_loss"])
    m = agent.model
    for part in (m.encoder, m.dynamics_net, m.reward_net, *m.q_nets):
        grads = [p.grad for p in part.parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), part
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in m.pi_net.parameters())
    assert all(p.grad is None for p in actor.critic.parameters())
    assert all(p.requires_grad for p in actor.critic.parameters())


def test_online_pg_step_at_episode_end_changes_pg_params_only(tiny_cfg):
    torch.manual_seed(0)
    agent = DiffTOPAgent(tiny_cfg(agent="difftop", pg_mode="online"), (OBS,), M)
    _nonzero_heads(agent, concave=5.0)
    actor = agent.actor
    before_m, before_c = _params(agent.model), _params(actor.critic)
    obs = np.random.default_rng(0).normal(size=(4, OBS)).astype(np.float32)
    for t in range(4):
        a = agent.act(obs[t], step=10**6, t0=t == 0)
        assert a.shape == (M,) and np.all(np.abs(a) <= 1)
    assert actor._pg_count == 4
    assert _changed(before_m, agent.model) == set()  # nothing applied before the episode ends
    out = agent.end_episode()
    assert np.isfinite(out["pg_loss"]) and out["pg_grad_norm"] > 0
    changed = _changed(before_m, agent.model)
    for name in ("_encoder", "_dynamics", "_reward", "_Q1", "_Q2"):
        assert any(n.startswith(name) for n in changed), name
    assert not any(n.startswith("_pi") for n in changed)
    assert _changed(before_c, actor.critic) == set()
    assert actor._pg_count == 0 and all(p.grad is None for p in actor.pg_params)


def test_noback_acts_by_trajopt_without_pg(tiny_cfg):
    torch.manual_seed(0)
    cfg = tiny_cfg(agent="difftop_noback", pg_mode="none")
    agent = make_agent(cfg, (OBS,), M)
    _nonzero_heads(agent)
    before = _params(agent.model)
    obs = np.zeros(OBS, np.float32)
    a = agent.act(obs, step=10**6, t0=True)
    # the executed action is the optimizer's, not pi's
    with torch.no_grad():
        z = agent.model.h(torch.as_tensor(obs)[None])
        pi_a = agent.model.pi(z)[0].numpy()
    assert not np.allclose(a, pi_a)
    assert agent.end_episode().get("pg_loss") is None and agent.actor._pg_count == 0
    assert _changed(before, agent.model) == set()


def test_explore_std_follows_its_schedule(tiny_cfg):
    """explore_std: a number or a TD-MPC schedule; the noise on the executed action has that std."""
    torch.manual_seed(0)
    cfg = tiny_cfg(agent="difftop_noback", min_std=0.0, seed_steps=0, explore_std="linear(0.4, 0.0, 1000)",
                   trajopt={"max_iters": 5})
    agent = DiffTOPAgent(cfg, (OBS,), M)  # zero reward / Q heads: the solve returns pi's action
    obs = np.zeros(OBS, np.float32)
    clean = agent.act_batch(obs[None], step=0, t0=True)[0]  # no exploration noise (evaluation)
    assert np.abs(clean).max() < 0.5  # inside the box: the clip to [-1, 1] trims few noisy actions

    def noise_std(step):
        return np.std([agent.act(obs, step=step, t0=True) - clean for _ in range(60)])  # 120 draws

    assert noise_std(0) == pytest.approx(0.4, rel=0.25)  # ~4 standard errors
    assert noise_std(500) == pytest.approx(0.2, rel=0.25)
    assert noise_std(1000) < 1e-6  # the schedule's end: the solve's own action


def test_zero_init_and_value_s_loss(tiny_cfg):
    torch.manual_seed(0)
    agent = DiffTOPAgent(tiny_cfg(agent="difftop", init="zero"), (OBS,), M)
    actor = agent.actor
    init = actor._init_actions(torch.zeros(3, agent.cfg.latent_dim), 4, explore=True)
    assert torch.equal(init, torch.zeros(3, 4, M))
    b = _buffer().sample(8, np.random.default_rng(0))
    loss, metrics = actor.losses(b, agent.world_model.prepare(b))
    assert loss.shape == (8, 1) and metrics["value_s_loss"] >= 0
    before = _params(actor.critic)
    agent.update(_buffer(), step=1)
    assert _changed(before, actor.critic)  # Q_s is trained by its TD loss


def test_unknown_agent_and_pg_mode(tiny_cfg):
    with pytest.raises(ValueError, match="unknown agent"):
        make_agent(tiny_cfg(agent="sac"), (OBS,), M)
    with pytest.raises(ValueError, match="pg_mode"):
        DiffTOPAgent(tiny_cfg(agent="difftop", pg_mode="sometimes"), (OBS,), M)


def _qs_loop(agent, b, prep, steps):
    """Q_s's TD loss accumulated step by step, TD-MPC style (the reference)."""
    ref, actor = 0.0, agent.actor
    for t in range(steps):
        q1, q2 = actor.critic(prep.obs[t], b.action[t])
        with torch.no_grad():
            y = b.reward[t] + agent.cfg.discount * torch.min(
                *actor.critic_target(prep.obs[t + 1], prep.next_action[t]))
        ref = ref + agent.cfg.rho ** t * ((q1 - y).pow(2) + (q2 - y).pow(2))
    return agent.cfg.value_coef * ref


def test_obs_critic_loss_in_one_batch_equals_the_per_step_loop(tiny_cfg):
    """Q_s's TD loss over all H steps at once equals TD-MPC-style per-step accumulation, and
    ``qs_horizon`` keeps only the first steps."""
    torch.manual_seed(0)
    agent = make_agent(tiny_cfg(agent="difftop"), (OBS,), M)
    _nonzero_heads(agent)
    b = _buffer(horizon=3).sample(8, np.random.default_rng(1))
    prep = agent.world_model.prepare(b)
    loss, _ = agent.actor.losses(b, prep)
    assert loss.shape == (8, 1)
    torch.testing.assert_close(loss, _qs_loop(agent, b, prep, 3), rtol=1e-5, atol=1e-6)
    for k, steps in ((1, 1), (2, 2), (7, 3)):  # more than H: all H
        agent.cfg.qs_horizon = k
        torch.testing.assert_close(agent.actor.losses(b, prep)[0], _qs_loop(agent, b, prep, steps),
                                   rtol=1e-5, atol=1e-6)


def test_prepared_targets_equal_the_per_step_definitions(tiny_cfg):
    """The batched no-grad part of an update: TD targets and consistency targets, step by step."""
    torch.manual_seed(0)
    agent = make_agent(tiny_cfg(agent="tdmpc", min_std=0.0), (OBS,), M)  # no target-policy noise
    _nonzero_heads(agent)
    b = _buffer(horizon=3).sample(8, np.random.default_rng(2))
    prep = agent.world_model.prepare(b)
    assert torch.equal(prep.obs, b.obs)  # states: no augmentation
    m, tgt = agent.model, agent.world_model.target
    with torch.no_grad():
        for t in range(3):
            z = m.h(b.obs[t + 1])
            y = b.reward[t] + agent.cfg.discount * torch.min(*tgt.Q(z, m.pi(z, 0.0)))
            torch.testing.assert_close(prep.td_target[t], y, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(prep.next_z_target[t], tgt.h(b.obs[t + 1]))
            torch.testing.assert_close(prep.next_action[t], m.pi(z, 0.0))


@pytest.mark.parametrize("qs_horizon,steps", [("auto", 1), (None, 3), (2, 2)])
def test_one_augmentation_per_update_for_pixels(tiny_cfg, qs_horizon, steps):
    """From pixels every loss of an update sees the same shifted frames (one draw per frame); Q_s
    sees the first ``qs_horizon`` steps of them (auto: 1 for pixels, None: all H)."""
    torch.manual_seed(0)
    shape = (9, 64, 64)
    cfg = tiny_cfg(agent="difftop", obs="pixels", image_size=64, qs_horizon=qs_horizon)
    agent = make_agent(cfg, shape, M)
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(shape, M, L, capacity=2 * L, horizon=3, pixels=True)
    for _ in range(2):
        buf.add_episode(rng.integers(0, 256, (L + 1, *shape), dtype=np.uint8),
                        rng.uniform(-1, 1, (L, M)).astype(np.float32), rng.normal(size=L).astype(np.float32))
    b = buf.sample(4, rng)
    prep = agent.world_model.prepare(b)
    assert prep.obs.shape == b.obs.shape and not torch.equal(prep.obs, b.obs)
    seen = []
    agent.actor.critic.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    agent.actor.losses(b, prep)
    torch.testing.assert_close(seen[0], prep.obs[:steps].flatten(0, 1))


def test_obs_critic_shares_its_encoder_for_pixels_only_by_default():
    from difftop.nn.critic import ObsCritic

    state = ObsCritic((OBS,), M, mlp_dim=16)
    assert state.encoder is None and state.q1.encoder is not None and state.q1.encoder is not state.q2.encoder
    pix = ObsCritic((9, 64, 64), M, mlp_dim=16, obs_type="pixels")
    assert pix.encoder is not None and pix.q1.encoder is None and pix.q2.encoder is None
    q1, q2 = pix(torch.rand(2, 9, 64, 64) * 255, torch.zeros(2, M))
    assert q1.shape == q2.shape == (2, 1)
    assert ObsCritic((OBS,), M, mlp_dim=16, shared_encoder=True).encoder is not None


def test_solves_cut_short_get_the_exact_implicit_gradient_by_default(tiny_cfg):
    """rl.yaml's trajopt.implicit_unconverged=exact reaches the layer: a solve stopped by max_iters is
    differentiated with the (damped) Hessian, not the L-BFGS memory, whose inverse blew single
    samples' PG gradients up ~175x on a trained reacher-easy model."""
    from difftop.trajopt.info import IMPLICIT_INEXACT, NOT_CONVERGED

    torch.manual_seed(0)
    for mode, inexact in (("exact", False), ("memory", True)):
        cfg = tiny_cfg(agent="difftop")
        cfg.trajopt.max_iters = 1
        if mode == "memory":
            cfg.trajopt.implicit_unconverged = "memory"
        agent = DiffTOPAgent(cfg, (OBS,), M)
        actor = agent.actor
        assert actor.trajopt.implicit_unconverged == mode
        _nonzero_heads(agent, concave=5.0)
        z0 = agent.model.h(torch.randn(3, OBS))
        a, info = actor.trajopt(actor.objective(z0), actor._init_actions(z0, 3, False))
        (-a.sum()).backward()
        assert bool((info.status & NOT_CONVERGED).all())
        assert bool((info.status & IMPLICIT_INEXACT).any()) == inexact


@pytest.mark.parametrize("agent_name", ["tdmpc", "difftop", "difftop_noback"])
def test_act_batch_acts_for_every_state_and_eval_act_is_its_batch_of_one(tiny_cfg, agent_name):
    torch.manual_seed(0)
    agent = make_agent(tiny_cfg(agent=agent_name), (OBS,), M)
    _nonzero_heads(agent)
    obs = np.random.default_rng(0).normal(size=(4, OBS)).astype(np.float32)
    a = agent.act_batch(obs, step=10**6, t0=True)
    assert a.shape == (4, M) and a.dtype == np.float32 and np.all(np.abs(a) <= 1)
    one = np.stack([agent.act(o, step=10**6, t0=True, eval_mode=True) for o in obs])
    if agent_name != "tdmpc":  # a DiffTOP solve is deterministic and independent of the batch
        np.testing.assert_allclose(a, one, atol=1e-5)
    assert agent.end_episode().get("solve_iters") is None  # evaluation solves are not logged


def test_agents_compose_one_world_model_with_their_own_actor(tiny_cfg):
    """TD-MPC and DiffTOP share the world model by composition: the same TOLD from the same seed
    (DiffTOP's extra networks are built after it), MPPI only where it acts, Q_s only in DiffTOP."""
    torch.manual_seed(0)
    tdmpc = make_agent(tiny_cfg(agent="tdmpc"), (OBS,), M)
    torch.manual_seed(0)
    difftop = make_agent(tiny_cfg(agent="difftop"), (OBS,), M)
    assert type(tdmpc.world_model) is type(difftop.world_model) is WorldModel
    assert not isinstance(difftop, TDMPCAgent)
    assert isinstance(tdmpc.actor, MPPIActor) and isinstance(difftop.actor, TrajOptActor)
    assert not any(isinstance(v, MPPIPlanner) for v in vars(difftop.actor).values())  # no unused planner
    for k, v in tdmpc.model.state_dict().items():
        assert torch.equal(v, difftop.model.state_dict()[k]), k
    assert set(tdmpc.state_dict()["modules"]) == {"model", "target"}
    assert set(difftop.state_dict()["modules"]) == {"model", "target", "critic", "critic_target"}
    # Q_s is trained by the world model's TD optimizer, after TOLD's parameters
    wm = difftop.world_model
    assert wm.td_parameters() == [*difftop.model.parameters(), *difftop.actor.critic.parameters()]


def _legacy(state: dict) -> dict:
    """An agent state_dict as written before the world model / actor split: the actor's state at
    the top level under its old names (``modules`` and ``optimizers`` are unchanged)."""
    old = {k: v for k, v in state.items() if k != "actor"}
    actor = state["actor"]
    old["planner_prev_mean"] = actor.get("prev_mean")  # DiffTOP agents wrote None here
    for key in ("pg_acc", "pg_count", "pg_loss_sum"):
        if key in actor:
            old[key] = actor[key]
    return old


@pytest.mark.parametrize("legacy", [True, False])
@pytest.mark.parametrize("agent_name", ["tdmpc", "difftop"])
def test_a_state_dict_with_the_old_key_names_loads_and_resumes_the_same_run(tiny_cfg, agent_name, legacy):
    """Mid-episode, as a checkpoint can be: the old layout (``legacy``) and the current one."""
    cfg = tiny_cfg(agent=agent_name, pg_mode="online")
    obs = np.random.default_rng(0).normal(size=(4, OBS)).astype(np.float32)
    buf = _buffer()
    torch.manual_seed(0)
    agent = make_agent(cfg, (OBS,), M)
    for t in range(3):  # a warm start (MPPI) / a part-accumulated PG gradient (DiffTOP) to carry over
        agent.act(obs[t], step=10**6, t0=t == 0)
    agent.update(buf, step=2)
    old = _legacy(agent.state_dict()) if legacy else agent.state_dict()
    if legacy:
        assert "actor" not in old and set(LEGACY_ACTOR_KEYS) & set(old)
        if agent_name == "tdmpc":
            assert old["planner_prev_mean"] is not None
        else:
            assert old["pg_count"] == 3 and len(old["pg_acc"]) == len(agent.actor.pg_params)
    torch.manual_seed(1)  # other initial weights: everything must come from the state_dict
    resumed = make_agent(cfg, (OBS,), M)
    resumed.load_state_dict(copy.deepcopy(old))
    traces = []
    for a in (agent, resumed):  # both continue (on copies of the buffer): the same actions, metrics, weights
        torch.manual_seed(5)
        traces.append([a.act(obs[3], step=10**6, t0=False), a.end_episode(), a.update(copy.deepcopy(buf), 3)])
    np.testing.assert_array_equal(traces[0][0], traces[1][0])
    for t in traces if legacy else ():  # solve counts for the logs: not in old checkpoints
        t[1] = {k: v for k, v in t[1].items() if not k.startswith("solve_")}
    assert traces[0][1:] == traces[1][1:]
    for k, v in agent.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    weights = make_agent(cfg, (OBS,), M)
    weights.load_state_dict(old, weights_only=True)  # `difftop eval` on an old checkpoint
    for k, v in old["modules"]["model"].items():
        assert torch.equal(v, weights.model.state_dict()[k]), k
