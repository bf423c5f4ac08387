"""Statistics the paired comparisons share (issue 31): a percentile bootstrap of a mean.

Why a bootstrap: 5 seed pairs are too few to trust a normal approximation of their differences' mean,
and the percentile interval needs no assumption about their spread.
"""

from __future__ import annotations

import numpy as np

__all__ = ["bootstrap_ci"]


def bootstrap_ci(x, *, level: float = 0.95, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``x`` (resampled with replacement, seeded, so a table
    is reproducible). One value gives the degenerate interval (x, x); none gives (nan, nan)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    if x.size == 0:
        return float("nan"), float("nan")
    means = x[np.random.default_rng(seed).integers(0, x.size, (resamples, x.size))].mean(1)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)

