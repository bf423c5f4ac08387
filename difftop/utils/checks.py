"""Checks of numeric settings, shared by every command so that each bad value is worded the same way.

A failed check is a :class:`difftop.errors.UserError` (one line, no traceback): ``batch_size must be an
integer >= 1, got 0``, ``lr must be a number > 0, got 'abc'``, ``val_ratio must be a number in [0, 1),
got 1.5``. Booleans are not numbers here (``True`` is an ``int`` to Python, never a batch size).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from difftop.errors import UserError

__all__ = ["require_int", "require_number", "require_seed", "require_writable_dir", "require_writable_file",
           "require_given", "MAX_SEED"]

#: the largest seed accepted: numpy's and torch's seeding both take 32-bit seeds at least, and derived
#: seeds (``seed * 100003 + episode``) must stay within 63 bits
MAX_SEED = 2**31 - 1


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


def require_seed(key: str, value: Any) -> None:
    """``value`` is an integer seed in [0, 2**31 - 1] (``seed=1.5`` must not quietly run seed 1)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise UserError(f"{key} must be an integer in [0, {MAX_SEED}], got {value!r}")


def require_given(key: str, value: Any, what: str = "a path") -> None:
    """A setting with no default (``checkpoint=``) was given."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise UserError(f"{key} is required: pass {key}=<{what}>")


def _writable_parent(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` (``path`` itself if it exists)."""
    for p in (path, *path.parents):
        if p.exists():
            return p
    return None


def _check_creatable(key: str, given: Any, path: Path, what: str) -> None:
    """``path`` (a directory) exists or can be created, and can be written."""
    resolved = str(path.resolve())
    if resolved == "/proc" or resolved.startswith(("/proc/", "/sys/")):
        top = "/" + resolved.split("/")[1]
        raise UserError(f"{key}={str(given)!r}: cannot write {what} under {top}")
    base = _writable_parent(path)
    if base is None or not base.is_dir():
        raise UserError(f"{key}={str(given)!r}: {base} is a file, not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"{key}={str(given)!r}: {base} is not writable")


def require_writable_dir(key: str, value: Any) -> Path:
    """``value`` names a directory that exists or can be created, and can be written. Checked before
    anything slow starts, so a bad ``out_dir`` never costs a run (or an evaluation)."""
    require_given(key, value, "a directory")
    path = Path(str(value)).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{key}={str(value)!r} is an existing file, not a directory")
    _check_creatable(key, value, path, "a directory")
    return path


def require_writable_file(key: str, value: Any) -> Path:
    """``value`` names a file that can be (over)written: not a directory, its folder creatable/writable."""
    require_given(key, value, "a file")
    path = Path(str(value)).expanduser()
    if path.is_dir():
        raise UserError(f"{key}={str(value)!r} is a directory, not a file")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{key}={str(value)!r} is not writable")
    _check_creatable(key, value, path.parent, "a file")
    return path
