"""The ``device=`` setting of every command: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

Resolved once, up front, so that a typo or a CUDA device this machine lacks is a one-line error
rather than a traceback from deep inside torch after the run has started.
"""

from __future__ import annotations

import torch

from difftop.errors import UserError


def resolve_device(name, key: str = "device") -> str:
    """``auto`` -> ``cuda`` when a GPU is available, else ``cpu``; anything else is checked (errors name
    the setting ``key``)."""
    name = str(name)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"{key} must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if dev.type == "cpu":
        return name
    if dev.type != "cuda":
        raise UserError(f"{key} must be auto, cpu, cuda or cuda:N, got {name!r}")
    if not torch.cuda.is_available():
        raise UserError(f"{key}={name} but torch sees no CUDA device here ({key}=auto picks the CPU)")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"{key}={name} but there are {torch.cuda.device_count()} CUDA devices")
    return name
