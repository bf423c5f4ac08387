"""The dataset loader the trainers call: any supported file in, the arrays a policy is trained on out.

Why a layer above the readers: the readers return a file's arrays under its own names
(robomimic: ``actions``, ``obs/robot0_eef_pos``, ...), while policies take one low-dimensional
``state`` vector, images by name, and ``action``. A robomimic file holds many observations and
which ones a policy sees is the user's choice (robomimic's ``obs_keys``), so guessing would train
on the wrong inputs without a word: a foreign robomimic file must be given ``obs_keys``, and a
file difftop wrote comes back under the names difftop wrote it with.

Contract of :func:`load_dataset` (``path``, ``obs_keys``):

- ``obs_keys`` given (zarr or hdf5): every non-image key among them is flattened per step and
  concatenated, in the given order, into one float32 ``data["state"]``; every image key (uint8,
  ``HxWxC`` or ``CxHxW`` per step) is kept under its own name, channel-first; the actions are
  ``data["action"]``. Nothing else is loaded. ``attrs["obs_keys"]`` lists the observation keys
  of the result (``state`` first, then the images), ``attrs["state_keys"]`` what ``state``
  concatenates; float actions come back float32. robomimic keys may be given with or without
  their ``obs/`` prefix. An unknown key is a :class:`UserError` listing the available ones.
- ``obs_keys=None``: a zarr replay buffer comes back as stored; a robomimic file written by
  difftop (``data.attrs["difftop"]``) under the keys difftop wrote; a foreign robomimic file is a
  :class:`UserError` listing its observation keys.
- robomimic's ``mask/<name>`` filters are ``episode_meta["mask/<name>"]``; :func:`file_split`
  turns ``mask/train`` / ``mask/valid`` into episode indices.
- A LeRobot v3.0 folder (``meta/info.json``) is read by :func:`difftop.data.lerobot.load_lerobot`
  under the same contract: ``obs_keys`` may name difftop keys (``state``, an image's name) or
  LeRobot features (``observation.state``, ``observation.images.<name>``); without ``obs_keys``
  every feature comes back under its difftop key (``observation.state`` -> ``state``, ...). A
  ``train`` / ``valid`` split in its ``info.json`` becomes ``mask/train`` / ``mask/valid``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from difftop.data.episodes import EpisodeData, is_channel_first_image, is_channel_last_image
from difftop.data.hdf5_io import DIFFTOP_ATTR, load_robomimic
from difftop.data.zarr_io import load_zarr
from difftop.errors import UserError

__all__ = ["HDF5_SUFFIXES", "file_split", "load_dataset", "robomimic_obs_keys"]

HDF5_SUFFIXES = (".hdf5", ".h5", ".he5")


def _is_hdf5(p: Path) -> bool:
    """An hdf5 file by suffix or signature (a directory is a zarr store, whatever its name)."""
    if p.is_dir():
        return False
    if p.suffix in HDF5_SUFFIXES:
        return True
    import h5py

    return h5py.is_hdf5(p)


def load_dataset(path: str | Path, obs_keys: Sequence[str] | None = None, *,
                 keys: Sequence[str] | None = None) -> EpisodeData:
    """Read a zarr replay buffer (directory or ``.zarr.zip``), a robomimic hdf5 file or a LeRobot
    v3.0 folder (one holding ``meta/info.json``; :mod:`difftop.data.lerobot`).

    ``obs_keys``: see the module docstring. ``keys`` (exclusive with ``obs_keys``) reads the named
    arrays as the file stores them, without renaming (the raw readers' selection).
    """
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such dataset")
    if obs_keys is not None and keys is not None:
        raise UserError("load_dataset: pass obs_keys or keys, not both")
    if obs_keys is not None:
        _check_obs_keys(obs_keys)
    if p.is_dir() and (p / "meta" / "info.json").is_file():  # a LeRobot dataset folder
        from difftop.data.lerobot import load_lerobot

        return load_lerobot(p, obs_keys, keys=keys)
    if _is_hdf5(p):
        if keys is not None:
            return load_robomimic(p, keys)
        return _load_robomimic_for_training(p, obs_keys)
    if p.is_file():
        import zipfile

        if not zipfile.is_zipfile(p):
            raise UserError(f"{p}: not a dataset: neither a robomimic hdf5 file nor a zarr replay buffer")
    if obs_keys is None:
        return load_zarr(p, keys)
    if "action" in obs_keys:
        raise UserError(f"{p}: 'action' is not an observation key")
    raw = load_zarr(p, [*obs_keys, "action"])
    return _assemble(raw, {k: k for k in obs_keys}, "action", str(p))


def _check_obs_keys(obs_keys: Sequence[str]) -> None:
    """UserError unless ``obs_keys`` is a non-empty list of distinct key names."""
    if isinstance(obs_keys, str) or not all(isinstance(k, str) for k in obs_keys) or not len(obs_keys):
        raise UserError(f"obs_keys must be a non-empty list of key names, got {obs_keys!r}")
    if len(set(obs_keys)) != len(obs_keys):
        raise UserError(f"obs_keys has duplicates: {list(obs_keys)}")


# -- robomimic -----------------------------------------------------------------------------------
def robomimic_obs_keys(path: str | Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """The observation keys of a robomimic file's first demo: ``{name: (per-step shape, dtype)}``."""
    import h5py

    from difftop.data.hdf5_io import _demo_names, open_robomimic

    p = Path(path)
    with open_robomimic(p) as f:
        demo = f["data"][_demo_names(f["data"], p)[0]]
        obs = demo["obs"] if "obs" in demo and isinstance(demo["obs"], h5py.Group) else {}
        return {k: (tuple(obs[k].shape[1:]), str(obs[k].dtype)) for k in obs
                if isinstance(obs[k], h5py.Dataset)}


def _describe(available: dict[str, tuple[tuple[int, ...], str]]) -> str:
    if not available:
        return "(none)"
    parts = []
    for k, (shape, dtype) in available.items():
        dims = "x".join(str(s) for s in shape) or "scalar"
        parts.append(f"{k} ({dims}{' ' + dtype if len(shape) == 3 else ''})")
    return ", ".join(parts)


def _load_robomimic_for_training(p: Path, obs_keys: Sequence[str] | None) -> EpisodeData:
    if obs_keys is None:
        import h5py

        from difftop.data.hdf5_io import _decode

        try:
            with h5py.File(p, "r") as f:
                mine = "data" in f and DIFFTOP_ATTR in f["data"].attrs
                if mine:
                    import json

                    record = json.loads(_decode(f["data"].attrs[DIFFTOP_ATTR]))
        except OSError as e:
            raise UserError(f"{p}: not an hdf5 file ({e})") from e
        except ValueError as e:
            raise UserError(f"{p}: data.attrs[{DIFFTOP_ATTR!r}] is not JSON ({e})") from e
        if not mine:
            raise UserError(
                f"{p}: a robomimic file not written by difftop: choose its observations with "
                f"obs_keys=[...]; available obs keys: {_describe(robomimic_obs_keys(p))}"
            )
        names: dict[str, str] = dict(record.get("keys", {}))
        raw = load_robomimic(p, list(names))
        data = {names[k]: v for k, v in raw.data.items()}
        attrs = {k: v for k, v in raw.attrs.items() if k != DIFFTOP_ATTR}
        attrs.update(record.get("attrs", {}))
        return EpisodeData(data, raw.episode_ends, raw.episode_meta, attrs, raw.source)

    available = robomimic_obs_keys(p)
    wanted = {k: (k[4:] if k.startswith("obs/") else k) for k in obs_keys}
    unknown = [k for k, name in wanted.items() if name not in available]
    if unknown:
        raise UserError(f"{p}: unknown obs key(s) {unknown}; available obs keys: {_describe(available)}")
    raw = load_robomimic(p, ["actions", *(f"obs/{n}" for n in wanted.values())])
    return _assemble(raw, {k: f"obs/{n}" for k, n in wanted.items()}, "actions", str(p))


# -- shared --------------------------------------------------------------------------------------
def _assemble(raw: EpisodeData, sources: dict[str, str], action: str, source: str) -> EpisodeData:
    """``state`` (low-dim ``sources`` concatenated in order), the images by name, ``action``."""
    n = raw.n_steps
    state: list[np.ndarray] = []
    state_keys: list[str] = []
    images: dict[str, np.ndarray] = {}
    for key, src in sources.items():
        a = raw.data[src]
        name = key[4:] if key.startswith("obs/") else key
        if a.dtype == np.uint8 and a.ndim == 4:
            if not is_channel_first_image(a):
                if not is_channel_last_image(a):
                    raise UserError(f"{source}: image {name} has per-step shape {a.shape[1:]}, neither "
                                    "HxWxC nor CxHxW with C in 1, 3, 4")
                a = np.ascontiguousarray(np.moveaxis(a, -1, 1))
            if name in ("state", "action"):
                raise UserError(f"{source}: image key {name!r} clashes with the concatenated {name!r}")
            images[name] = a
        elif a.ndim <= 3:
            state.append(a.reshape(n, -1).astype(np.float32, copy=False))
            state_keys.append(name)
        else:
            raise UserError(f"{source}: obs key {name} has per-step shape {a.shape[1:]}: neither a "
                            "low-dimensional vector nor a uint8 image")
    data: dict[str, np.ndarray] = {}
    if state:
        data["state"] = np.ascontiguousarray(np.concatenate(state, axis=1))
    data.update(images)
    act = raw.data[action]
    data["action"] = act.astype(np.float32) if act.dtype.kind == "f" else act  # robomimic stores float64
    attrs = {k: v for k, v in raw.attrs.items() if k != DIFFTOP_ATTR}
    attrs["obs_keys"] = [k for k in data if k != "action"]
    attrs["state_keys"] = state_keys  # what data["state"] concatenates, in order
    return EpisodeData(data, raw.episode_ends, raw.episode_meta, attrs, source)


def file_split(data: EpisodeData, train: str = "train", valid: str = "valid"
               ) -> tuple[np.ndarray, np.ndarray] | None:
    """(train, valid) episode indices from the file's own ``mask/<train>`` and ``mask/<valid>``
    (robomimic's filters), or None when the file has no ``mask/<train>``. Without ``mask/<valid>``
    the valid split is empty."""
    meta = data.episode_meta
    if f"mask/{train}" not in meta:
        return None
    tr = np.flatnonzero(np.asarray(meta[f"mask/{train}"], dtype=bool))
    va = np.flatnonzero(np.asarray(meta[f"mask/{valid}"], dtype=bool)) if f"mask/{valid}" in meta \
        else np.zeros(0, dtype=np.int64)
    return tr.astype(np.int64), va.astype(np.int64)
