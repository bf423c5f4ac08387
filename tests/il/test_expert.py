"""The Push-T planning expert's pieces: its physics step, its paths, and one short solve."""

from __future__ import annotations

import numpy as np

from difftop.envs.pusht import GOAL_POSE, get_sim_state, make_pusht, set_sim_state
from difftop.il.experts.pusht import (
    RECTS,
    PushTExpert,
    _segments_hit_rects,
    physics_step,
    pose_error,
    run_expert_episode,
)


def test_physics_step_is_the_envs_step_bit_for_bit():
    a, b = make_pusht("state", seed=1), make_pusht("state", seed=1)
    a.reset()
    b.reset()
    rng = np.random.default_rng(0)
    block = get_sim_state(a)[4:6]
    for _ in range(60):
        act = np.clip(block + rng.normal(0, 60, 2), 0, 512)
        a.step(act)
        physics_step(b.raw, act)
        np.testing.assert_array_equal(get_sim_state(a), get_sim_state(b))


def test_segment_test_and_paths_avoid_the_t():
    p = np.array([[-100.0, 15.0], [-100.0, 15.0], [0.0, 200.0], [30.0, 100.0], [-80, -5], [30, 100]])
    q = np.array([[100.0, 15.0], [-100.0, 200.0], [0.0, 121.0], [30.0, 20.0], [80, -5], [30, 31]])
    hit = _segments_hit_rects(p, q, RECTS)
    np.testing.assert_array_equal(hit, [True, False, False, True, False, False])
    expert = PushTExpert()
    rng = np.random.default_rng(0)
    for _ in range(50):
        start = rng.uniform(-150, 250, 2)
        if (start[1] > -20 and start[1] < 140 and abs(start[0]) < 80) or pose_error(np.zeros(3)) < 0:
            continue
        pre, _, _ = expert._sample(8, fine=False)
        for goal in pre:
            path = expert._approach(start, goal)
            assert path is not None
            np.testing.assert_array_equal(path[0], start)
            np.testing.assert_array_equal(path[-1], goal)
            assert not _segments_hit_rects(path[:-1], path[1:], RECTS).any()


def test_expert_solves_an_easy_start_and_the_result_replays():
    env = make_pusht("state", seed=0)
    expert = PushTExpert(seed=1361)
    steps, success, coverage = run_expert_episode(env, expert, seed=1361, max_steps=150, images=False)
    assert success and coverage > 0.95
    assert steps["state"].shape == (len(steps["action"]), 5) and steps["keypoint"].shape[1:] == (8, 2)
    # replaying the stored float32 actions from the seed reproduces the success on the last step
    env.reset(seed=1361)
    for t, a in enumerate(steps["action"]):
        np.testing.assert_array_equal(env.state(), steps["state"][t])
        _, _, term, _, info = env.step(a)
        assert term == (t == len(steps["action"]) - 1)
    assert abs(info["coverage"] - coverage) < 1e-9  # (GEOS's overlay area varies in the last bit)
    # the planner from the goal itself returns a plan that keeps it there
    set_sim_state(env, np.array([40.0, 40.0, 0.0, 0.0, *GOAL_POSE, 0.0, 0.0, 0.0]))
    assert len(expert.plan(get_sim_state(env))) >= 1
