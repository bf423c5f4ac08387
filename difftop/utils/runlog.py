"""Per-run logging: one CSV per category (train/eval) plus TensorBoard, safe to resume.

Why CSV first: results are committed to the repository and plotted by ``difftop plot``; CSVs are
readable anywhere. Columns may grow (e.g. loss columns appear once updates start): the file is
rewritten with the union header when that happens. On resume, rows past the checkpoint are
dropped (the run recomputes them) and TensorBoard purges its later events.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

__all__ = ["RunLogger"]


class RunLogger:
    def __init__(self, out_dir: str | Path, *, tensorboard: bool = True, resume_step: int | None = None,
                 step_key: str = "env_step", redo: tuple[str, ...] = ()):
        """``resume_step``: drop the rows a resumed run will log again (those past its checkpoint), so a
        CSV never holds a step twice. ``redo``: categories whose row *at* ``resume_step`` is logged again
        too (an evaluation the checkpoint was saved before, which a cut-off run may have logged)."""
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.step_key = step_key
        self._headers: dict[str, list[str]] = {}
        for path in self.dir.glob("*.csv"):
            rows = self._read(path)
            if resume_step is None:
                continue
            last = resume_step - 1 if path.stem in redo else resume_step
            keep = [r for r in rows if _num(r.get(step_key)) <= last]
            self._write(path, list(rows[0].keys()) if rows else [], keep)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: CSV only
                SummaryWriter = None
            if SummaryWriter is not None:
                self.tb = SummaryWriter(str(self.dir / "tb"), purge_step=resume_step)

    @staticmethod
    def _read(path: Path) -> list[dict]:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    @staticmethod
    def _write(path: Path, header: list[str], rows: list[dict]) -> None:
        tmp = path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
        tmp.replace(path)

    def log(self, category: str, row: dict) -> None:
        """Append ``row`` to ``<category>.csv`` and write its numbers to TensorBoard."""
        path = self.dir / f"{category}.csv"
        row = {k: _fmt(v) for k, v in row.items()}
        header = self._headers.get(category)
        if header is None and path.exists():
            with open(path, newline="") as f:
                header = next(csv.reader(f), None)
        if not header:
            header = list(row)
            self._write(path, header, [])
        missing = [k for k in row if k not in header]
        if missing:
            header = header + missing
            self._write(path, header, self._read(path))
        self._headers[category] = header
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=header, extrasaction="ignore").writerow(row)
        if self.tb is not None:
            step = int(_num(row.get(self.step_key, 0)))
            for k, v in row.items():
                if k != self.step_key and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(f"{category}/{k}", v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _fmt(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float):
        return float(f"{v:.6g}")
    return v


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.inf
