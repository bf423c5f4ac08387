"""Where a run directory keeps what the probes read, whichever checkpoint layout wrote it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from difftop.utils import checkpoint


def rl_checkpoint(run: str | Path) -> dict[str, Any]:
    """The checkpoint dict of an RL run directory (``difftop.utils.checkpoint.load_checkpoint``)."""
    return checkpoint.load_checkpoint(run, "rl")


def buffer_file(run: str | Path) -> Path:
    """The run's replay buffer (``buffer.npz``): beside the checkpoint file, or inside a checkpoint
    directory."""
    run = Path(run)
    if (run / "buffer.npz").is_file() or not hasattr(checkpoint, "find_checkpoint"):
        return run / "buffer.npz"
    found = checkpoint.find_checkpoint(run)
    if found is not None and (found if found.is_dir() else found.parent).joinpath("buffer.npz").is_file():
        return (found if found.is_dir() else found.parent) / "buffer.npz"
    return run / "buffer.npz"
