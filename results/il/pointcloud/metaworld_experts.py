"""Success rate of MetaWorld's scripted experts as ``difftop demos`` runs them (state only, no clouds).

Usage: ``MUJOCO_GL=egl OMP_NUM_THREADS=1 .venv/bin/python results/il/pointcloud/metaworld_experts.py
assembly pick-place stick-pull --seeds 20 --max-steps 300``
prints one markdown table row per task (seeds 0..N-1, one
attempt each, the attempt of :class:`difftop.il.experts.metaworld_experts.MetaWorldDemoTask` with
``images=false``).
"""

from __future__ import annotations

import argparse

import numpy as np

from difftop.il.experts import expert_rate
from difftop.il.experts.metaworld_experts import MetaWorldDemoTask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tasks", nargs="+")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--max-steps", type=int, default=300)
    args = ap.parse_args()
    print("| task | success | mean steps (successes) | s / episode | failed seeds |")
    print("|---|---|---|---|---|")
    for name in args.tasks:
        task = MetaWorldDemoTask(name, max_steps=args.max_steps, images=False)
        rate = expert_rate(task, args.seeds)
        task.env.close()
        steps = np.mean(rate.lengths) if rate.lengths else float("nan")
        print(f"| {name} | {rate.successes}/{args.seeds} | {steps:.0f} | {np.mean(rate.seconds):.2f} | "
              f"{rate.failed} |", flush=True)


if __name__ == "__main__":
    main()
