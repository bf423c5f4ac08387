"""TD-MPC's schedule strings, e.g. ``std_schedule: linear(0.5, 0.05, 25000)``.

A schedule is either a number (constant) or ``linear(init, final, duration)``: the value moves
linearly from ``init`` at step 0 to ``final`` at ``step = duration`` and stays there.
"""

from __future__ import annotations

import re

__all__ = ["linear_schedule"]

_LINEAR = re.compile(r"^\s*linear\((.+),(.+),(.+)\)\s*$")


def linear_schedule(schedule: str | float | int, step: float) -> float:
    """Value of a TD-MPC schedule (a constant or ``"linear(init,final,duration)"``) at ``step``."""
    try:
        return float(schedule)
    except ValueError:
        pass
    match = _LINEAR.match(str(schedule))
    if match is None:
        raise NotImplementedError(f"unknown schedule {schedule!r}")
    init, final, duration = (float(g) for g in match.groups())
    mix = min(max(step / duration, 0.0), 1.0)
    return (1.0 - mix) * init + mix * final
