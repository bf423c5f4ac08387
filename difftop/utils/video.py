"""Saving rollout videos (mp4 through imageio-ffmpeg, GIF when ffmpeg is unavailable)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["save_video"]


def save_video(frames: list[np.ndarray], path: str | Path, fps: int = 30) -> Path:
    """Write RGB uint8 frames (H, W, 3) to ``path`` (.mp4); returns the path actually written."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [np.asarray(f, dtype=np.uint8) for f in frames]
    try:
        imageio.mimsave(path, frames, fps=fps, macro_block_size=1)
    except Exception:  # no ffmpeg backend: fall back to a GIF next to it
        path = path.with_suffix(".gif")
        imageio.mimsave(path, frames, duration=1.0 / fps)
    return path
