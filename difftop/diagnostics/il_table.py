"""Print IL results in the layout of the paper's Tables 1 and 3 (one row per policy).

    .venv/bin/python -m difftop.diagnostics.il_table results/il/pusht-states/runs/pusht/state-cpu \
        [--out table.md]

For every run directory <root>/<run>/seed<k>/eval.csv, the last evaluation is taken; rows give the
mean +- std over seeds (population std, as the paper's +-) of the success rate and of each of the task's
metrics in the eval.csv (Push-T: mean max coverage; PickCube: mean grasped), with the number of seeds
and the gradient steps reached. A second table pairs every refining policy (DiffTOP, DiffTOP without the
CVAE, Residual, IBC + Diffusion) with its own base seed by seed, on the first metric (success where a task
has none): the paper's claim is DiffTOP + base >= base.
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


def metric_columns(root: Path) -> list[str]:
    """The task metrics' ``mean_<name>`` columns of the eval.csv files under ``root``, in their order."""
    cols: list[str] = []
    for f in sorted(root.glob("*/seed*/eval.csv")):
        e = last_eval(f)
        cols += [k for k in (e or {}) if k.startswith("mean_") and k != "mean_length" and k not in cols]
    return cols


def label(col: str) -> str:
    return col.replace("_", " ")  # mean_max_coverage -> "mean max coverage"


def table(root: Path) -> str:
    cols = metric_columns(root)
    lines = ["| policy | seeds | gradient steps | success rate |" + "".join(f" {label(c)} |" for c in cols),
             "|---|---|---|---|" + "---|" * len(cols)]
    for run, name in ROWS:
        evals = [e for f in sorted((root / run).glob("seed*/eval.csv")) if (e := last_eval(f))]
        if not evals:
            continue
        steps = sorted({int(e["step"]) for e in evals})
        lines.append(f"| {name} | {len(evals)} | {', '.join(map(str, steps))} | "
                     f"{mean_std([e['success_rate'] for e in evals])} |"
                     + "".join(f" {mean_std([e[c] for e in evals if c in e])} |" for c in cols))
    return "\n".join(lines)


# (refining run, its base run): the paper's claim is refiner >= base, seed by seed on the same base
PAIRS = [(f"{kind}_{base}", base) for base in ("bc", "bc_rnn", "diffusion")
         for kind in ("difftop", "difftop_nocvae", "residual")] + [("ibc_diffusion", "diffusion")]
LABELS = dict(ROWS)


def final_eval(path: Path, run: str) -> dict[str, float] | None:
    """The last evaluation of a finished run (at 20k steps; IBC + Diffusion trains 0), else None."""
    e = last_eval(path) if path.is_file() else None
    return e if e and int(e["step"]) == (0 if run == "ibc_diffusion" else 20000) else None


def paired(root: Path) -> str:
    """Refiner minus its own base, per seed (same data, same base checkpoint, same evaluation seeds), on
    the task's first metric (Push-T: coverage), or on success for a task without one."""
    cols = metric_columns(root)
    key = cols[0] if cols else "success_rate"
    short = {"mean_max_coverage": "coverage", "success_rate": "success"}.get(key, key.removeprefix("mean_"))
    lines = [f"| refiner - base | seeds | {short}, per seed | {short}: mean ± std | refiner >= base "
             "| success: mean ± std |", "|---|---|---|---|---|---|"]
    for run, base in PAIRS:
        seeds, dm, dsucc = [], [], []
        for f in sorted((root / run).glob("seed*/eval.csv")):
            r, b = final_eval(f, run), final_eval(root / base / f.parent.name / "eval.csv", base)
            if r and b and key in r and key in b:
                seeds.append(f.parent.name[4:])
                dm.append(r[key] - b[key])
                dsucc.append(r["success_rate"] - b["success_rate"])
        if seeds:
            per = ", ".join(f"{d:+.3f}" for d in dm)
            lines.append(f"| {LABELS[run]} - {LABELS[base]} | {', '.join(seeds)} | {per} | "
                         f"{statistics.fmean(dm):+.3f} ± {statistics.pstdev(dm):.3f} | "
                         f"{sum(d >= 0 for d in dm)} of {len(dm)} | "
                         f"{statistics.fmean(dsucc):+.2f} ± {statistics.pstdev(dsucc):.2f} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="directory holding <run>/seed<k>/eval.csv")
    ap.add_argument("--out", type=Path, help="also write the table to this file")
    args = ap.parse_args(argv)
    if not args.root.is_dir():
        print(f"error: {args.root} is not a directory", file=sys.stderr)
        return 2
    text, pairs = table(args.root), paired(args.root)
    if pairs:
        text += ("\n\nPaired: each refining policy minus its base on the same seed (finished runs only; "
                 "the task's metric and the success rate over the final evaluation's episodes)\n\n" + pairs)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
