"""A planning expert for Push-T that pushes the T with the true simulator state.

Each decision samples push primitives - a contact point on the T's outline, a push direction
near the inward normal and a push length - and scores them on a second env whose simulator
state is copied in (:func:`difftop.envs.pusht.set_sim_state`):

1. *Screen*: every candidate's push is simulated from the pre-contact point (the agent placed
   there at rest), which costs a few physics steps each.
2. *Verify*: the best few are simulated in full from the true state - the go-around path to
   the pre-contact point (shortest path around the T inflated by the agent's radius, on a
   visibility graph of its corners), then the push - and the best verified plan is executed.

Plans are scored by the mean distance of the T's 8 corners to the goal's plus a cost per step,
and any plan that reaches the success coverage wins (the shortest such). Because the block has
no momentum in gym-pusht (the space's damping is 0) a push moves it only while the agent is in
contact, which makes a one-primitive-ahead greedy search work well.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pymunk.vec2d import Vec2d

from difftop.envs.pusht import (
    AGENT_RADIUS,
    GOAL_POSE,
    SUCCESS_THRESHOLD,
    PushT,
    block_keypoints,
    get_sim_state,
    set_sim_state,
)

# The T's outline in its body frame, counter-clockwise in pymunk's y-down screen frame, and
# the two rectangles it is made of (x0, y0, x1, y1).
OUTLINE = np.array(
    [[-60, 0], [60, 0], [60, 30], [15, 30], [15, 120], [-15, 120], [-15, 30], [-60, 30]], dtype=np.float64
)
RECTS = np.array([[-60, 0, 60, 30], [-15, 30, 15, 120]], dtype=np.float64)
GOAL_KEYPOINTS = block_keypoints(GOAL_POSE)


@dataclass
class PushTExpertConfig:
    """Knobs of the planner (defaults measured to give >= 95% success within 300 steps)."""

    candidates: int = 64  # push primitives screened per decision
    verify: int = 6  # best screened ones simulated in full
    approach_speed: float = 25.0  # px per step of the moving target along the go-around path
    push_speed: float = 14.0  # px per step while pushing (far from the goal)
    fine_push_speed: float = 4.0  # ... within `fine_distance` of the goal
    fine_distance: float = 12.0  # mean corner distance (px) below which pushes get short and slow
    max_push: float = 150.0  # longest push (px)
    max_angle: float = 0.5  # push direction within this many radians of the inward normal
    gap: float = 4.0  # clearance of the pre-contact point from the T (px)
    clearance: float = 10.0  # extra clearance of the go-around path's corners (px)
    step_cost: float = 0.6  # cost of one step, in px of mean corner distance
    settle_steps: int = 2  # steps holding the last push target
    max_hold: int = 6  # most steps waiting at the pre-contact point for the agent to arrive
    hold_tolerance: float = 2.0  # px: the agent has arrived at the pre-contact point
    corner_tolerance: float = 8.0  # px: ... at a corner of the go-around path


def pose_error(pose: np.ndarray) -> np.ndarray:
    """Mean distance (px) of the T's corners to the goal's, for poses ``(..., 3)``."""
    return np.linalg.norm(block_keypoints(pose) - GOAL_KEYPOINTS, axis=-1).mean(-1)


def physics_step(raw, action: np.ndarray) -> None:
    """One env action without the env's bookkeeping (coverage, observation): the same PD control
    and physics steps as ``PushTEnv.step``, bit for bit (checked by the tests), 4x cheaper."""
    act = np.asarray(action, dtype=np.float64)
    for _ in range(int(round(1 / (raw.dt * raw.control_hz)))):
        acc = raw.k_p * (act - raw.agent.position) + raw.k_v * (Vec2d(0, 0) - raw.agent.velocity)
        raw.agent.velocity += acc * raw.dt
        raw.space.step(raw.dt)


def _rot(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def _segments_hit_rects(p: np.ndarray, q: np.ndarray, rects: np.ndarray) -> np.ndarray:
    """Whether segments p->q ``(N, 2)`` cross the interior of any axis-aligned rect (slab test)."""
    d = q - p
    t0 = np.zeros(len(p))[:, None].repeat(len(rects), 1)
    t1 = np.ones_like(t0)
    for k, (lo, hi) in enumerate(((0, 2), (1, 3))):
        dk = d[:, k : k + 1]
        pk = p[:, k : k + 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            a = (rects[None, :, lo] - pk) / dk
            b = (rects[None, :, hi] - pk) / dk
        inside = (pk > rects[None, :, lo]) & (pk < rects[None, :, hi])
        parallel = np.abs(dk) < 1e-12
        a = np.where(parallel, np.where(inside, -np.inf, np.inf), a)  # outside: empty interval
        b = np.where(parallel, np.inf, b)
        t0 = np.maximum(t0, np.minimum(a, b))
        t1 = np.minimum(t1, np.maximum(a, b))
    return (t0 < t1 - 1e-9).any(axis=1)


def _inside_rects(x: np.ndarray, rects: np.ndarray) -> np.ndarray:
    """Whether points ``(N, 2)`` lie strictly inside any of the rects."""
    return (
        (x[:, None, 0] > rects[None, :, 0])
        & (x[:, None, 0] < rects[None, :, 2])
        & (x[:, None, 1] > rects[None, :, 1])
        & (x[:, None, 1] < rects[None, :, 3])
    ).any(axis=1)


class PushTExpert:
    """Greedy one-primitive-ahead push planner (see the module docstring)."""

    def __init__(self, cfg: PushTExpertConfig | None = None, seed: int = 0) -> None:
        self.cfg = cfg or PushTExpertConfig()
        self.reseed(seed)
        self.sim = PushT(obs="state", seed=None)  # the planning copy; only its physics is used
        self.sim.reset(seed=0)
        c = self.cfg
        m = AGENT_RADIUS + 1.0  # the agent's centre must stay this far from the T
        self.obstacles = RECTS + np.array([-m, -m, m, m])
        r = AGENT_RADIUS + c.clearance
        self.corners = np.array(
            [[-60 - r, -r], [60 + r, -r], [60 + r, 30 + r], [15 + r, 30 + r],
             [15 + r, 120 + r], [-15 - r, 120 + r], [-15 - r, 30 + r], [-60 - r, 30 + r]]
        )  # fmt: skip
        ang = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        rad = np.array([6.0, 12.0, 20.0, 30.0, 45.0, 60.0, 80.0])
        self.retreat_offsets = (rad[:, None, None] * np.stack([np.cos(ang), np.sin(ang)], 1)).reshape(-1, 2)
        edges = np.roll(OUTLINE, -1, axis=0) - OUTLINE
        self.edge_len = np.linalg.norm(edges, axis=1)
        self.edge_dir = edges / self.edge_len[:, None]
        # outward normal: the outline is counter-clockwise in a y-down frame -> rotate by -90 deg
        self.edge_normal = np.stack([self.edge_dir[:, 1], -self.edge_dir[:, 0]], axis=1)
        mid = OUTLINE + edges / 2 + self.edge_normal * 0.5
        assert not _inside_rects(mid, RECTS).any(), "outline normals must point outward"

    def reseed(self, seed: int) -> None:
        """Restart the planner's random candidate sampling from ``seed``."""
        self.rng = np.random.default_rng(seed)

    # -- candidate generation -------------------------------------------------------------------
    def _sample(self, n: int, fine: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidates in the body frame: pre-contact points, unit push directions, push lengths."""
        c, rng = self.cfg, self.rng
        cum = np.concatenate([[0.0], np.cumsum(self.edge_len)])
        s = rng.uniform(0, cum[-1], n)
        e = np.searchsorted(cum, s, side="right") - 1
        contact = OUTLINE[e] + self.edge_dir[e] * (s - cum[e])[:, None]
        normal = self.edge_normal[e]
        pre = contact + normal * (AGENT_RADIUS + c.gap)
        ang = rng.uniform(-c.max_angle, c.max_angle, n)
        ca, sa = np.cos(ang), np.sin(ang)
        d = -np.stack([ca * normal[:, 0] - sa * normal[:, 1], sa * normal[:, 0] + ca * normal[:, 1]], 1)
        hi = c.fine_distance * 1.5 if fine else c.max_push
        length = np.exp(rng.uniform(np.log(1.0), np.log(hi), n))
        ok = ~_inside_rects(pre, self.obstacles)
        return pre[ok], d[ok], length[ok]

    def _push_targets(self, pre_w: np.ndarray, d_w: np.ndarray, length: float, fine: bool) -> np.ndarray:
        c = self.cfg
        speed = c.fine_push_speed if fine else c.push_speed
        total = c.gap + length
        k = max(1, int(np.ceil(total / speed)))
        s = np.minimum(np.arange(1, k + 1) * speed, total)
        s = np.concatenate([s, np.full(c.settle_steps, total)])
        return pre_w[None] + s[:, None] * d_w[None]

    # -- path planning ------------------------------------------------------------------------
    def _approach(self, start: np.ndarray, goal: np.ndarray) -> np.ndarray | None:
        """Shortest go-around path (body frame) from the agent to a pre-contact point, or None."""
        pts = [start]
        if _inside_rects(start[None], self.obstacles)[0]:  # touching the T: back away first
            out = self._retreat(start, goal)
            if out is None:
                return None
            pts.append(out)
        nodes = np.concatenate([np.stack(pts[-1:]), self.corners, goal[None]])
        n = len(nodes)
        i, j = np.triu_indices(n, 1)
        blocked = _segments_hit_rects(nodes[i], nodes[j], self.obstacles)
        w = np.full((n, n), np.inf)
        dist = np.linalg.norm(nodes[i] - nodes[j], axis=1)
        w[i[~blocked], j[~blocked]] = dist[~blocked]
        w[j[~blocked], i[~blocked]] = dist[~blocked]
        # Dijkstra on <= 10 nodes
        best = np.full(n, np.inf)
        prev = np.full(n, -1)
        best[0] = 0.0
        done = np.zeros(n, bool)
        for _ in range(n):
            u = int(np.argmin(np.where(done, np.inf, best)))
            if not np.isfinite(best[u]):
                break
            done[u] = True
            alt = best[u] + w[u]
            better = alt < best
            best[better] = alt[better]
            prev[better] = u
        if not np.isfinite(best[-1]):
            return None
        route = [n - 1]
        while route[-1] != 0:
            route.append(int(prev[route[-1]]))
        return np.concatenate([np.reshape(pts[:-1], (-1, 2)), nodes[route[::-1]]])

    def _retreat(self, start: np.ndarray, goal: np.ndarray) -> np.ndarray | None:
        """The nearest point clear of the inflated T reachable without crossing the T itself."""
        cand = start[None] + self.retreat_offsets
        ok = ~_inside_rects(cand, self.obstacles)
        if not _inside_rects(start[None], RECTS)[0]:  # (a penetrating agent may leave anyhow)
            ok &= ~_segments_hit_rects(np.repeat(start[None], len(cand), 0), cand, RECTS)
        if not ok.any():
            return None
        cost = np.linalg.norm(self.retreat_offsets, axis=1) + 0.1 * np.linalg.norm(cand - goal, axis=1)
        return cand[np.argmin(np.where(ok, cost, np.inf))]

    def _follow(self, path_w: np.ndarray) -> np.ndarray:
        """Targets moving along a polyline at the approach speed, ending on its last point."""
        seg = np.linalg.norm(np.diff(path_w, axis=0), axis=1)
        total = seg.sum()
        if total < 1e-6:
            return path_w[-1:]
        k = max(1, int(np.ceil(total / self.cfg.approach_speed)))
        s = np.minimum(np.arange(1, k + 1) * self.cfg.approach_speed, total)
        cum = np.concatenate([[0.0], np.cumsum(seg)])
        idx = np.clip(np.searchsorted(cum, s, side="right") - 1, 0, len(seg) - 1)
        frac = ((s - cum[idx]) / np.maximum(seg[idx], 1e-9))[:, None]
        return _as_stored(path_w[idx] + frac * (path_w[idx + 1] - path_w[idx]))

    # -- simulation ---------------------------------------------------------------------------
    def _simulate(
        self, state: np.ndarray, phases: list[tuple[np.ndarray, np.ndarray | None, float]]
    ) -> tuple[np.ndarray, float, bool]:
        """Roll a plan out from ``state`` on the planning copy; return (actions, pose error, success).

        A plan is a list of phases ``(targets, hold, tol)``: the targets are commanded in turn,
        then, if ``hold`` (a point) is given, it is commanded for up to ``max_hold`` steps until
        the agent is within ``tol`` px of it and nearly at rest. Holding at the go-around path's
        corners keeps the lagging PD-driven agent from cutting them into the T, and holding at
        the pre-contact point starts the push where the screen assumed it would.
        """
        set_sim_state(self.sim, state)
        raw = self.sim.raw
        done: list[np.ndarray] = []
        err = float(pose_error(state[[4, 5, 6]]))
        for targets, hold, tol in phases:
            acts = list(targets)
            for k in range(len(acts) + (0 if hold is None else self.cfg.max_hold)):
                if k >= len(acts):
                    gap = np.hypot(*(np.asarray(raw.agent.position) - hold))
                    if gap < tol and np.hypot(*raw.agent.velocity) < 10 * tol:
                        break
                    a = hold
                else:
                    a = acts[k]
                physics_step(raw, a)
                done.append(a)
                err = float(pose_error(np.array([*raw.block.position, raw.block.angle])))
                if err < 12.0 and raw._get_coverage() > SUCCESS_THRESHOLD:
                    return np.stack(done), err, True
        return np.stack(done), err, False

    def plan(self, state: np.ndarray) -> np.ndarray:
        """Actions ``(K, 2)`` of the best verified push primitive from the simulator ``state``."""
        c = self.cfg
        pose = state[[4, 5, 6]]
        err0 = float(pose_error(pose))
        fine = err0 < c.fine_distance
        R, p = _rot(pose[2]), pose[:2]
        pre, d, length = self._sample(c.candidates, fine)
        pre_w, d_w = pre @ R.T + p, d @ R.T
        inside = ((pre_w > 0) & (pre_w < 512)).all(axis=1)
        pre, d, length, pre_w, d_w = pre[inside], d[inside], length[inside], pre_w[inside], d_w[inside]
        pre_w = _as_stored(pre_w)

        def score(err: float, n: int, ok: bool) -> float:
            return -1e6 + n if ok else err + c.step_cost * n

        # 1. screen: push only, agent placed at the pre-contact point at rest
        scores = np.full(len(pre), np.inf)
        pushes = []
        for i in range(len(pre)):
            acts = _as_stored(self._push_targets(pre_w[i], d_w[i], length[i], fine))
            pushes.append(acts)
            s = state.copy()
            s[0:2], s[2:4] = pre_w[i], 0.0
            _, err, ok = self._simulate(s, [(acts, None, 0.0)])
            scores[i] = score(err, len(acts), ok)
        # 2. verify the best few with the go-around path from the true state
        agent_b = (state[0:2] - p) @ R  # agent in the body frame
        best, best_score = None, np.inf
        for i in np.argsort(scores)[: c.verify]:
            if not np.isfinite(scores[i]):
                break
            path_b = self._approach(agent_b, pre[i])
            if path_b is None:
                continue
            path_w = _as_stored(path_b @ R.T + p)
            phases = [(self._follow(path_w[j : j + 2]), path_w[j + 1], c.corner_tolerance)
                      for j in range(len(path_w) - 2)]  # fmt: skip
            phases.append((self._follow(path_w[-2:]), pre_w[i], c.hold_tolerance))
            phases.append((pushes[i], None, 0.0))
            acts, err, ok = self._simulate(state, phases)
            sc = score(err, len(acts), ok)
            if sc < best_score:
                best, best_score = acts, sc
        if best is None:  # nothing feasible: step away from the T's centre of gravity
            cog = p + R @ np.array([0.0, 45.0])
            away = state[0:2] - cog
            best = _as_stored((state[0:2] + 20.0 * away / max(np.linalg.norm(away), 1e-9))[None])
        return best


def _as_stored(a: np.ndarray) -> np.ndarray:
    """Actions rounded to float32 and clipped to the action box, as stored and executed."""
    return np.clip(a, 0.0, 512.0).astype(np.float32).astype(np.float64)


def run_expert_episode(
    env: PushT, expert: PushTExpert, seed: int, max_steps: int, images: bool = True
) -> tuple[dict[str, np.ndarray], bool, float]:
    """Roll the expert out on ``env`` from ``reset(seed)``; return (per-step arrays, success, coverage).

    Per step: ``state`` (5,) float32, ``keypoint`` (8, 2) float32, ``img`` (3, S, S) uint8 (when
    ``images``), ``action`` (2,) float32 - the observation before the action.
    """
    env.reset(seed=seed)
    rec: dict[str, list] = {"state": [], "keypoint": [], "action": []}
    if images:
        rec["img"] = []
    success, coverage, t = False, env.coverage(), 0
    while t < max_steps and not success:
        plan = expert.plan(get_sim_state(env))
        for a in plan:
            rec["state"].append(env.state())
            rec["keypoint"].append(env.keypoints())
            if images:
                rec["img"].append(env.pixels())
            a = np.asarray(a, dtype=np.float32)  # executed as stored: replays are exact
            rec["action"].append(a)
            _, _, _, _, info = env.step(a)
            t += 1
            coverage, success = info["coverage"], info["success"]
            if success or t >= max_steps:
                break
    out = {k: np.stack(v) for k, v in rec.items()} if t else {}
    return out, success, coverage
