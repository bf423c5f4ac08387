"""Print the Push-T results in the layout of the paper's Tables 1 and 3 (one row per policy).

    .venv/bin/python results/il/table.py results/il/runs/pusht/state-cpu [--out table.md] [--plot il.png]

For every run directory <root>/<run>/seed<k>/eval.csv, the last evaluation is taken; rows give the
mean +- std over seeds (population std, as the paper's +-) of the success rate and of the mean max
coverage, with the number of seeds and the gradient steps reached. ``--plot`` draws the evaluations
along training (mean +- std over seeds, on the steps every seed reached): one column per base
policy's family, coverage above, success rate below.
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
]


# Families drawn together by --plot: a base with the policies built on it.
FAMILIES = {
    "BC": ["bc", "residual_bc", "difftop_bc", "difftop_zero", "difftop_random"],
    "BC-RNN": ["bc_rnn", "residual_bc_rnn", "difftop_bc_rnn"],
    "Diffusion / IBC": ["diffusion", "residual_diffusion", "difftop_diffusion", "ibc", "ibc_diffusion"],
}
METRICS = [("mean_max_coverage", "mean max coverage"), ("success_rate", "success rate")]


def evals(path: Path) -> dict[str, list[float]]:
    """Every evaluation row of an eval.csv, column by column, as floats."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) for r in rows] for k in (rows[0] if rows else {})}


def plot(root: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from difftop.rl.plot import aggregate

    labels = dict(ROWS)
    fig, axes = plt.subplots(2, len(FAMILIES), figsize=(4.6 * len(FAMILIES), 6.4), squeeze=False)
    for j, (family, runs) in enumerate(FAMILIES.items()):
        for i, (col, ylabel) in enumerate(METRICS):
            ax = axes[i, j]
            for k, run in enumerate(runs):
                seeds = [e for f in sorted((root / run).glob("seed*/eval.csv")) if (e := evals(f))]
                if not seeds:
                    continue
                c = aggregate([(e["step"], e[col]) for e in seeds])
                colour = plt.get_cmap("tab10")(k)
                ax.plot(c.x, c.mean, color=colour, marker="o", ms=3, lw=1.5,
                        label=f"{labels[run]} ({c.n})")
                ax.fill_between(c.x, c.mean - c.std, c.mean + c.std, color=colour, alpha=0.2, lw=0)
            ax.set_title(family if i == 0 else "", fontsize=10)
            ax.set_xlabel("gradient steps", fontsize=9)
            ax.set_ylabel(ylabel if j == 0 else "", fontsize=9)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=8)
            if i == 0 and ax.has_data():
                ax.legend(fontsize=7, title="policy (seeds)", title_fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


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
    ap.add_argument("--plot", type=Path, help="also draw the evaluations along training to this figure")
    args = ap.parse_args(argv)
    if not args.root.is_dir():
        print(f"error: {args.root} is not a directory", file=sys.stderr)
        return 2
    text = table(args.root)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.plot:
        plot(args.root, args.plot)
        print(f"saved {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
