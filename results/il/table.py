"""Print the Push-T results in the layout of the paper's Tables 1 and 3 (one row per policy).

    .venv/bin/python results/il/table.py results/il/runs/pusht/state-cpu [--out table.md]

For every run directory <root>/<run>/seed<k>/eval.csv, the last evaluation is taken; rows give the
mean +- std over seeds (population std, as the paper's +-) of the success rate and of the mean max
coverage, with the number of seeds and the gradient steps reached.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

# (run directory name, label) in the order of the paper's Tables 1 and 3, then BC (ours extra).
ROWS = [
    ("ibc", "IBC"),
    ("bc_rnn", "BC-RNN"),
    ("residual_bc_rnn", "Residual + BC-RNN"),
    ("difftop_bc_rnn", "DiffTOP + BC-RNN"),
    ("diffusion", "Diffusion"),
    ("ibc_diffusion", "IBC + Diffusion"),
    ("residual_diffusion", "Residual + Diffusion"),
    ("difftop_diffusion", "DiffTOP + Diffusion"),
    ("difftop_zero", "DiffTOP, zero init."),
    ("difftop_random", "DiffTOP, random init."),
    ("bc", "BC"),
    ("residual_bc", "Residual + BC"),
    ("difftop_bc", "DiffTOP + BC"),
    # DiffTOP without the CVAE (policies.difftop.posterior_dim=0; ours extra)
    ("difftop_nocvae_bc", "DiffTOP (no CVAE) + BC"),
    ("difftop_nocvae_bc_rnn", "DiffTOP (no CVAE) + BC-RNN"),
    ("difftop_nocvae_diffusion", "DiffTOP (no CVAE) + Diffusion"),
]


def last_eval(path: Path) -> dict[str, float] | None:
    """The last row of an eval.csv as floats (None when it has no rows)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: float(v) for k, v in rows[-1].items()} if rows else None


def mean_std(xs: list[float]) -> str:
    return f"{statistics.fmean(xs):.2f} ± {statistics.pstdev(xs):.2f}" if xs else "-"


def table(root: Path) -> str:
    lines = ["| policy | seeds | gradient steps | success rate | mean max coverage |",
             "|---|---|---|---|---|"]
    for run, label in ROWS:
        evals = [e for f in sorted((root / run).glob("seed*/eval.csv")) if (e := last_eval(f))]
        if not evals:
            continue
        steps = sorted({int(e["step"]) for e in evals})
        lines.append(f"| {label} | {len(evals)} | {', '.join(map(str, steps))} | "
                     f"{mean_std([e['success_rate'] for e in evals])} | "
                     f"{mean_std([e['mean_max_coverage'] for e in evals])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="directory holding <run>/seed<k>/eval.csv")
    ap.add_argument("--out", type=Path, help="also write the table to this file")
    args = ap.parse_args(argv)
    if not args.root.is_dir():
        print(f"error: {args.root} is not a directory", file=sys.stderr)
        return 2
    text = table(args.root)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
