"""robomimic's hdf5 layout: read (including the official release files) and write with h5py.

Layout::

    data                     attrs: total (steps), env_args (JSON string)
    data/demo_<i>            attrs: num_samples (and, in official files, model_file)
        actions (T, A)   states (T, S)   rewards (T,)   dones (T,)
        obs/<key> (T, ...)   next_obs/<key> (T, ...)     images (T, H, W, 3) uint8
    mask/<name>              arrays of demo names as bytes, e.g. mask/train, mask/valid

In memory (:class:`EpisodeData`) the keys are the paths inside a demo: ``actions``, ``states``,
``rewards``, ``dones``, ``obs/<key>`` (and ``next_obs/<key>`` on request); demos are ordered by
their number (``demo_2`` before ``demo_10``); ``mask/<name>`` becomes a boolean per-episode
array in ``episode_meta``; ``env_args`` is parsed into ``attrs["env_args"]``.

Why difftop marks its own files: robomimic's layout has no place for difftop's key names
(``action``, ``state``, ``img``), its per-episode values (``episode_seed``) or its attributes
(``next_seed``), so a file difftop wrote could not be trained on or continued without being told
what is in it. :func:`save_robomimic` therefore adds ``data.attrs["difftop"]`` (JSON:
``keys``, file path -> difftop key; ``episode_meta``, names stored as demo attributes; ``attrs``)
and writes through a temporary file, so a killed writer never leaves half a file at ``path``.
A file without that attribute is a foreign robomimic file; ``difftop.data.load_dataset`` asks
which observations to use.
"""

from __future__ import annotations

import json
import os
import re
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

TOP_LEVEL = ("actions", "states", "rewards", "dones")
#: ``data.attrs`` key of the JSON record difftop's writer adds (see the module docstring)
DIFFTOP_ATTR = "difftop"
_DEMO = re.compile(r"^demo_?(\d+)$")


def _decode(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray) and v.dtype.kind == "S":
        return [x.decode() for x in v.tolist()]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _demo_names(group: Any, path: Path) -> list[str]:
    names = [k for k in group.keys() if _DEMO.match(k)]
    if not names:
        raise UserError(f"{path}: no demos under data/ (expected data/demo_0, data/demo_1, ...)")
    return sorted(names, key=lambda k: int(_DEMO.match(k).group(1)))


def _demo_keys(demo: Any, next_obs: bool) -> list[str]:
    import h5py

    keys = [k for k in TOP_LEVEL if k in demo and isinstance(demo[k], h5py.Dataset)]
    for grp in ("obs", "next_obs") if next_obs else ("obs",):
        if grp in demo:
            keys += [f"{grp}/{k}" for k in demo[grp].keys() if isinstance(demo[grp][k], h5py.Dataset)]
    return keys


def open_robomimic(path: Path):
    """The hdf5 file ``path`` opened for reading, checked to hold robomimic's ``data/`` group (one
    clear error otherwise); use it as a context manager."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise UserError(f"{path}: not an hdf5 file ({e})") from e
    if "data" not in f or not isinstance(f["data"], h5py.Group):
        f.close()
        raise UserError(f"{path}: not a robomimic dataset: missing group data/")
    return f


def load_robomimic(
    path: str | Path, keys: Sequence[str] | None = None, next_obs: bool = False
) -> EpisodeData:
    """Read a robomimic hdf5 file into memory (see the module docstring for the key names).

    ``keys`` selects arrays (default: every top-level array and ``obs/*``; ``next_obs/*`` too
    with ``next_obs=True``). Images come back ``(T, C, H, W)`` uint8. Anything missing or
    inconsistent raises :class:`UserError` naming the file and the demo.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such hdf5 dataset")
    with open_robomimic(path) as f:
        g = f["data"]
        names = _demo_names(g, path)
        wanted = list(keys) if keys is not None else _demo_keys(g[names[0]], next_obs)
        if "actions" not in wanted and keys is None:
            raise UserError(f"{path}: data/{names[0]} has no actions")
        parts: dict[str, list[np.ndarray]] = {k: [] for k in wanted}
        lengths = []
        for name in names:
            demo = g[name]
            first = demo[wanted[0]] if wanted[0] in demo else None
            t = int(demo.attrs["num_samples"]) if "num_samples" in demo.attrs else None
            if t is None:
                t = len(first) if first is not None else 0
            if t <= 0:
                raise UserError(f"{path}: data/{name} is empty")
            for k in wanted:
                if k not in demo:
                    raise UserError(f"{path}: data/{name} has no {k}")
                try:
                    a = np.asarray(demo[k][()])
                except Exception as e:
                    raise UserError(f"{path}: cannot read data/{name}/{k} ({type(e).__name__}: {e})") from e
                if a.ndim == 0 or len(a) != t:
                    raise UserError(f"{path}: data/{name}/{k} has shape {a.shape}, expected {t} steps")
                if parts[k] and a.shape[1:] != parts[k][0].shape[1:]:
                    raise UserError(
                        f"{path}: data/{name}/{k} has step shape {a.shape[1:]}, "
                        f"data/{names[0]} has {parts[k][0].shape[1:]}"
                    )
                parts[k].append(a)
            lengths.append(t)
        data = {}
        for k, v in parts.items():
            a = np.concatenate(v)
            data[k] = image_to_memory(a) if is_channel_last_image(a) else a
        meta: dict[str, np.ndarray] = {"demo_index": np.array([int(_DEMO.match(n).group(1)) for n in names])}
        if "mask" in f:
            for m in f["mask"].keys():
                members = set(_decode(np.asarray(f["mask"][m][()])))
                meta[f"mask/{m}"] = np.array([n in members for n in names])
        attrs = {k: _decode(v) for k, v in g.attrs.items()}
        for key in ("env_args", DIFFTOP_ATTR):
            if isinstance(attrs.get(key), str):
                try:
                    attrs[key] = json.loads(attrs[key])
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}: data.attrs[{key!r}] is not JSON ({e})") from e
        if DIFFTOP_ATTR in attrs:
            for k in attrs[DIFFTOP_ATTR].get("episode_meta", []):
                missing = [n for n in names if k not in g[n].attrs]
                if missing:
                    raise UserError(f"{path}: data/{missing[0]} lacks the attribute {k!r} that difftop wrote")
                meta[k] = np.array([g[n].attrs[k] for n in names])
        total = attrs.get("total")
        if total is not None and int(total) != int(sum(lengths)):
            raise UserError(f"{path}: data.attrs['total'] is {total} but the demos hold {sum(lengths)} steps")
    return EpisodeData(data, np.cumsum(lengths), meta, attrs, source=str(path))


def save_robomimic(
    ep: EpisodeData,
    path: str | Path,
    action_key: str = "actions",
    env_args: Mapping[str, Any] | None = None,
) -> None:
    """Write ``ep`` in robomimic's layout (overwrites ``path``).

    ``action_key`` is written as ``actions``; ``states``/``rewards``/``dones`` at the top level
    (rewards 0 and dones 1 on the last step when absent, as robomimic expects them); every
    other key under ``obs/`` (an ``obs/`` or ``next_obs/`` prefix is kept). Boolean
    ``mask/<name>`` episode metadata becomes the mask group, other numeric episode metadata demo
    attributes; images are stored channel-last. ``data.attrs["difftop"]`` records the key names
    and ``ep.attrs`` (see the module docstring).
    """
    import h5py

    if action_key not in ep.data:
        raise UserError(f"{ep.source}: no action key {action_key!r}; keys: {', '.join(ep.data)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [f"demo_{i}" for i in range(ep.n_episodes)]
    targets = {k: _target(k, action_key) for k in ep.data}
    clash = sorted({t for t in targets.values() if list(targets.values()).count(t) > 1})
    if clash:
        raise UserError(f"{ep.source}: keys {[k for k in targets if targets[k] in clash]} would all be "
                        f"written as {clash}")
    demo_meta = [k for k, v in ep.episode_meta.items()
                 if not k.startswith("mask/") and k not in ("demo_index", "num_samples", "model_file")
                 and np.asarray(v).dtype.kind in "biuf"]
    record = {
        "keys": {t: k for k, t in targets.items()},
        "episode_meta": demo_meta,
        "attrs": {k: v for k, v in ep.attrs.items() if k not in ("env_args", "total", DIFFTOP_ATTR)},
    }
    tmp = path.with_name(path.name + ".tmp")
    try:
        _write(h5py, tmp, ep, names, targets, demo_meta, record, action_key,
               env_args if env_args is not None else ep.attrs.get("env_args", {}))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _write(h5py: Any, tmp: Path, ep: EpisodeData, names: list[str], targets: dict[str, str],
           demo_meta: list[str], record: dict[str, Any], action_key: str, args: Any) -> None:
    with h5py.File(tmp, "w") as f:
        g = f.create_group("data")
        g.attrs["total"] = ep.n_steps
        g.attrs["env_args"] = args if isinstance(args, str) else json.dumps(dict(args))
        g.attrs[DIFFTOP_ATTR] = json.dumps(record, default=_json_default)
        for i, name in enumerate(names):
            d = g.create_group(name)
            steps = ep.episode(i)
            t = len(steps[action_key])
            d.attrs["num_samples"] = t
            for k in demo_meta:
                d.attrs[k] = np.asarray(ep.episode_meta[k])[i]
            for k, v in steps.items():
                if is_channel_first_image(v):
                    v = image_to_file(v)
                d.create_dataset(targets[k], data=v, compression="gzip" if v.dtype == np.uint8 else None)
            if "rewards" not in d:
                d.create_dataset("rewards", data=np.zeros(t, dtype=np.float64))
            if "dones" not in d:
                d.create_dataset("dones", data=(np.arange(t) == t - 1).astype(np.int64))
        for k, v in ep.episode_meta.items():
            if k.startswith("mask/") and np.asarray(v).dtype == bool:
                members = [n for n, keep in zip(names, v) if keep]
                f.create_dataset(k, data=np.array(members, dtype="S"))


def _target(key: str, action_key: str) -> str:
    """Where the in-memory ``key`` goes inside a demo group."""
    if key == action_key:
        return "actions"
    if key in TOP_LEVEL or key.startswith(("obs/", "next_obs/")):
        return key
    return f"obs/{key}"


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
