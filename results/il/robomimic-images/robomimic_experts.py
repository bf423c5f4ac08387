"""Success rate and time per episode of the scripted robosuite experts, without cameras.

Usage: ``MUJOCO_GL=egl OMP_NUM_THREADS=1 .venv/bin/python results/il/robomimic-images/robomimic_experts.py
lift can square --seeds 20``
prints one markdown table row per task (seeds 0..N-1, each attempt as ``difftop demos``
runs it, ``images=false``).
"""

from __future__ import annotations

import argparse

import numpy as np

from difftop.il.experts import expert_rate
from difftop.il.experts.robosuite_experts import EXPERTS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tasks", nargs="+", choices=sorted(EXPERTS))
    ap.add_argument("--seeds", type=int, default=20)
    args = ap.parse_args()
    print("| task | success | seeds | mean steps (successes) | s / episode | failed seeds |")
    print("|---|---|---|---|---|---|")
    for name in args.tasks:
        task = EXPERTS[name](images=False)
        try:
            rate = expert_rate(task, args.seeds)
        except NotImplementedError:
            print(f"| {name} | no expert | - | - | - | - |", flush=True)
            continue
        steps = f"{np.mean(rate.lengths):.0f}" if rate.lengths else "-"
        print(f"| {name} | {rate.successes}/{args.seeds} | 0-{args.seeds - 1} | {steps} | "
              f"{np.mean(rate.seconds):.1f} | {', '.join(map(str, rate.failed)) or '-'} |", flush=True)


if __name__ == "__main__":
    main()
