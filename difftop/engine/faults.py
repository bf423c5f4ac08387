"""Named crash points, so tests can kill a run at exact instants (inside a checkpoint write, an
evaluation, a learning burst) and check that the resumed run equals the uninterrupted one.

``DIFFTOP_CRASH_AT=<name>:<n>`` kills the process with SIGKILL the n-th time (1-based) that
:func:`crash_point` is called with ``name``; ``<name>:<n>:int`` raises KeyboardInterrupt instead (a
Ctrl-C at that instant). Unset (always, outside tests), it costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

__all__ = ["crash_point"]

_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    spec = os.environ.get("DIFFTOP_CRASH_AT")
    if not spec:
        return
    target, _, rest = spec.partition(":")
    if target != name:
        return
    count, _, how = rest.partition(":")
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(count or 1):
        if how == "int":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGKILL)
