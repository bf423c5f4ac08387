"""How well each run's TOLD model fits its data, from train.csv (the figures quoted in README.md).

Why: the PG loss of DiffTOP moves the same parameters that TD-MPC's prediction losses fit (encoder,
dynamics, reward, latent Q). Applied at every update (``pg_mode=batched``) it can pull the model
off its data; the planner then optimises a wrong model. This prints, per run and per window of env
steps, the mean of the per-episode logged losses (consistency = latent dynamics, reward, latent
value), the PG loss (-Q_s of the solve's action) and the norm of the clipped model gradient.

    .venv/bin/python -m difftop.diagnostics.model_losses results/rl/states/runs/cartpole-swingup \
        results/rl/pg-mode/runs
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

COLUMNS = {"consistency_loss": "consistency", "reward_loss": "reward", "value_loss": "value",
           "pg_loss": "PG loss", "grad_norm": "model grad norm"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", help="run directories or folders above them")
    p.add_argument("--windows", nargs="+", default=["40000-60000", "80000-100000"],
                   help="env-step windows lo-hi (hi included)")
    args = p.parse_args(argv)
    runs = sorted({f.parent for a in args.paths for f in Path(a).rglob("train.csv")})
    print("| run | env steps | episodes | " + " | ".join(COLUMNS.values()) + " |")
    print("|---|---|---|" + "---|" * len(COLUMNS))
    for run in runs:
        t = pd.read_csv(run / "train.csv")
        if "reward_loss" not in t:
            continue  # still in its seed steps: nothing learned yet
        t = t.dropna(subset=["reward_loss"])
        for w in args.windows:
            lo, hi = (int(x) for x in w.split("-"))
            sel = t[(t.env_step >= lo) & (t.env_step <= hi)]
            cells = [f"{sel[c].mean():.3g}" if c in sel and sel[c].notna().any() else "-" for c in COLUMNS]
            print(f"| {run} | {lo // 1000}-{hi // 1000}k | {len(sel)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
