"""Per-run logging: one CSV per category (train/eval/val) plus TensorBoard (and optionally Weights &
Biases), exact on resume.

Why CSV first: results are committed to the repository and plotted by ``difftop plot``; CSVs are
readable anywhere. Columns may grow (loss columns appear once updates start): the file is rewritten
with the union header when that happens.

Why row counts: a checkpoint records how many rows each CSV held when it was committed
(:meth:`RunLogger.counts`); a resumed run cuts every CSV back to those counts, so rows logged after
the checkpoint by a run that was then killed are dropped and logged again once, never twice, and a
fresh start in a folder without a checkpoint drops the rows of a run killed before its first one.
TensorBoard purges its events from the checkpoint's step and gets the kept rows at that step again.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["RunLogger"]


class RunLogger:
    def __init__(self, out_dir: str | Path, *, tensorboard: bool = True, step_key: str = "env_step",
                 rows: Mapping[str, int] | None = None, resume_step: int | None = None,
                 wandb: Mapping | None = None):
        """``rows``: CSV row counts to cut back to (a checkpoint's; ``{}`` for a fresh start: no rows);
        None keeps the files as they are. ``resume_step``: TensorBoard's first step to rewrite, and, for a
        checkpoint of an earlier version without row counts (``rows=None``), the last step kept in the
        CSVs. ``wandb``: keyword arguments of ``wandb.init`` (``id`` the run's, so a resumed run goes on
        in the same Weights & Biases run), or None for no W&B logging."""
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.step_key = step_key
        self._headers: dict[str, list[str]] = {}
        self._rows: dict[str, int] = {}
        kept: dict[str, list[dict]] = {}
        for path in sorted(self.dir.glob("*.csv")):
            data = self._read(path)
            header = self._header(path)
            if rows is not None:
                data = data[: int(rows.get(path.stem, 0))]
            elif resume_step is not None:
                data = [r for r in data if _num(r.get(step_key)) <= resume_step]
            if rows is not None or resume_step is not None:
                if data:
                    self._write(path, header, data)
                else:
                    path.unlink()
                    continue
            self._rows[path.stem] = len(data)
            kept[path.stem] = data
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: CSV only
                SummaryWriter = None
            if SummaryWriter is not None:
                purge = resume_step if resume_step is not None else (0 if rows is not None else None)
                self.tb = SummaryWriter(str(self.dir / "tb"), purge_step=purge)
                if purge is not None:  # the kept rows the purge removed from TensorBoard
                    for category, data in kept.items():
                        for row in data:
                            if _num(row.get(step_key)) >= purge:
                                self._tb_row(category, {k: _parse(v) for k, v in row.items()})
                    self.tb.flush()
        self.wandb = None
        if wandb is not None:
            import wandb as wb

            self.wandb = wb.init(dir=str(self.dir), resume="allow", **dict(wandb))
            # rows are logged against the run's own step column, so a resumed run may log a step again
            self.wandb.define_metric(step_key)
            self.wandb.define_metric("*", step_metric=step_key)

    @staticmethod
    def _read(path: Path) -> list[dict]:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    @staticmethod
    def _header(path: Path) -> list[str]:
        with open(path, newline="") as f:
            return next(csv.reader(f), None) or []

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
            header = self._header(path)
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
        self._rows[category] = self._rows.get(category, 0) + 1
        if self.tb is not None:
            self._tb_row(category, row)
            self.tb.flush()
        if self.wandb is not None:
            numbers = {f"{category}/{k}": v for k, v in row.items()
                       if k != self.step_key and isinstance(v, (int, float)) and math.isfinite(v)}
            self.wandb.log({self.step_key: row.get(self.step_key, 0), **numbers})

    def _tb_row(self, category: str, row: dict) -> None:
        step = int(_num(row.get(self.step_key, 0)))
        for k, v in row.items():
            if k != self.step_key and isinstance(v, (int, float)) and math.isfinite(v):
                self.tb.add_scalar(f"{category}/{k}", v, step)

    def counts(self) -> dict[str, int]:
        """Rows per CSV, with the files flushed to disk (what a checkpoint records)."""
        for category in self._rows:
            path = self.dir / f"{category}.csv"
            if path.exists():
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        return dict(self._rows)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def _fmt(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float):
        return float(f"{v:.6g}")
    return v


def _parse(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.inf
