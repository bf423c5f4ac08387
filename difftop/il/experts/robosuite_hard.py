"""Scripted attempts at Robomimic's two hard tasks, Transport and ToolHang.

Transport (two Pandas facing each other across two tables): robot 0 lifts the lid off the start
bin and sets it down beside it while robot 1 moves the trash cube from the target bin into the
trash bin; robot 0 then picks the hammer up by the handle's end on its own side, turns it (slowly)
to point along the gap toward robot 1 and holds it out there while robot 1 waits above; robot 1
grasps the handle's other end, robot 0 lets go and backs off, and robot 1 drops the hammer into the
target bin.

ToolHang: only a first-stage attempt (:func:`toolhang_expert`), which does not succeed yet; the task
has no expert in :mod:`difftop.tasks.robomimic`, and ``results/il/robomimic-experts.md`` says why.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from difftop.il.experts.robosuite_experts import (
    CLOSE,
    OPEN,
    Script,
    Target,
    _body,
    _grasp_yaw,
    rot_z,
    top_down,
    wrap,
    yaw_of,
)


def _parallel(s: Script, *plans: tuple[int, Iterator[np.ndarray]]) -> Iterator[np.ndarray]:
    """Run one plan per arm at once: each step takes arm ``i``'s 7-D block from its own plan; an
    arm whose plan has ended holds still with its gripper as last commanded."""
    live = dict(plans)
    while live:
        step = [np.r_[np.zeros(6), s.grip[j]] for j in range(len(s.arms))]
        for i, plan in list(live.items()):
            a = next(plan, None)
            if a is None:
                del live[i]
                step[i] = np.r_[np.zeros(6), s.grip[i]]
            else:
                step[i] = a[7 * i:7 * i + 7]
        if live:
            yield np.concatenate(step)


def transport_expert(env: Any, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """The two-arm hand-over (see the module docstring)."""
    e = env.env
    tr = e.transport
    s = Script(env, rng)
    a0, a1 = s.arms
    sim = e.sim
    ham = sim.model.body_name2id(tr.objects["payload"].root_body)
    trash = sim.model.body_name2id(tr.objects["trash"].root_body)
    half = tr.objects["payload"].handle_length / 2

    # the head points at robot 1 (+y) or away from it (the placement turns the hammer either way):
    # the hand-over works along the handle's direction toward robot 1 whichever end the head is at
    toward_1 = 1.0 if _body(env, ham)[1][1, 2] >= 0 else -1.0

    def axis() -> np.ndarray:
        """Unit vector along the hammer's handle (horizontal part), toward robot 1's side."""
        u = _body(env, ham)[1][:, 2] * toward_1
        u = np.array([u[0], u[1], 0.0])
        return u / np.linalg.norm(u)

    def lid_plan() -> Iterator[np.ndarray]:
        ori = top_down(_grasp_yaw(yaw_of(a0.mat), 0.0, np.pi))  # fingers across the handle (along x)
        handle = lambda: np.array(tr.lid_handle_pos)  # noqa: E731
        yield from s.move(lambda: (handle() + [0, 0, rng.uniform(0.06, 0.09)], ori), OPEN, tol=0.015)
        yield from s.move(lambda: (handle() + [0, 0, -0.005], ori), OPEN, tol=0.008, steps=40,
                          speed=0.5 * s.speed)
        yield from s.hold(CLOSE, s.hold_steps())
        up = a0.pos + [0, 0, 0.12]
        yield from s.move(lambda: (up, ori), CLOSE, tol=0.02, steps=40)
        aside = up + [-rng.uniform(0.33, 0.37), 0, 0]
        yield from s.move(lambda: (aside, ori), CLOSE, tol=0.02, steps=80)
        yield from s.move(lambda: (aside - [0, 0, 0.1], ori), CLOSE, tol=0.02, steps=40)
        yield from s.hold(OPEN, s.hold_steps())
        yield from s.move(lambda: (aside + [0, 0, 0.05], ori), OPEN, tol=0.02, steps=30)

    def trash_plan() -> Iterator[np.ndarray]:
        yaw = _grasp_yaw(yaw_of(a1.mat), yaw_of(_body(env, trash)[1]), np.pi / 2)
        ori = top_down(yaw)
        cube = lambda: _body(env, trash)[0]  # noqa: E731
        clear = rng.uniform(1.06, 1.1)  # above the bin walls (their tops are at ~0.96)
        yield from s.move(lambda: (np.r_[cube()[:2], clear], ori), OPEN, tol=0.02, arm=1)
        yield from s.move(lambda: (cube() + [0, 0, rng.uniform(0.05, 0.07)], ori), OPEN, tol=0.015, arm=1)
        yield from s.move(lambda: (cube() + [0, 0, -0.005], ori), OPEN, tol=0.006, steps=40,
                          speed=0.5 * s.speed, arm=1)
        yield from s.hold(CLOSE, s.hold_steps(), arm=1)
        up = np.r_[a1.pos[:2], clear]
        yield from s.move(lambda: (up, ori), CLOSE, tol=0.02, steps=40, arm=1)
        over = np.r_[np.array(tr.trash_bin_pos)[:2] + rng.uniform(-0.03, 0.03, 2), up[2]]
        yield from s.move(lambda: (over, ori), CLOSE, tol=0.02, steps=80, arm=1)
        yield from s.hold(OPEN, s.hold_steps(), arm=1)
        yield from s.move(lambda: (over + [0, 0, 0.05], ori), OPEN, tol=0.02, steps=20, arm=1)

    yield from _parallel(s, (0, lid_plan()), (1, trash_plan()))

    meet = np.r_[rng.uniform(-0.03, 0.03), rng.uniform(-0.02, 0.02), rng.uniform(1.0, 1.06)]

    def held_out(center: np.ndarray) -> Target:
        """Robot 0's pose that puts the hammer's centre at ``center``, its handle pointing at robot 1 (+y)."""

        def target() -> tuple[np.ndarray, np.ndarray]:
            p, _ = _body(env, ham)
            u = axis()
            turn = rot_z(wrap(np.pi / 2 - np.arctan2(u[1], u[0])))
            return center - turn @ (p - a0.pos), turn @ a0.mat

        return target

    def hammer_plan() -> Iterator[np.ndarray]:
        """Robot 0: grasp the handle near its free end, fingers across it; hold the hammer out."""
        g0 = -half * rng.uniform(0.55, 0.7)
        grasp0 = lambda: _body(env, ham)[0] + g0 * axis()  # noqa: E731
        u = axis()
        ori0 = top_down(_grasp_yaw(yaw_of(a0.mat), np.arctan2(u[1], u[0]) + np.pi / 2, np.pi))
        yield from s.move(lambda: (grasp0() + [0, 0, rng.uniform(0.08, 0.11)], ori0), OPEN, tol=0.015,
                          steps=100)
        yield from s.move(lambda: (grasp0() + [0, 0, -0.004], ori0), OPEN, tol=0.01, steps=40,
                          speed=0.5 * s.speed)
        yield from s.hold(CLOSE, s.hold_steps())
        yield from s.move(lambda: (np.r_[a0.pos[:2], 1.05], None), CLOSE, tol=0.025, steps=40)
        # at half speed: the head's inertia, turned fast, twists the handle out of the fingers
        yield from s.move(held_out(meet), CLOSE, tol=0.01, ang_tol=0.05, steps=150, speed=0.5 * s.speed)

    def wait_plan() -> Iterator[np.ndarray]:
        """Robot 1: wait above the meeting point, on its own side."""
        yield from s.move(lambda: (meet + [0, 0.12, 0.1], None), OPEN, tol=0.03, steps=150, arm=1)

    yield from _parallel(s, (0, hammer_plan()), (1, wait_plan()))
    # robot 1: grasp the handle on its side
    g1 = half * rng.uniform(0.4, 0.55)
    grasp1 = lambda: _body(env, ham)[0] + g1 * axis()  # noqa: E731
    u = axis()
    ori1 = top_down(_grasp_yaw(yaw_of(a1.mat), np.arctan2(u[1], u[0]) + np.pi / 2, np.pi))
    yield from s.move(lambda: (grasp1() + [0, 0, 0.08], ori1), OPEN, tol=0.015, steps=120, arm=1)
    yield from s.move(lambda: (grasp1() + [0, 0, -0.004], ori1), OPEN, tol=0.006, steps=50,
                      speed=0.5 * s.speed, arm=1)
    yield from s.hold(CLOSE, s.hold_steps(), arm=1)
    yield from s.hold(OPEN, s.hold_steps(), arm=0)
    back = a0.pos + [0, -0.15, 0.05]
    yield from s.move(lambda: (back, None), OPEN, tol=0.02, steps=30)
    # robot 1: carry the hammer over the target bin and drop it in
    above = np.r_[np.array(tr.target_bin_pos)[:2], 1.0]

    def carried() -> tuple[np.ndarray, None]:
        return above - (_body(env, ham)[0] - a1.pos) * [1, 1, 0], None

    yield from s.move(carried, CLOSE, tol=0.02, steps=120, arm=1)
    low = a1.pos - [0, 0, 0.08]
    yield from s.move(lambda: (low, None), CLOSE, tol=0.02, steps=40, arm=1)
    yield from s.hold(OPEN, s.hold_steps(), arm=1)
    yield from s.move(lambda: (low + [0, 0, 0.1], None), OPEN, tol=0.02, steps=40, arm=1)
    yield from s.hold(OPEN, 20, arm=1)


def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation taking unit vector ``a`` onto unit vector ``b`` (Rodrigues)."""
    v, c = np.cross(a, b), float(np.dot(a, b))
    if np.linalg.norm(v) < 1e-9:
        return np.eye(3)
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + k + k @ k / (1.0 + c)


def toolhang_expert(env: Any, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Stage 1 only (the frame): grasp the frame's grip top-down, lift it, turn the frame upright
    (tip down) and lower its tip into the stand's socket, release. Stage 2 (the tool, whose 2.1 cm
    hole must be threaded onto the 0.75 cm hook at the frame's top, after turning it upright too) is
    not scripted: see ``results/il/robomimic-experts.md``."""
    e = env.env
    s = Script(env, rng)
    arm = s.arms[0]
    sim = e.sim
    site = e.obj_site_id
    grip_geom = sim.model.geom_name2id("frame_grip_frame")
    socket = np.mean([sim.data.geom_xpos[e.obj_geom_id[f"stand_wall_{i}"]] for i in range(4)], axis=0)
    top = sim.data.site_xpos[site["stand_mount_site"]][2]

    def bar() -> np.ndarray:
        """Unit vector along the frame's long bar, toward its tip."""
        d = sim.data.site_xpos[site["frame_tip_site"]] - sim.data.site_xpos[site["frame_intersection_site"]]
        return d / np.linalg.norm(d)

    grip = lambda: sim.data.geom_xpos[grip_geom].copy()  # noqa: E731
    d = bar()
    ori = top_down(_grasp_yaw(yaw_of(arm.mat), np.arctan2(d[1], d[0]) + np.pi / 2, np.pi))
    yield from s.move(lambda: (grip() + [0, 0, rng.uniform(0.07, 0.1)], ori), OPEN, tol=0.015)
    yield from s.move(lambda: (grip() + [0, 0, -0.004], ori), OPEN, tol=0.008, steps=40, speed=0.5 * s.speed)
    yield from s.hold(CLOSE, s.hold_steps())
    lifted = arm.pos + [0, 0, rng.uniform(0.24, 0.27)]  # the tip swings 10+ cm down as the frame turns
    yield from s.move(lambda: (lifted, None), CLOSE, tol=0.015, steps=60)

    def tip_at(z: float) -> Target:
        def target() -> tuple[np.ndarray, np.ndarray]:
            turn = _rotation_between(bar(), np.array([0.0, 0.0, -1.0]))
            tip = sim.data.site_xpos[site["frame_tip_site"]]
            return np.r_[socket[:2], z] - turn @ (tip - arm.pos), turn @ arm.mat

        return target

    # slowly: turned at full speed, the 18 cm frame's inertia pulls its grip out of the fingers
    yield from s.move(tip_at(top + 0.08), CLOSE, tol=0.006, ang_tol=0.03, steps=200, speed=0.3)
    # the socket is the top of the stand's hollow post: ~1.2 mm clearance around the bar, 15 cm deep
    yield from s.move(tip_at(top + 0.02), CLOSE, tol=0.001, ang_tol=0.008, steps=120, speed=0.4 * s.speed)
    yield from s.move(tip_at(top - 0.16), CLOSE, tol=0.002, ang_tol=0.01, steps=150, speed=0.25 * s.speed,
                      until=e._check_frame_assembled)
    yield from s.hold(OPEN, s.hold_steps())
    away = arm.pos + [0, 0, 0.1]
    yield from s.move(lambda: (away, None), OPEN, tol=0.02, steps=40)
