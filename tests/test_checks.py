"""The shared numeric checks: what passes, what fails, and the one wording every command uses."""

import math

import pytest

from difftop.errors import UserError
from difftop.utils.checks import require_int, require_number


def _message(fn, *args, **kw) -> str:
    with pytest.raises(UserError) as e:
        fn(*args, **kw)
    return str(e.value)


def test_require_int():
    require_int("steps", 0, 0)
    require_int("batch_size", 64)
    require_int("episodes", None, 1, optional=True)
    assert _message(require_int, "batch_size", 0) == "batch_size must be an integer >= 1, got 0"
    assert _message(require_int, "batch_size", 2.0) == "batch_size must be an integer >= 1, got 2.0"
    assert _message(require_int, "batch_size", True) == "batch_size must be an integer >= 1, got True"
    assert _message(require_int, "steps", None, 0) == "steps must be an integer >= 0, got None"
    assert _message(require_int, "qs_horizon", "x", 1, optional=True) == \
        "qs_horizon must be an integer >= 1 (or null), got 'x'"


def test_require_number():
    require_number("lr", 1e-3, 0, low_open=True)
    require_number("lr", 1, 0, low_open=True)
    require_number("weight_decay", 0.0, 0)
    require_number("val_ratio", 0.0, 0, 1)
    require_number("pg_lr", None, 0, low_open=True, optional=True)
    require_number("x", -5.0)
    assert _message(require_number, "lr", "abc", 0, low_open=True) == "lr must be a number > 0, got 'abc'"
    assert _message(require_number, "lr", 0, 0, low_open=True) == "lr must be a number > 0, got 0"
    assert _message(require_number, "lr", math.nan, 0, low_open=True) == "lr must be a number > 0, got nan"
    assert _message(require_number, "wd", -1e-4, 0) == "wd must be a number >= 0, got -0.0001"
    assert _message(require_number, "val_ratio", 1.0, 0, 1) == "val_ratio must be a number in [0, 1), got 1.0"
    assert _message(require_number, "p", 1.5, 0, 1, low_open=True, high_open=False) == \
        "p must be a number in (0, 1], got 1.5"
    assert _message(require_number, "t", 3, high=2) == "t must be a number < 2, got 3"
    assert _message(require_number, "x", False) == "x must be a number, got False"
    assert _message(require_number, "lr", None, 0, low_open=True) == "lr must be a number > 0, got None"
    assert _message(require_number, "pg_lr", -1, 0, low_open=True, optional=True) == \
        "pg_lr must be a number > 0 (or null), got -1"
