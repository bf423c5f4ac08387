"""diffusion_policy's zarr replay buffer: read, write, and append episode by episode.

Layout (zarr v2, a directory store or a ``.zarr.zip``)::

    data/<key>          per-step arrays concatenated over episodes, e.g. action (N, 2),
                        state (N, 5), keypoint (N, 8, 2), img (N, 96, 96, 3) uint8 channel-last
    meta/episode_ends   (E,) int64 cumulative episode ends
    meta/<key>          optional per-episode arrays (E,), e.g. episode_seed
    .zattrs             free attributes (JSON)

Why a commit record: an episode touches several files (chunks and ``.zarray`` of every array,
``meta/episode_ends``), and a generator also has state that must move with it (the next seed to
try). No multi-file write is atomic, so :class:`ZarrEpisodeWriter` stages the episode (per-step
arrays, per-episode arrays, ``episode_ends``) and then commits it by replacing ``.zattrs`` in one
``os.replace``: the new attributes carry ``committed_episodes`` together with the caller's state
(e.g. ``next_seed``). A process killed at any instant leaves either the old or the new record;
whatever is staged past the record is ignored by readers and truncated when a writer reopens
the store. Stores without the record (diffusion_policy's, older difftop's) commit with
``episode_ends`` alone.

Why chunks are checked on reading: zarr reads a chunk file that is missing (deleted, or lost in
a partial copy) as the fill value, so a damaged store would train on all-zero actions without a
word. Every array read is first checked for the chunk files its shape requires.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import shutil
import zipfile
from collections.abc import Callable, Mapping, Sequence
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
#: root attribute: how many episodes of ``meta/episode_ends`` are committed (see the module docstring)
COMMIT_KEY = "committed_episodes"
_COMMIT_TMP = ".zattrs.difftop-tmp"  # the next record, before its rename


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


def missing_chunks(arr: Any, rows: int | None = None) -> list[str]:
    """Store keys of the chunk files that the first ``rows`` rows of ``arr`` (default: all) need
    and that are absent."""
    shape = list(arr.shape)
    if rows is not None and shape:
        shape[0] = min(int(rows), shape[0])
    grid = [math.ceil(s / c) for s, c in zip(shape, arr.chunks)]
    store = arr.chunk_store
    return [k for k in (arr._chunk_key(i) for i in itertools.product(*map(range, grid))) if k not in store]


def check_chunks(arr: Any, path: Path, name: str, rows: int | None = None) -> None:
    """UserError naming the file, the array and the chunk files it lacks (zarr would fill them)."""
    gone = missing_chunks(arr, rows)
    if gone:
        more = f" and {len(gone) - 3} more" if len(gone) > 3 else ""
        fill = arr.fill_value.item() if isinstance(arr.fill_value, np.generic) else arr.fill_value
        raise UserError(
            f"{path}: {name} is missing chunk file(s) {', '.join(gone[:3])}{more} (deleted, or a partial "
            f"copy?); zarr would read those steps as {fill!r}"
        )


def committed_episodes(root: Any, n_ends: int, path: Path) -> int:
    """The number of committed episodes: the commit record's, else all of ``meta/episode_ends``."""
    n = root.attrs.get(COMMIT_KEY)
    if n is None:
        return n_ends
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise UserError(f"{path}: attribute {COMMIT_KEY} must be an integer >= 0, got {n!r}")
    if n > n_ends:
        raise UserError(
            f"{path}: {n} episodes are committed but meta/episode_ends holds {n_ends} (truncated file?)"
        )
    return n


def _read(arr: Any, path: Path, name: str, n: int | None = None) -> np.ndarray:
    check_chunks(arr, path, name, n)
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
        n_ends = committed_episodes(root, int(meta_g["episode_ends"].shape[0]), path)
        ends = _read(meta_g["episode_ends"], path, "meta/episode_ends", n_ends)
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
        attrs = {k: v for k, v in root.attrs.items() if k != COMMIT_KEY}
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
    root.attrs.update({k: v for k, v in ep.attrs.items() if k != COMMIT_KEY})


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
    """Append episodes to a replay-buffer directory store, one atomic commit per episode.

    Opening an existing store continues it: what is staged past the commit record is truncated,
    and a chunk file missing from the committed part is a :class:`UserError`. The first episode
    fixes the keys, shapes and dtypes of the per-step arrays. :meth:`append` stages an episode
    and commits it together with the caller's attributes; :meth:`commit` alone records
    attributes (e.g. a failed attempt's seed). ``hook(point)``, if given, is called at
    ``"stage"`` (one array of the episode written), ``"before_commit"`` (all staged),
    ``"in_commit"`` (new record written to a temporary file, not yet renamed) and
    ``"after_commit"``: crash-safety tests kill the process there.
    """

    def __init__(self, path: str | Path, hook: Callable[[str], None] | None = None) -> None:
        import zarr

        self.path = Path(path)
        self._hook = hook or (lambda point: None)
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
        self._n = committed_episodes(self.root, int(self.ends.shape[0]), self.path)
        check_chunks(self.ends, self.path, "meta/episode_ends", self._n)
        self._steps = int(self.ends[self._n - 1]) if self._n else 0
        for group, rows in ((self.data, self._steps), (self.meta, self._n)):
            for k in group.array_keys():
                if group[k].shape[0] < rows:
                    raise UserError(
                        f"{self.path}: {group.name.strip('/')}/{k} has {group[k].shape[0]} rows, fewer than "
                        f"the {rows} committed"
                    )
                check_chunks(group[k], self.path, f"{group.name.strip('/')}/{k}", rows)
        self.repair()

    @property
    def attrs(self) -> dict[str, Any]:
        """The committed attributes (a copy; change them with :meth:`commit`)."""
        return {k: v for k, v in self.root.attrs.asdict().items() if k != COMMIT_KEY}

    @property
    def n_episodes(self) -> int:
        return self._n

    @property
    def n_steps(self) -> int:
        return self._steps

    def repair(self) -> int:
        """Truncate steps and per-episode entries past the last commit; return the steps dropped.

        With no episode committed, the arrays themselves are not (their keys, shapes and dtypes
        come with the first episode) and are removed."""
        n, e = self._steps, self._n
        dropped = 0
        for trash in self.path.glob(".trash-*"):
            shutil.rmtree(trash, ignore_errors=True)
        (self.path / _COMMIT_TMP).unlink(missing_ok=True)  # a record whose rename was cut short
        if e == 0:
            for group in (self.data, self.meta):
                for k in list(group.array_keys()):
                    if not (group is self.meta and k == "episode_ends"):
                        dropped = max(dropped, group[k].shape[0] if group is self.data else 0)
                        self._drop(group, k)
        for k in self.data.array_keys():
            arr = self.data[k]
            if arr.shape[0] > n:
                dropped = max(dropped, arr.shape[0] - n)
                arr.resize((n, *arr.shape[1:]))
        for k in self.meta.array_keys():
            if self.meta[k].shape[0] > e:
                self.meta[k].resize((e, *self.meta[k].shape[1:]))
        self.ends = self.meta["episode_ends"]  # an Array caches its shape: reopen it after resizing
        if dropped:
            log.info("%s: dropped %d steps of an interrupted episode", self.path, dropped)
        return dropped

    def _drop(self, group: Any, key: str) -> None:
        """Remove an array: renamed out of the store first, so a kill never leaves half of one."""
        where = self.path / group.path / key
        trash = self.path / f".trash-{group.path}-{key}"
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(where, trash)
        shutil.rmtree(trash)

    def append(
        self,
        steps: Mapping[str, np.ndarray],
        meta: Mapping[str, Any] | None = None,
        attrs: Mapping[str, Any] | None = None,
    ) -> None:
        """Append one episode (per-step arrays of one length, per-episode scalars) and commit it
        with ``attrs`` merged into the store's attributes."""
        lens = {k: len(v) for k, v in steps.items()}
        t = next(iter(lens.values()), 0)
        if t == 0 or any(n != t for n in lens.values()):
            raise ValueError(f"an episode needs per-step arrays of one positive length, got {lens}")
        existing = sorted(self.data.array_keys())
        if existing and existing != sorted(steps):
            raise UserError(f"{self.path}: holds keys {existing}, the new episode has {sorted(steps)}")
        arrays = {}
        for k, v in steps.items():
            v = np.asarray(v)
            v = image_to_file(v) if is_channel_first_image(v) else v
            if k in self.data and self.data[k].shape[1:] != v.shape[1:]:
                raise UserError(
                    f"{self.path}: data/{k} holds steps of shape {self.data[k].shape[1:]}, got {v.shape[1:]}"
                )
            arrays[k] = v
        new_meta = sorted(set(meta or {}) - set(self.meta.array_keys()))
        if new_meta and self._n:
            raise UserError(
                f"{self.path}: per-episode key(s) {new_meta} are new: its {self._n} episodes lack them"
            )
        self.repair()  # an earlier append that raised may have staged part of an episode
        comp = _compressor()
        for k, v in arrays.items():
            if k not in self.data:
                chunks = (_chunk_rows(v.shape[1:], v.dtype), *v.shape[1:])
                self.data.zeros(k, shape=(0, *v.shape[1:]), chunks=chunks, dtype=v.dtype, compressor=comp)
            arr = self.data[k]
            arr.append(v.astype(arr.dtype, copy=False))
            self._hook("stage")
        for k, v in (meta or {}).items():
            v = np.asarray([v])
            if k not in self.meta:
                self.meta.zeros(k, shape=(0,), chunks=(4096,), dtype=v.dtype, compressor=None)
            self.meta[k].append(v.astype(self.meta[k].dtype))
        self.ends.append(np.array([self._steps + t], dtype=np.int64))
        self._hook("before_commit")
        self._commit(self._n + 1, attrs, self._steps + t)

    def commit(self, attrs: Mapping[str, Any], replace: bool = False) -> None:
        """Merge ``attrs`` into the store's attributes (``replace``: set them to ``attrs``),
        atomically, without a new episode."""
        self._commit(self._n, attrs, self._steps, replace)

    def _commit(self, n: int, attrs: Mapping[str, Any] | None, steps: int, replace: bool = False) -> None:
        from zarr.util import json_dumps

        record = {**({} if replace else self.root.attrs.asdict()), **(attrs or {}), COMMIT_KEY: n}
        tmp = self.path / _COMMIT_TMP
        with open(tmp, "wb") as f:
            f.write(json_dumps(record))
        self._hook("in_commit")
        os.replace(tmp, self.path / ".zattrs")  # the commit
        self._n, self._steps = n, steps
        self.root.attrs.refresh()
        self._hook("after_commit")
