"""Checkpoints written atomically and read back with clear errors.

Why atomic: a run killed while saving must leave the previous checkpoint intact ("losing nothing
already saved"); the file is written next to its destination and renamed over it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError", "atomic_path"]

FORMAT = "difftop-checkpoint-v1"


class CheckpointError(ValueError):
    """A missing, unreadable or foreign checkpoint file (message names the file and the problem)."""


def atomic_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_path(path)
    torch.save({"format": FORMAT, **state}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Load a difftop checkpoint; ``kind`` ("rl", "il") checks what it holds."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated / not a torch file
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a difftop checkpoint")
    if kind is not None and state.get("kind") != kind:
        raise CheckpointError(f"checkpoint {path} holds a {state.get('kind')!r} run, not {kind!r}")
    return state
