"""Checks of numeric settings, shared by every command so that each bad value is worded the same way.

A failed check is a :class:`difftop.cli.UserError` (one line, no traceback): ``batch_size must be an
integer >= 1, got 0``, ``lr must be a number > 0, got 'abc'``, ``val_ratio must be a number in [0, 1),
got 1.5``. Booleans are not numbers here (``True`` is an ``int`` to Python, never a batch size).
"""

from __future__ import annotations

from typing import Any

from difftop.errors import UserError

__all__ = ["require_int", "require_number"]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def require_int(key: str, value: Any, minimum: int = 1, optional: bool = False) -> None:
    """``value`` is an integer >= ``minimum`` (or None when ``optional``)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        none = " (or null)" if optional else ""
        raise UserError(f"{key} must be an integer >= {minimum}{none}, got {value!r}")


def require_number(key: str, value: Any, low: float | None = None, high: float | None = None, *,
                   low_open: bool = False, high_open: bool = True, optional: bool = False) -> None:
    """``value`` is a number within the bounds given (``low_open``: ``> low``; ``high_open``: ``< high``;
    NaN is never within), or None when ``optional``."""
    if optional and value is None:
        return
    ok = _is_number(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if ok:
        return
    if low is not None and high is not None:
        what = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        what = f"a number {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        what = f"a number {'<' if high_open else '<='} {high:g}"
    else:
        what = "a number"
    none = " (or null)" if optional else ""
    raise UserError(f"{key} must be {what}{none}, got {value!r}")
