"""Errors every layer of difftop may raise; this module imports nothing of difftop's, so the library
never depends on its command line.

Why a module of its own: a user's mistake (a bad key or value, a missing file) must reach the user
as one line ``error: <message>`` with exit code 2 and no traceback, and that contract is the
library's, not the entry point's: ``difftop.cli`` only prints these.
"""

from __future__ import annotations

__all__ = ["UserError", "EXIT_USAGE"]

#: exit code of a command stopped by a :class:`UserError`
EXIT_USAGE = 2


class UserError(ValueError):
    """A mistake in the user's input (a bad key or value); reported without a traceback."""
