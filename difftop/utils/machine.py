"""What machine a figure came from: the CPU model, for benchmark headers and per-row records.

Why: runs here move between machines (an Intel Xeon with AVX-512 one session, an AMD EPYC the next), and
the same seeds with the same checkpoint gave different results on the two (float rounding amplified by
training, results/rl/mechanism.md), so tables say where each row ran."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (e.g. "AMD EPYC", "Intel(R) Xeon(R) Processor @ 2.80GHz"),
    else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() or "unknown cpu"
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"
