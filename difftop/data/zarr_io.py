"""diffusion_policy's zarr replay buffer: read, write, and append episode by episode.

Layout (zarr v2, a directory store or a ``.zarr.zip``)::

    data/<key>          per-step arrays concatenated over episodes, e.g. action (N, 2),
                        state (N, 5), keypoint (N, 8, 2), img (N, 96, 96, 3) uint8 channel-last
    meta/episode_ends   (E,) int64 cumulative episode ends
    meta/<key>          optional per-episode arrays (E,), e.g. episode_seed
    .zattrs             free attributes (JSON)

Appending writes the per-step arrays first and ``meta/episode_ends`` last: that is the commit.
Steps past ``episode_ends[-1]`` belong to an episode whose writing was interrupted (or is under
way in another process); readers ignore them and :class:`ZarrEpisodeWriter` truncates them when
it reopens the store.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from difftop.data.episodes import (
    EpisodeData,
    image_to_file,
    image_to_memory,
    is_channel_first_image,
    is_channel_last_image,
)
from difftop.errors import UserError

log = logging.getLogger(__name__)

CHUNK_BYTES = 2**21  # target size of one chunk of a per-step array


def _compressor() -> Any:
    from numcodecs import Blosc

    return Blosc(cname="zstd", clevel=3, shuffle=Blosc.SHUFFLE)


def _chunk_rows(row_shape: tuple[int, ...], dtype: np.dtype) -> int:
    row = int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return int(np.clip(CHUNK_BYTES // max(row, 1), 16, 16384))


def _open_root(path: Path, mode: str = "r") -> tuple[Any, Any]:
    """(root group, store to close or None) of a zarr directory or zip; UserError if not zarr."""
    import zarr

    if not path.exists():
        raise UserError(f"{path}: no such zarr dataset")
    store = None
    try:
        if path.is_file():
            if not zipfile.is_zipfile(path):
                raise UserError(f"{path}: not a zarr dataset (neither a zarr directory nor a .zarr.zip)")
            store = zarr.ZipStore(str(path), mode="r")
            root = zarr.open_group(store, mode="r")
        else:
            root = zarr.open_group(str(path), mode=mode)
    except UserError:
        raise
    except Exception as e:  # zarr raises several types for "this is not a group"
        if store is not None:
            store.close()
        raise UserError(f"{path}: not a zarr dataset ({type(e).__name__}: {e})") from e
    return root, store


def _read(arr: Any, path: Path, name: str, n: int | None = None) -> np.ndarray:
    try:
        return np.asarray(arr[:n] if n is not None else arr[:])
    except Exception as e:  # truncated or corrupt chunks
        raise UserError(f"{path}: cannot read {name} ({type(e).__name__}: {e})") from e


def load_zarr(path: str | Path, keys: Sequence[str] | None = None) -> EpisodeData:
    """Read a replay-buffer zarr (directory or ``.zarr.zip``) into memory.

    ``keys`` selects the per-step arrays (default: all). Channel-last images come back as
    ``(N, C, H, W)`` uint8. A missing group or key, episode ends that do not fit the arrays, or
    a corrupt chunk raises :class:`UserError` naming the file.
    """
    path = Path(path)
    root, store = _open_root(path)
    try:
        if "data" not in root or "meta" not in root:
            missing = [g for g in ("data", "meta") if g not in root]
            raise UserError(f"{path}: not a replay buffer: missing group(s) {', '.join(missing)}")
        data_g, meta_g = root["data"], root["meta"]
        if "episode_ends" not in meta_g:
            raise UserError(f"{path}: missing meta/episode_ends")
        ends = _read(meta_g["episode_ends"], path, "meta/episode_ends")
        if ends.ndim != 1 or not np.issubdtype(ends.dtype, np.integer):
            raise UserError(f"{path}: meta/episode_ends must be 1-D integers, got {ends.dtype} {ends.shape}")
        n = int(ends[-1]) if len(ends) else 0
        available = sorted(data_g.array_keys())
        wanted = list(keys) if keys is not None else available
        data = {}
        for k in wanted:
            if k not in data_g:
                raise UserError(f"{path}: missing data/{k}; available: {', '.join(available) or '(none)'}")
            arr = data_g[k]
            if arr.shape[0] < n:
                raise UserError(
                    f"{path}: data/{k} has {arr.shape[0]} steps but meta/episode_ends ends at {n} "
                    "(truncated file?)"
                )
            if arr.shape[0] > n:
                log.debug("%s: ignoring %d uncommitted steps of data/%s", path, arr.shape[0] - n, k)
            a = _read(arr, path, f"data/{k}", n)
            data[k] = image_to_memory(a) if is_channel_last_image(a) else a
        meta = {}
        for k in meta_g.array_keys():
            if k == "episode_ends":
                continue
            m = meta_g[k]
            if m.ndim >= 1 and m.shape[0] >= len(ends):
                meta[k] = _read(m, path, f"meta/{k}", len(ends))
        attrs = dict(root.attrs)
    finally:
        if store is not None:
            store.close()
    return EpisodeData(data, ends, meta, attrs, source=str(path))


def _write_group(root: Any, ep: EpisodeData) -> None:
    comp = _compressor()
    data_g, meta_g = root.require_group("data"), root.require_group("meta")
    for k, v in ep.data.items():
        v = image_to_file(v) if is_channel_first_image(v) else v
        data_g.array(k, v, chunks=(_chunk_rows(v.shape[1:], v.dtype), *v.shape[1:]), compressor=comp)
    meta_g.array("episode_ends", ep.episode_ends.astype(np.int64), compressor=None)
    for k, v in ep.episode_meta.items():
        meta_g.array(k, np.asarray(v), compressor=None)
    root.attrs.update(ep.attrs)


def save_zarr(ep: EpisodeData, path: str | Path) -> None:
    """Write ``ep`` as a replay buffer: a directory store, or a zip when ``path`` ends in ``.zip``.

    Overwrites ``path``; images are stored channel-last (diffusion_policy's layout).
    """
    import zarr

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".zip":
        store = zarr.ZipStore(str(path), mode="w")
        try:
            _write_group(zarr.group(store=store, overwrite=True), ep)
        finally:
            store.close()
    else:
        _write_group(zarr.open_group(str(path), mode="w"), ep)


class ZarrEpisodeWriter:
    """Append episodes to a replay-buffer directory store, one commit per episode.

    Opening an existing store continues it (after truncating uncommitted steps); the first
    episode fixes the keys, shapes and dtypes of the per-step arrays.
    """

    def __init__(self, path: str | Path) -> None:
        import zarr

        self.path = Path(path)
        if self.path.suffix == ".zip":
            raise UserError(f"{self.path}: can only append to a zarr directory, not a zip")
        if self.path.exists():
            self.root, _ = _open_root(self.path, mode="a")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.root = zarr.open_group(str(self.path), mode="w")
        self.data = self.root.require_group("data")
        self.meta = self.root.require_group("meta")
        if "episode_ends" not in self.meta:
            self.meta.zeros("episode_ends", shape=(0,), chunks=(4096,), dtype=np.int64, compressor=None)
        self.ends = self.meta["episode_ends"]
        self.repair()

    @property
    def attrs(self) -> Any:
        """The store's attributes (a dict-like, written through)."""
        return self.root.attrs

    @property
    def n_episodes(self) -> int:
        return int(self.ends.shape[0])

    @property
    def n_steps(self) -> int:
        return int(self.ends[-1]) if self.n_episodes else 0

    def repair(self) -> int:
        """Truncate steps and per-episode entries past the last commit; return the steps dropped."""
        n, e = self.n_steps, self.n_episodes
        dropped = 0
        for k in self.data.array_keys():
            arr = self.data[k]
            if arr.shape[0] < n:
                raise UserError(
                    f"{self.path}: data/{k} has {arr.shape[0]} steps, fewer than the {n} committed"
                )
            if arr.shape[0] > n:
                dropped = max(dropped, arr.shape[0] - n)
                arr.resize((n, *arr.shape[1:]))
        for k in self.meta.array_keys():
            if k != "episode_ends" and self.meta[k].shape[0] > e:
                self.meta[k].resize((e, *self.meta[k].shape[1:]))
        if dropped:
            log.info("%s: dropped %d steps of an interrupted episode", self.path, dropped)
        return dropped

    def append(self, steps: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> None:
        """Append one episode: per-step arrays (same length) and per-episode scalars."""
        lens = {k: len(v) for k, v in steps.items()}
        t = next(iter(lens.values()), 0)
        if t == 0 or any(n != t for n in lens.values()):
            raise ValueError(f"an episode needs per-step arrays of one positive length, got {lens}")
        existing = sorted(self.data.array_keys())
        if existing and existing != sorted(steps):
            raise UserError(f"{self.path}: holds keys {existing}, the new episode has {sorted(steps)}")
        comp = _compressor()
        for k, v in steps.items():
            v = np.asarray(v)
            v = image_to_file(v) if is_channel_first_image(v) else v
            if k not in self.data:
                chunks = (_chunk_rows(v.shape[1:], v.dtype), *v.shape[1:])
                self.data.zeros(k, shape=(0, *v.shape[1:]), chunks=chunks, dtype=v.dtype, compressor=comp)
            arr = self.data[k]
            if arr.shape[1:] != v.shape[1:]:
                raise UserError(
                    f"{self.path}: data/{k} holds steps of shape {arr.shape[1:]}, got {v.shape[1:]}"
                )
            arr.append(v.astype(arr.dtype, copy=False))
        for k, v in (meta or {}).items():
            v = np.asarray([v])
            if k not in self.meta:
                self.meta.zeros(k, shape=(0,), chunks=(4096,), dtype=v.dtype, compressor=None)
            self.meta[k].append(v.astype(self.meta[k].dtype))
        self.ends.append(np.array([self.n_steps + t], dtype=np.int64))  # the commit
