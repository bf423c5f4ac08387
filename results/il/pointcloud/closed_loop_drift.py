"""How far a trained PickCube policy's actions drift from the demonstration's when it drives the robot itself.

Why: the first PickCube table (absolute ``pd_joint_pos`` targets) gave 0/50 for every run although the
validation error was tiny. This replays a training episode's reset, lets the policy act in closed loop,
and prints its arm targets beside the demonstration's at the same step (both in absolute joint angles,
whatever frame the run acts in), plus the largest per-step gap.

Usage: ``MUJOCO_GL=egl .venv/bin/python results/il/pointcloud/closed_loop_drift.py RUN [--episode K]
[--steps N] [--frame absolute|delta]`` (``--frame``: the action frame the run was trained in; the
runs in ``runs/maniskill-pickcube/pointcloud-absolute`` used ``absolute``, the tasks now use ``delta``).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from difftop.data import load_dataset
from difftop.envs.maniskill import ARM_DOF, make_maniskill
from difftop.il.train import load_policy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--data", default="data/maniskill/pickcube.zarr")
    ap.add_argument("--episode", type=int, default=0)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--frame", choices=("absolute", "delta"), default="delta")
    args = ap.parse_args()
    torch.set_num_threads(1)
    policy, _ = load_policy(args.run)
    policy.eval()
    d = load_dataset(args.data)
    ends = np.asarray(d.episode_ends)
    s, e = (0 if args.episode == 0 else int(ends[args.episode - 1])), int(ends[args.episode])
    demo = np.asarray(d["action"][s:e])
    seed = int(d.episode_meta["episode_seed"][args.episode])
    env = make_maniskill("pickcube", "pointcloud", max_steps=args.steps, actions=args.frame, render=False)
    To = policy.shape_meta.obs_horizon
    obs, _ = env.reset(seed=seed)
    hist = [obs] * To
    gap = []
    print(f"episode {args.episode} (seed {seed}, {e - s} demo steps); arm targets, rad")
    try:
        for t in range(args.steps):
            x = {k: torch.from_numpy(np.stack([h[k] for h in hist[-To:]]))[None] for k in hist[0]}
            with torch.no_grad():
                a = policy.predict_action(x)[0, 0].numpy()
            target = a[:ARM_DOF] + (obs["agent_pos"][:ARM_DOF] if args.frame == "delta" else 0.0)
            ref = demo[min(t, len(demo) - 1), :ARM_DOF]
            gap.append(float(np.abs(target - ref).max()))
            if t < 4 or t % 5 == 0:
                print(f"t={t:3d} policy {np.round(target, 2)}  demo {np.round(ref, 2)}  |gap| {gap[-1]:.3f}")
            obs, _, terminated, truncated, info = env.step(a)
            hist.append(obs)
            if info["success"] or terminated or truncated:
                print(f"stopped at t={t}: success {info['success']}")
                break
    finally:
        env.close()
    print(f"largest |gap| in the first 10 steps {max(gap[:10]):.3f}, over all {max(gap):.3f} rad")


if __name__ == "__main__":
    main()
