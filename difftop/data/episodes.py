"""The in-memory episode container every dataset format is read into and written from.

:class:`EpisodeData` is diffusion_policy's replay-buffer layout held in numpy: per-step arrays
concatenated over episodes (``data[key]``, all of the same length) and the cumulative episode
ends (``episode_ends``, int64). Images are held channel-first ``(N, C, H, W)`` uint8 (the env
convention); the readers convert the files' channel-last images and the writers convert back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from difftop.errors import UserError


def is_channel_last_image(a: np.ndarray) -> bool:
    """``(N, H, W, C)`` with C in {1, 3, 4} and H, W > 4: how zarr/hdf5 files store images."""
    return a.ndim == 4 and a.shape[-1] in (1, 3, 4) and a.shape[1] > 4 and a.shape[2] > 4


def is_channel_first_image(a: np.ndarray) -> bool:
    """``(N, C, H, W)`` uint8 with C in {1, 3, 4}: the in-memory image convention."""
    return a.ndim == 4 and a.dtype == np.uint8 and a.shape[1] in (1, 3, 4) and a.shape[2] > 4


def image_to_memory(a: np.ndarray) -> np.ndarray:
    """Channel-last file images (uint8, or float in [0, 255] as diffusion_policy's) -> CHW uint8."""
    if a.dtype != np.uint8:
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(a, -1, 1))


def image_to_file(a: np.ndarray) -> np.ndarray:
    """CHW uint8 images -> channel-last (the layout diffusion_policy and robomimic store)."""
    return np.ascontiguousarray(np.moveaxis(a, 1, -1))


@dataclass
class EpisodeData:
    """Episodes as concatenated per-step arrays plus cumulative ``episode_ends``.

    ``episode_meta`` holds one value per episode (e.g. ``episode_seed``; boolean
    ``mask/<name>`` arrays for robomimic's train/valid filters); ``attrs`` the file-level
    attributes; ``source`` names the file for error messages.
    """

    data: dict[str, np.ndarray]
    episode_ends: np.ndarray
    episode_meta: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"

    def __post_init__(self) -> None:
        self.episode_ends = np.asarray(self.episode_ends)
        self.validate()

    def _fail(self, problem: str) -> None:
        raise UserError(f"{self.source}: {problem}")

    def validate(self) -> None:
        """Raise :class:`UserError` naming the source if the arrays do not form episodes."""
        ends = self.episode_ends
        if ends.ndim != 1 or not np.issubdtype(ends.dtype, np.integer):
            self._fail(f"episode_ends must be a 1-D integer array, got {ends.dtype} {ends.shape}")
        self.episode_ends = ends = ends.astype(np.int64)
        if len(ends) and (ends[0] <= 0 or np.any(np.diff(ends) <= 0)):
            self._fail("episode_ends must be strictly increasing and positive (no empty episodes)")
        n = int(ends[-1]) if len(ends) else 0
        for k, v in self.data.items():
            if not isinstance(v, np.ndarray) or v.ndim < 1:
                self._fail(f"data/{k} must be an array with a time axis, got {type(v).__name__}")
            if len(v) != n:
                self._fail(f"data/{k} has {len(v)} steps but episode_ends ends at {n}")
        for k, v in self.episode_meta.items():
            if len(v) != len(ends):
                self._fail(f"episode metadata {k} has {len(v)} entries for {len(ends)} episodes")

    # -- sizes ----------------------------------------------------------------------------------
    @property
    def n_episodes(self) -> int:
        return int(len(self.episode_ends))

    @property
    def n_steps(self) -> int:
        return int(self.episode_ends[-1]) if len(self.episode_ends) else 0

    @property
    def episode_starts(self) -> np.ndarray:
        return np.concatenate([[0], self.episode_ends[:-1]]).astype(np.int64)

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(np.concatenate([[0], self.episode_ends])).astype(np.int64)

    def keys(self) -> list[str]:
        return list(self.data)

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self.data:
            self._fail(f"has no key {key!r}; keys: {', '.join(self.data) or '(none)'}")
        return self.data[key]

    # -- episodes -------------------------------------------------------------------------------
    def episode(self, i: int) -> dict[str, np.ndarray]:
        """Episode ``i``'s per-step arrays (views)."""
        if not -self.n_episodes <= i < self.n_episodes:
            raise IndexError(f"episode {i} out of range for {self.n_episodes} episodes")
        i %= self.n_episodes
        s, e = int(self.episode_starts[i]), int(self.episode_ends[i])
        return {k: v[s:e] for k, v in self.data.items()}

    def select_episodes(self, which: np.ndarray | Sequence[int]) -> EpisodeData:
        """A copy holding only the episodes ``which`` (indices or a boolean mask), in that order."""
        idx = np.asarray(which)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64)
        starts, lens = self.episode_starts[idx], self.episode_lengths[idx]
        steps = _ranges(starts, lens)
        return EpisodeData(
            data={k: v[steps] for k, v in self.data.items()},
            episode_ends=np.cumsum(lens),
            episode_meta={k: np.asarray(v)[idx] for k, v in self.episode_meta.items()},
            attrs=dict(self.attrs),
            source=self.source,
        )

    def select_keys(self, keys: Sequence[str]) -> EpisodeData:
        """A view holding only the per-step arrays ``keys``."""
        return EpisodeData(
            {k: self[k] for k in keys}, self.episode_ends, self.episode_meta, self.attrs, self.source
        )

    @classmethod
    def from_episodes(
        cls,
        episodes: Sequence[Mapping[str, np.ndarray]],
        episode_meta: Mapping[str, Sequence[Any]] | None = None,
        attrs: Mapping[str, Any] | None = None,
        source: str = "<memory>",
    ) -> EpisodeData:
        """Concatenate a list of episodes (dicts of per-step arrays with the same keys)."""
        if not episodes:
            raise UserError(f"{source}: no episodes")
        keys = list(episodes[0])
        for i, ep in enumerate(episodes):
            if list(ep) != keys:
                raise UserError(f"{source}: episode {i} has keys {list(ep)}, episode 0 has {keys}")
        lens = [len(ep[keys[0]]) for ep in episodes]
        data = {k: np.concatenate([np.asarray(ep[k]) for ep in episodes]) for k in keys}
        meta = {k: np.asarray(v) for k, v in (episode_meta or {}).items()}
        return cls(data, np.cumsum(lens), meta, dict(attrs or {}), source)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, s + n)`` for each (s, n), without a Python loop."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(np.asarray(starts, dtype=np.int64), lengths) + offsets


def split_episodes(n_episodes: int, val_ratio: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random (train, val) episode indices, sorted; at least one of each when possible.

    As diffusion_policy's ``get_val_mask``: ``round(n * val_ratio)`` validation episodes, at
    least 1 when ``val_ratio > 0`` and at most ``n - 1``.
    """
    if not 0.0 <= val_ratio < 1.0:
        raise UserError(f"val_ratio must be in [0, 1), got {val_ratio}")
    n_val = 0
    if val_ratio > 0 and n_episodes > 1:
        n_val = min(max(1, int(round(n_episodes * val_ratio))), n_episodes - 1)
    perm = np.random.default_rng(seed).permutation(n_episodes)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])
