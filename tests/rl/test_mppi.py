"""TD-MPC MPPI planner: shapes, bounds, determinism, a planted optimum, warm start, batching, schedules."""

import pytest
import torch

from difftop.nn import TOLD
from difftop.rl import MPPIPlanner, estimate_value, linear_schedule

OBS, ACT, LAT = 5, 3, 6
SMALL = dict(horizon=3, iterations=3, num_samples=64, num_elites=8)  # mixture 0.05 -> 3 pi trajectories


def _model(dtype=torch.float32, seed=0):
    """Tiny TOLD whose reward and Q heads are perturbed away from the zero init (no value ties)."""
    torch.manual_seed(seed)
    m = TOLD((OBS,), ACT, latent_dim=LAT, mlp_dim=16, enc_dim=8)
    with torch.no_grad():
        for head in (m.reward_net, *m.q_nets):
            head[-1].weight.normal_(0.0, 0.5)
            head[-1].bias.normal_(0.0, 0.1)
    return m.to(dtype)


class Planted(TOLD):
    """Identity dynamics and reward -||a - goal||^2 (Q stays 0): the optimal action is the goal."""

    def __init__(self, goal):
        super().__init__((OBS,), goal.numel(), latent_dim=LAT, mlp_dim=8, enc_dim=8)
        self.register_buffer("goal", goal)

    def next(self, z, a):
        return z, -((a - self.goal) ** 2).sum(-1, keepdim=True)


def _z(model, b, seed=1):
    g = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    return model.h(torch.randn(b, OBS, generator=g, dtype=dtype))


@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("eval_mode", [True, False])
def test_shape_and_bounds(b, eval_mode):
    m = _model()
    pl = MPPIPlanner(m)  # TD-MPC defaults: 512 samples, 64 elites, 25 pi trajectories, H = 5
    assert pl.num_pi_trajs == 25 and pl.action_dim == ACT
    a = pl.plan(_z(m, b), t0=True, eval_mode=eval_mode)
    assert a.shape == (b, ACT) and a.dtype == torch.float32
    assert a.abs().max() <= 1.0 and torch.isfinite(a).all()
    assert pl.prev_mean.shape == (b, 5, ACT)
    pl2 = MPPIPlanner(m, action_low=-0.2, action_high=[0.1, 0.3, 0.5], **SMALL)
    a2 = pl2.plan(_z(m, b), t0=True, eval_mode=eval_mode)
    assert (a2 >= -0.2).all() and (a2 <= torch.tensor([0.1, 0.3, 0.5])).all()


def test_double_model():
    m = _model(torch.float64)
    a = MPPIPlanner(m, **SMALL).plan(_z(m, 2), t0=True, eval_mode=False)
    assert a.dtype == torch.float64 and a.shape == (2, ACT)


def test_seeded_determinism():
    m = _model()
    z = _z(m, 2)
    pl = MPPIPlanner(m, **SMALL)
    torch.manual_seed(7)
    a1 = pl.plan(z, t0=True, eval_mode=False)
    torch.manual_seed(7)
    a2 = pl.plan(z, t0=True, eval_mode=False)
    assert torch.equal(a1, a2)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(
        pl.plan(z, t0=True, eval_mode=False, generator=g1), pl.plan(z, t0=True, eval_mode=False, generator=g2)
    )
    a3 = pl.plan(z, t0=True, eval_mode=False, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(a1, a3)


def test_batch_matches_single_state_planning():
    m = _model(torch.float64)
    z = _z(m, 3)
    for eval_mode in (True, False):
        pl = MPPIPlanner(m, **SMALL)
        gens = [torch.Generator().manual_seed(10 + i) for i in range(3)]
        batched = pl.plan(z, t0=True, eval_mode=eval_mode, generator=gens)
        for i in range(3):
            alone = MPPIPlanner(m, **SMALL).plan(
                z[i : i + 1], t0=True, eval_mode=eval_mode, generator=torch.Generator().manual_seed(10 + i)
            )
            torch.testing.assert_close(batched[i : i + 1], alone, rtol=0, atol=1e-10)
        # one generator for B = 1 consumes the RNG exactly like a list of one generator
        one = pl.plan(z[:1], t0=True, eval_mode=eval_mode, generator=torch.Generator().manual_seed(5))
        lst = pl.plan(z[:1], t0=True, eval_mode=eval_mode, generator=[torch.Generator().manual_seed(5)])
        assert torch.equal(one, lst)
    with pytest.raises(ValueError):
        pl.plan(z, t0=True, eval_mode=True, generator=gens[:2])


def test_planted_problem_finds_goal():
    goal = torch.tensor([0.5, -0.3, 0.7])
    torch.manual_seed(0)
    m = Planted(goal)
    z = torch.zeros(4, LAT)
    pl = MPPIPlanner(m, horizon=3)
    a_eval = pl.plan(z, t0=True, eval_mode=True)
    assert (a_eval - goal).norm(dim=-1).max() < 0.25
    assert (pl.prev_mean[:, 0] - goal).norm(dim=-1).max() < 0.1  # mean of every step is near the goal
    assert (pl.prev_mean - goal).norm(dim=-1).max() < 0.15
    a_train = pl.plan(z, t0=True, eval_mode=False)
    assert (a_train - goal).norm(dim=-1).max() < 0.4
    a_mean = MPPIPlanner(m, horizon=3, eval_action="mean").plan(z, t0=True, eval_mode=True)
    assert (a_mean - goal).norm(dim=-1).max() < 0.1


def test_policy_trajectories_are_candidates():
    goal = torch.tensor([0.25, -0.5, 0.75])

    class PiKnowsGoal(Planted):
        def pi(self, z, std=0.0, *, noise=None, generator=None):
            return self.goal.expand(*z.shape[:-1], self.goal.numel())

    m = PiKnowsGoal(goal)
    z = torch.zeros(2, LAT)
    kw = dict(horizon=2, iterations=1, num_samples=20, num_elites=1)
    a = MPPIPlanner(m, mixture_coef=0.1, **kw).plan(z, t0=True, eval_mode=True)
    assert torch.equal(a, goal.expand(2, 3))  # the pi trajectory (value 0) is the only elite
    a0 = MPPIPlanner(m, mixture_coef=0.0, **kw).plan(z, t0=True, eval_mode=True)
    assert not torch.equal(a0, goal.expand(2, 3))


def test_warm_start_shift_and_reset():
    m = _model()
    z = _z(m, 2)
    pl = MPPIPlanner(m, momentum=1.0, **SMALL)  # momentum 1: the mean never moves from its start
    pl.plan(z, t0=True, eval_mode=True)
    assert torch.equal(pl.prev_mean, torch.zeros(2, 3, ACT))
    prev = torch.rand(2, 3, ACT) * 2 - 1
    pl.prev_mean = prev
    pl.plan(z, t0=False, eval_mode=True)
    expected = torch.cat([prev[:, 1:], torch.zeros(2, 1, ACT)], dim=1)
    assert torch.equal(pl.prev_mean, expected)
    pl.plan(z, t0=False, eval_mode=True)
    assert torch.equal(pl.prev_mean, torch.cat([prev[:, 2:], torch.zeros(2, 2, ACT)], dim=1))
    pl.prev_mean = prev
    pl.plan(z, t0=True, eval_mode=True)  # t0 ignores the previous mean
    assert torch.equal(pl.prev_mean, torch.zeros(2, 3, ACT))
    pl.prev_mean = prev
    pl.plan(z, t0=False, eval_mode=True, horizon=2)  # horizon changed: only the overlap is copied
    assert torch.equal(pl.prev_mean, torch.cat([prev[:, 1:2], torch.zeros(2, 1, ACT)], dim=1))
    pl.reset()
    assert pl.prev_mean is None
    pl.plan(z, t0=False, eval_mode=True)
    pl.prev_mean = prev
    with pytest.raises(ValueError):
        pl.plan(z[:1], t0=False, eval_mode=True)


def test_warm_start_helps_on_planted_problem():
    goal = torch.tensor([0.5, -0.3, 0.7])
    m = Planted(goal)
    z = torch.zeros(64, LAT)
    kw = dict(horizon=3, iterations=1, num_samples=32, num_elites=4, momentum=0.5, eval_action="mean")
    torch.manual_seed(0)
    pl = MPPIPlanner(m, **kw)
    cold = (pl.plan(z, t0=True, eval_mode=True) - goal).norm(dim=-1).mean()
    pl.prev_mean = goal.expand(64, 3, 3)
    warm = (pl.plan(z, t0=False, eval_mode=True) - goal).norm(dim=-1).mean()
    assert warm < 0.5 * cold


def test_schedules():
    assert linear_schedule("linear(0.5,0.05,25000)", 0) == 0.5
    assert linear_schedule("linear(0.5, 0.05, 25000)", 12500) == pytest.approx(0.275)
    assert linear_schedule("linear(0.5,0.05,25000)", 25000) == pytest.approx(0.05)
    assert linear_schedule("linear(0.5,0.05,25000)", 10**6) == pytest.approx(0.05)
    assert linear_schedule("0.3", 5) == 0.3 and linear_schedule(2, 5) == 2.0
    with pytest.raises(NotImplementedError):
        linear_schedule("cosine(1,2,3)", 0)
    m = _model()
    pl = MPPIPlanner(m, **{**SMALL, "horizon": 5})
    assert [pl.planning_horizon(s) for s in (0, 6250, 12500, 24999, 25000, 10**6)] == [1, 2, 3, 4, 5, 5]
    assert pl.planning_horizon(None) == 5 and pl.planning_horizon(0, horizon=4) == 4
    assert pl.std_floor(0) == 0.5 and pl.std_floor(None) == 0.05 and pl.std_floor(0, std=0.2) == 0.2
    assert pl.std_floor(25000) == pytest.approx(0.05)
    pl.plan(_z(m, 2), t0=True, eval_mode=False, step=0)
    assert pl.prev_mean.shape == (2, 1, ACT)  # horizon 1 at step 0 (TD-MPC's horizon schedule)


def test_estimate_value_matches_manual_rollout_and_is_differentiable():
    m = _model(torch.float64)
    z = _z(m, 4)
    actions = (torch.rand(2, 4, ACT, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    v = estimate_value(m, z, actions, 0.9)
    z1, r0 = m.next(z, actions[0])
    z2, r1 = m.next(z1, actions[1])
    manual = r0 + 0.9 * r1 + 0.81 * torch.min(*m.Q(z2, m.pi(z2)))
    torch.testing.assert_close(v, manual)
    assert v.shape == (4, 1)
    v.sum().backward()
    assert actions.grad.abs().sum() > 0
    pl = MPPIPlanner(m, discount=0.9, **SMALL)
    torch.testing.assert_close(pl.estimate_value(z, actions.detach(), pi_std=0.0), manual.detach())
    noise = torch.randn(4, ACT, dtype=torch.float64)
    noisy = estimate_value(m, z, actions.detach(), 0.9, pi_std=0.05, pi_noise=noise)
    torch.testing.assert_close(pl.estimate_value(z, actions.detach(), pi_noise=noise), noisy)


def test_bad_configuration():
    m = _model()
    with pytest.raises(ValueError):
        MPPIPlanner(m, num_samples=10, num_elites=11)
    with pytest.raises(ValueError):
        MPPIPlanner(m, eval_action="median")
    with pytest.raises(ValueError):
        MPPIPlanner(m, **SMALL).plan(torch.zeros(LAT), t0=True, eval_mode=True)
