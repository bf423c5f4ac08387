"""Scripted attempts at Robomimic's two hard tasks, Transport and ToolHang.

Transport (two Pandas facing each other across two tables): robot 0 lifts the lid off the start
bin and sets it down beside it while robot 1 moves the trash cube from the target bin into the
trash bin; robot 0 then picks the hammer up by the handle's end on its own side, turns it (slowly)
to point along the gap toward robot 1 and holds it out there while robot 1 waits above; robot 1
grasps the handle's other end, robot 0 lets go and backs off, and robot 1 drops the hammer into the
target bin.

ToolHang (:func:`toolhang_expert`): stand the frame upright in the stand's hollow post, then hook the
tool's hole over the frame's hook and swing it onto the bar (``results/il/robomimic-images/experts.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
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


def _closed(s: Script, arm: int = 0) -> Iterator[np.ndarray]:
    """Close ``arm``'s gripper where it is and hold until the fingers stop moving, then a few steps
    more: lifting after a fixed 6-12 steps (as the lighter tasks do) pulls ToolHang's thick grips out
    of fingers still closing, leaving them held by an edge."""
    a = s.arms[arm]
    s.grip[arm] = CLOSE
    pos, mat = a.pos, a.mat
    last = a.opening
    for k in range(30):
        yield s._full(arm, a.servo(pos, mat, CLOSE, s.speed))
        if k >= 6 and abs(a.opening - last) < 2e-4:
            break
        last = a.opening
    yield from s.hold(CLOSE, int(s.rng.integers(3, 7)), arm=arm)


def _axis_rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation by ``angle`` about unit vector ``axis`` (Rodrigues)."""
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def _carried(s: Script, point: Callable[[], np.ndarray], rot: Callable[[], np.ndarray],
             goal: Callable[[], tuple[np.ndarray, np.ndarray]]) -> Target:
    """The gripper pose that puts a held object's reference ``point()`` (orientation ``rot()``) at
    ``goal() = (position, orientation)``, the grasp kept as it is now (re-read every step)."""
    arm = s.arms[0]

    def target() -> tuple[np.ndarray, np.ndarray]:
        pos, mat = goal()
        turn = mat @ rot().T
        return pos - turn @ (point() - arm.pos), turn @ arm.mat

    return target


def _frame_stage(env: Any, s: Script) -> Iterator[np.ndarray]:
    """Stage 1: grasp the frame's grip top-down (fingers across the bar), lift it, turn it upright
    (tip down) with its bar square to the stand's walls, lower the tip into the hollow post to its
    bottom (servoing the tip site, closed loop), release and back off."""
    e, rng = env.env, s.rng
    arm = s.arms[0]
    d = e.sim.data
    site = e.obj_site_id
    frame = e.obj_body_id["frame"]
    grip_geom = e.sim.model.geom_name2id("frame_grip_frame")
    socket = np.mean([d.geom_xpos[e.obj_geom_id[f"stand_wall_{i}"]] for i in range(4)], axis=0)[:2]
    top = d.site_xpos[site["stand_mount_site"]][2]
    bottom = d.geom_xpos[e.obj_geom_id["stand_base"]][2] + 0.005  # the base's top: the post's floor
    rot = lambda: d.body_xmat[frame].reshape(3, 3).copy()  # noqa: E731
    tip = lambda: d.site_xpos[site["frame_tip_site"]].copy()  # noqa: E731
    grip = lambda: d.geom_xpos[grip_geom].copy()  # noqa: E731

    # The frame lies flat; its local z runs along the bar (tip at -z), local x across it in the
    # frame's plane. Fingers close along local x, so the grip is held against the turn and the frame's
    # in-plane weight by the pads' faces rather than by their torsional friction. Upright, local z is up
    # and local x is one of the walls' four directions: the one that leaves the gripper pointing back
    # at the robot (-x). Pointing away (+x) drives wrist joint 5 to its limit (seed 0); with -x the
    # hook ends up pointing toward the tool's side of the table (-y), where stage 2 reaches it easily.
    bar = rot()[:, 2]
    ori = top_down(_grasp_yaw(yaw_of(arm.mat), np.arctan2(bar[1], bar[0]) + np.pi / 2, np.pi))
    rel = rot().T @ ori
    upright = []
    for ang in np.arange(4) * np.pi / 2:
        x = np.array([np.cos(ang), np.sin(ang), 0.0])
        r = np.stack([x, np.cross([0.0, 0.0, 1.0], x), [0.0, 0.0, 1.0]], axis=1)
        upright.append((float((r @ rel)[0, 2]), ang, r))
    goal_rot = min(upright, key=lambda c: c[:2])[2]

    yield from s.move(lambda: (grip() + [0, 0, rng.uniform(0.07, 0.1)], ori), OPEN, tol=0.01)
    yield from s.move(lambda: (grip() + [0, 0, -0.006], ori), OPEN, tol=0.004, steps=50, speed=0.5 * s.speed)
    yield from _closed(s)
    # high enough that the tip (18.7 cm below the grip) clears the post while the frame turns
    lifted = np.r_[arm.pos[:2], rng.uniform(1.17, 1.2)]
    yield from s.move(lambda: (lifted, None), CLOSE, tol=0.015, steps=60, speed=0.7 * s.speed)

    def tip_at(z: float) -> Target:
        return _carried(s, tip, rot, lambda: (np.r_[socket, z], goal_rot))

    # slowly: the frame's inertia, turned fast, twists it in the fingers
    yield from s.move(tip_at(top + rng.uniform(0.05, 0.07)), CLOSE, tol=0.01, ang_tol=0.03, steps=200,
                      speed=0.3)
    # the post's walls leave 1.25 mm a side around the 7.5 mm bar and 1.75 mm around the tip
    yield from s.move(tip_at(top + 0.015), CLOSE, tol=0.001, ang_tol=0.01, steps=100, speed=0.3 * s.speed)
    yield from s.move(tip_at(bottom - 0.01), CLOSE, tol=0.002, ang_tol=0.01, steps=200, speed=0.35 * s.speed,
                      until=lambda: tip()[2] < bottom + 0.01)
    yield from s.hold(OPEN, s.hold_steps())
    back = arm.pos - arm.mat[:, 2] * 0.04 + [0, 0, 0.01]  # slide the fingers off the grip
    yield from s.move(lambda: (back, None), OPEN, tol=0.01, steps=30)
    yield from s.move(lambda: (np.r_[arm.pos[:2], rng.uniform(1.13, 1.16)], None), OPEN, tol=0.02, steps=30)


def _tool_stage(env: Any, s: Script) -> Iterator[np.ndarray]:
    """Stage 2: grasp the tool's grip top-down and carry it flat, its hole over the hook (the 1.2 cm
    post at the free end of the frame's top bar), handle pointing outward along the bar; lower the
    hole over the hook onto the bar; then swing it handle-down about a pivot just inside the hook, which
    threads the bar through the hole, and let go: the tool hangs on the bar, held by the hook.

    The hole (0.97 cm to its inner faces) cannot be slid onto the bar from its end: bar and hook
    together need a 1.05 cm radius. The pivot (1.5 cm inside the bar's end, 5 mm above it) and the
    hole's start (2-4 mm inside the end, 3 mm above the bar) keep every part of the ring >= 1.4 mm from
    bar and hook through the first 55 degrees of the swing (a 2-D sweep of the ring's section), after
    which the handle falls the rest of the way."""
    e, rng = env.env, s.rng
    arm = s.arms[0]
    d = e.sim.data
    site = e.obj_site_id
    tool = e.obj_body_id["tool"]
    rot = lambda: d.body_xmat[tool].reshape(3, 3).copy()  # noqa: E731
    hole = lambda: d.site_xpos[site["tool_hole1_center"]].copy()  # noqa: E731
    body = lambda: d.body_xpos[tool].copy()  # noqa: E731

    def hook() -> tuple[np.ndarray, np.ndarray]:
        """The top of the bar's free end and the bar's outward direction, re-read every step: the
        frame can turn ~10 degrees in the post (seed 28: bumped while the arm left it), which moves the
        hook 1.5 cm sideways."""
        hang = d.site_xpos[site["frame_hang_site"]]  # the bar's free end, on its axis
        out = hang - d.site_xpos[site["frame_intersection_site"]]
        return hang + [0, 0, 0.00375], np.r_[out[:2], 0.0] / np.linalg.norm(out[:2])

    x = rot()[:, 0]  # the tool's handle, from the hole toward the grip
    ori = top_down(_grasp_yaw(yaw_of(arm.mat), np.arctan2(x[1], x[0]) + np.pi / 2, np.pi))
    yield from s.move(lambda: (np.r_[body()[:2], rng.uniform(1.03, 1.07)], ori), OPEN, tol=0.03, ang_tol=0.15,
                      steps=100, speed=0.8 * s.speed)
    yield from s.move(lambda: (body() + [0, 0, rng.uniform(0.06, 0.09)], ori), OPEN, tol=0.01)
    yield from s.move(lambda: (body() + [0, 0, -0.006], ori), OPEN, tol=0.004, steps=50, speed=0.5 * s.speed)
    yield from _closed(s)
    carry = rng.uniform(1.1, 1.13)  # the hook's top is at ~1.05
    yield from s.move(lambda: (np.r_[arm.pos[:2], carry], None), CLOSE, tol=0.015, steps=60,
                      speed=0.7 * s.speed)

    inset = rng.uniform(0.002, 0.004)

    def swung(angle: float, dz: float = 0.0) -> Target:
        def goal() -> tuple[np.ndarray, np.ndarray]:
            top, out = hook()
            flat = np.stack([out, np.cross([0.0, 0.0, 1.0], out), [0.0, 0.0, 1.0]], axis=1)
            start = top - out * inset + [0, 0, 0.003 + 0.0035]  # the ring is 7 mm thick
            pivot = top - out * 0.015 + [0, 0, 0.005]
            r = _axis_rotation(np.cross(out, [0.0, 0.0, -1.0]), angle)  # turns the handle (``out``) down
            return pivot + r @ (start - pivot) + [0, 0, dz], r @ flat

        return _carried(s, hole, rot, goal)

    yield from s.move(swung(0.0, carry - hook()[0][2] - 0.0065), CLOSE, tol=0.006, ang_tol=0.03, steps=150,
                      speed=0.6 * s.speed)
    yield from s.move(swung(0.0, rng.uniform(0.02, 0.03)), CLOSE, tol=0.002, ang_tol=0.02, steps=80,
                      speed=0.4 * s.speed)
    yield from s.move(swung(0.0), CLOSE, tol=0.0015, ang_tol=0.02, steps=60, speed=0.3 * s.speed)
    angle, last = 0.0, np.radians(rng.uniform(52, 58))
    for _ in range(100):
        angle = min(last, angle + 0.03)
        pos, mat = swung(angle)()
        if angle >= last and arm.error(pos, mat)[0] < 0.002:
            break
        yield s._full(0, arm.servo(pos, mat, CLOSE, 0.4 * s.speed))
    yield from s.hold(OPEN, s.hold_steps())
    back = arm.pos - arm.mat[:, 2] * 0.05
    yield from s.move(lambda: (back, None), OPEN, tol=0.01, steps=30)
    yield from s.hold(OPEN, 80)  # the tool swings down and settles on the bar


def toolhang_expert(env: Any, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Assemble the frame on the stand (:func:`_frame_stage`), then hang the tool on it
    (:func:`_tool_stage`); the rollout ends at the task's own success check."""
    s = Script(env, rng)
    yield from _frame_stage(env, s)
    yield from _tool_stage(env, s)
