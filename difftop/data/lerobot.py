"""LeRobotDataset v3.0, the format most imitation-learning users exchange: read and written here.

Why our own reader and writer: the ``lerobot`` package needs Python >= 3.12 and torch < 2.12, and its
dataset code imports torchvision (whose torch-2.13 wheels are CUDA-only). The format itself is
Parquet tables, JSON and MP4 files, so ``pyarrow`` and PyAV (``av``) read and write it directly.

Layout (``codebase_version`` "v3.0", as LeRobot publishes it: ``docs/source/lerobot-dataset-v3.mdx``
and ``src/lerobot/datasets/`` of huggingface/lerobot)::

    meta/info.json       codebase_version, robot_type, fps, total_episodes, total_frames, total_tasks,
                         chunks_size, data_files_size_in_mb, video_files_size_in_mb, splits,
                         data_path, video_path (templates), features {name: {dtype, shape, names}}
    meta/stats.json      per feature: min, max, mean, std, count, q01 ... q99 (images per channel,
                         shape (C, 1, 1), in [0, 1])
    meta/tasks.parquet   task_index per task text (the text is the pandas index, column ``task``)
    meta/episodes/chunk-000/file-000.parquet
                         one row per episode: episode_index, tasks, length, data/chunk_index,
                         data/file_index, dataset_from_index, dataset_to_index,
                         videos/<key>/{chunk_index,file_index,from_timestamp,to_timestamp},
                         stats/<feature>/<stat>, meta/episodes/{chunk_index,file_index}
    data/chunk-000/file-000.parquet
                         one row per frame, many episodes per file: index, episode_index,
                         frame_index, timestamp, task_index and every feature but the videos
    videos/<key>/chunk-000/file-000.mp4
                         many episodes per file, one after the other; frame ``timestamp`` of an
                         episode is at ``from_timestamp + timestamp`` in the file

Keys (difftop <-> LeRobot): ``action`` <-> ``action``; ``state`` <-> ``observation.state``; an image
``<name>`` (uint8, channel-first in memory) <-> ``observation.images.<name>`` (dtype ``video``: MP4,
lossy; or ``image``: PNG bytes in the data files); any other key ``<name>`` <-> ``observation.<name>``.
Reading a folder difftop did not write names its features the same way (``observation.image``
becomes ``image``, other features keep their names).

Why ``meta/difftop.json``: a LeRobot dataset has no place for difftop's exact key names and per-step
shapes, its per-episode values (``episode_seed``, robomimic's ``mask/train`` / ``mask/valid``) or its
attributes, so they go into a file that LeRobot does not read; the LeRobot tables stay exactly the
published schema, and a dataset converted back to zarr or hdf5 comes back under its own names.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from difftop.data.dataset import _assemble, _check_obs_keys, _describe
from difftop.data.episodes import EpisodeData, is_channel_first_image
from difftop.data.hdf5_io import _json_default
from difftop.errors import UserError

__all__ = ["CODEBASE_VERSION", "is_lerobot", "load_lerobot", "lerobot_obs_keys", "save_lerobot"]

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
DIFFTOP_PATH = "meta/difftop.json"  # difftop's own record (see the module docstring)
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = f"data/{CHUNK_FILE}.parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
EPISODES_PATH = f"meta/episodes/{CHUNK_FILE}.parquet"
#: the per-frame columns every LeRobot dataset has (lerobot.utils.constants.DEFAULT_FEATURES)
DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)  # LeRobot's DEFAULT_QUANTILES
_Q_KEYS = ("q01", "q10", "q50", "q90", "q99")
DEFAULT_TASK = "unspecified task"
#: encoder options LeRobot records for its default codec (libsvtav1, yuv420p, GOP 2, CRF 30)
_CODEC_OPTIONS = ("libsvtav1", "libx264", "libx265", "libaom-av1")


def is_lerobot(path: str | Path) -> bool:
    """A folder holding ``meta/info.json``: a LeRobot dataset (of any codebase version)."""
    p = Path(path)
    return p.is_dir() and (p / INFO_PATH).is_file()


# -- reading -------------------------------------------------------------------------------------
def _kind(ft: Mapping[str, Any]) -> str | None:
    """``video``, ``image``, ``array`` (numeric), or None for what difftop does not load (text)."""
    dtype = ft.get("dtype")
    if dtype in ("video", "image"):
        return dtype
    try:
        return "array" if np.dtype(str(dtype)).kind in "biuf" else None
    except TypeError:
        return None


def _image_shape(ft: Mapping[str, Any], name: str, root: Path) -> tuple[int, int, int]:
    """(C, H, W) of an image/video feature, stored ``[H, W, C]`` or ``[C, H, W]`` (``names`` says which)."""
    shape = [int(s) for s in ft.get("shape", [])]
    names = [str(n).lower() for n in ft.get("names") or []] if isinstance(ft.get("names"), list) else []
    if len(shape) != 3:
        raise UserError(f"{root}: feature {name} has shape {shape}, not an image's [H, W, C] or [C, H, W]")
    if names:
        channel_first = names[0].startswith("channel")
    else:
        channel_first = shape[0] in (1, 3, 4) and shape[2] not in (1, 3, 4)
    c, h, w = shape if channel_first else (shape[2], shape[0], shape[1])
    if c not in (1, 3, 4):
        raise UserError(f"{root}: image feature {name} has {c} channels (1, 3 or 4 expected)")
    return c, h, w


def _short_names(features: Mapping[str, Any], record: Mapping[str, Any] | None) -> dict[str, str]:
    """feature -> difftop key, for every feature difftop can load (see the module docstring)."""
    out: dict[str, str] = {}
    mine = (record or {}).get("keys", {})
    for f, ft in features.items():
        if f in DEFAULT_FEATURES or _kind(ft) is None:
            continue
        if f in mine:
            key = str(mine[f]["key"])
        elif f == "observation.state":
            key = "state"
        elif f.startswith("observation.images."):
            key = f[len("observation.images."):]
        elif f.startswith("observation."):
            key = f[len("observation."):]
        else:
            key = f
        out[f] = f if key in out.values() else key  # a clash keeps the feature's own name
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e})") from e
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not JSON ({e})") from e


def _read_info(root: Path) -> dict[str, Any]:
    info = _read_json(root / INFO_PATH)
    if not isinstance(info, dict):
        raise UserError(f"{root / INFO_PATH}: not a JSON object")
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3."):
        raise UserError(f"{root}: a LeRobot dataset of codebase_version {version or '(none)'}; difftop reads "
                        "v3.0 (convert it with lerobot's convert_dataset_v21_to_v30 first)")
    missing = [k for k in ("fps", "features", "data_path") if k not in info]
    if missing:
        raise UserError(f"{root / INFO_PATH}: missing {', '.join(missing)}")
    if not isinstance(info["features"], dict):
        raise UserError(f"{root / INFO_PATH}: features must be an object")
    return info


def _pq() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise UserError("LeRobot datasets need pyarrow: pip install -e '.[il]'") from e
    return pq


def _read_table(path: Path, columns: Sequence[str] | None, what: str) -> Any:
    pq = _pq()
    if not path.is_file():
        raise UserError(f"{path}: missing ({what})")
    try:
        schema = pq.read_schema(path)
        if columns is not None:
            gone = [c for c in columns if c not in schema.names]
            if gone:
                raise UserError(f"{path}: no column(s) {', '.join(gone)} ({what})")
        return pq.read_table(path, columns=list(columns) if columns is not None else None)
    except UserError:
        raise
    except Exception as e:  # a truncated or foreign file
        raise UserError(f"{path}: cannot read ({type(e).__name__}: {e})") from e


def _episodes(root: Path, info: Mapping[str, Any], video_keys: Sequence[str]) -> dict[str, Any]:
    """The episode table's columns difftop needs, sorted by episode_index."""
    files = sorted((root / "meta" / "episodes").glob("*/*.parquet"))
    if not files:
        raise UserError(f"{root}: no meta/episodes/*/*.parquet (not a complete LeRobot v3 dataset)")
    need = ["episode_index", "length", "data/chunk_index", "data/file_index"]
    for k in video_keys:
        need += [f"videos/{k}/{c}" for c in ("chunk_index", "file_index", "from_timestamp")]
    cols: dict[str, list[Any]] = {c: [] for c in [*need, "tasks"]}
    for f in files:
        has_tasks = "tasks" in _pq().read_schema(f).names
        t = _read_table(f, need + (["tasks"] if has_tasks else []), "episode metadata")
        for c in need:
            cols[c] += t.column(c).to_pylist()
        cols["tasks"] += t.column("tasks").to_pylist() if has_tasks else [None] * t.num_rows
    order = np.argsort(np.asarray(cols["episode_index"], dtype=np.int64), kind="stable")
    eps = {c: [v[i] for i in order] for c, v in cols.items()}
    idx = np.asarray(eps["episode_index"], dtype=np.int64)
    if len(np.unique(idx)) != len(idx):
        raise UserError(f"{root}: meta/episodes lists an episode_index twice")
    total = info.get("total_episodes")
    if total is not None and int(total) != len(idx):
        raise UserError(f"{root}: meta/info.json says total_episodes={total}, meta/episodes lists {len(idx)}")
    if np.any(np.asarray(eps["length"], dtype=np.int64) <= 0):
        raise UserError(f"{root}: meta/episodes has an episode of length 0")
    return eps


def _path(root: Path, info: Mapping[str, Any], key: str, default: str, **fields: Any) -> Path:
    """A file of the dataset from its ``info.json`` path template (v3.0: chunk_index, file_index)."""
    template = str(info.get(key) or default)
    try:
        return root / template.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise UserError(f"{root / INFO_PATH}: {key} {template!r} is not a v3.0 template (it may use only "
                        f"{', '.join('{' + k + '}' for k in fields)})") from e


def _to_numpy(col: Any, n: int, dtype: np.dtype, shape: tuple[int, ...], where: str) -> np.ndarray:
    """A Parquet column (scalars, or fixed/variable nested lists) -> ``(n, *shape)`` numpy."""
    import pyarrow as pa

    arr = col.combine_chunks() if hasattr(col, "combine_chunks") else col
    while True:
        if isinstance(arr, pa.ExtensionArray):  # e.g. Hugging Face datasets' Array2D
            arr = arr.storage
        if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)
                or pa.types.is_fixed_size_list(arr.type)):
            break
        if arr.null_count:
            raise UserError(f"{where}: null values")
        arr = arr.flatten()
    if arr.null_count:
        raise UserError(f"{where}: null values")
    flat = np.asarray(arr.to_numpy(zero_copy_only=False))
    if flat.size != n * math.prod(shape):
        raise UserError(f"{where}: {flat.size} values for {n} frames of shape {list(shape)}")
    return flat.astype(dtype, copy=False).reshape(n, *shape)


def _decode_png(blob: bytes | None, path: str | None, root: Path, c: int, where: str) -> np.ndarray:
    from PIL import Image

    try:
        src = io.BytesIO(blob) if blob is not None else (root / str(path))
        with Image.open(src) as im:
            a = np.asarray(im.convert({1: "L", 3: "RGB", 4: "RGBA"}[c]))
    except Exception as e:
        raise UserError(f"{where}: cannot decode an image ({type(e).__name__}: {e})") from e
    return a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0)


def _decode_video(path: Path, times: np.ndarray, rows: np.ndarray, out: np.ndarray, fps: float,
                  bar: Any) -> None:
    """Frames of ``path`` nearest to ``times`` (seconds) into ``out[rows]`` (CHW uint8), in one pass.

    A frame farther than 0.4 frame periods from its time is an error (a missing frame, or timestamps
    that do not fit the file); LeRobot itself checks the same with a tolerance of 1e-4 s."""
    import av

    if not path.is_file():
        raise UserError(f"{path}: missing (video)")
    order = np.argsort(times, kind="stable")
    qs = times[order]
    c, h, w = out.shape[1:]
    fmt = {1: "gray", 3: "rgb24", 4: "rgba"}[c]
    tol = 0.4 / fps

    def put(j: int, frame: Any, t: float) -> None:
        if abs(t - qs[j]) > tol:
            raise UserError(f"{path}: no frame at {qs[j]:.4f} s (nearest at {t:.4f} s): a missing frame, or "
                            "from_timestamp / timestamp that do not fit the video")
        a = frame.to_ndarray(format=fmt)
        if a.shape[:2] != (h, w):
            raise UserError(f"{path}: frames are {a.shape[1]}x{a.shape[0]}, the feature says {w}x{h}")
        out[rows[order[j]]] = a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0)
        bar.update(1)

    j, prev = 0, None
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                t = float(frame.pts * stream.time_base) if frame.pts is not None else float(frame.time)
                while j < len(qs) and qs[j] <= t:
                    use_prev = prev is not None and qs[j] - prev[1] < t - qs[j]
                    put(j, *(prev if use_prev else (frame, t)))
                    j += 1
                if j == len(qs):
                    break
                prev = (frame, t)
    except UserError:
        raise
    except Exception as e:  # av.error.*: a truncated or foreign file
        raise UserError(f"{path}: cannot decode ({type(e).__name__}: {e})") from e
    if j < len(qs) and prev is None:
        raise UserError(f"{path}: no video frames")
    while j < len(qs):
        put(j, *prev)
        j += 1


def _read(root: Path, features: Sequence[str], info: Mapping[str, Any], record: Mapping[str, Any] | None,
          progress: bool) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, Any]]:
    """The per-step arrays of ``features`` (LeRobot names), the episode lengths and the episode table."""
    fts = info["features"]
    fps = float(info["fps"])
    videos = [f for f in features if fts[f]["dtype"] == "video"]
    eps = _episodes(root, info, videos)
    lengths = np.asarray(eps["length"], dtype=np.int64)
    n = int(lengths.sum())
    # -- the data files: every frame row, grouped by episode and ordered by frame
    import pyarrow as pa

    in_table = [f for f in features if f not in videos]
    cols = ["episode_index", "frame_index", *(["timestamp"] if videos else []), *in_table]
    files = sorted({(int(c), int(f)) for c, f in zip(eps["data/chunk_index"], eps["data/file_index"])})
    tables = [_read_table(_path(root, info, "data_path", DATA_PATH, chunk_index=c, file_index=f), cols,
                          "frames") for c, f in files]
    try:
        table = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
    except pa.ArrowInvalid as e:
        raise UserError(f"{root}: the data files do not share one schema ({e})") from e
    ep_col = table.column("episode_index").to_numpy().astype(np.int64)
    order = np.lexsort((table.column("frame_index").to_numpy(), ep_col))
    wanted = np.asarray(eps["episode_index"], dtype=np.int64)
    order = order[np.isin(ep_col[order], wanted)]
    found, counts = np.unique(ep_col[order], return_counts=True)
    if not np.array_equal(found, wanted) or not np.array_equal(counts, lengths):
        got = dict(zip(found.tolist(), counts.tolist()))
        bad = next(e for e, ln in zip(wanted.tolist(), lengths.tolist()) if got.get(e, 0) != ln)
        raise UserError(f"{root}: the data files hold {got.get(bad, 0)} frames of episode {bad}, "
                        f"meta/episodes says {lengths[wanted.tolist().index(bad)]} (truncated or "
                        "inconsistent dataset?)")
    table = table.take(pa.array(order))
    mine = (record or {}).get("keys", {})  # the exact per-step shapes difftop wrote
    shapes = {f: tuple(int(s) for s in mine.get(f, {}).get("shape", fts[f]["shape"]))
              for f in in_table if fts[f]["dtype"] != "image"}
    data: dict[str, np.ndarray] = {}
    for f in in_table:
        where = f"{root}: data column {f}"
        if fts[f]["dtype"] == "image":
            c, h, w = _image_shape(fts[f], f, root)
            col = table.column(f).combine_chunks()
            if not pa.types.is_struct(col.type):
                raise UserError(f"{where}: an image feature must be a struct of PNG bytes and a path")
            blobs, paths = (col.field(i).to_pylist() if col.type.get_field_index(i) >= 0 else [None] * n
                            for i in ("bytes", "path"))
            data[f] = np.stack([_decode_png(b, p, root, c, where) for b, p in zip(blobs, paths)])
            if data[f].shape[1:] != (c, h, w):
                raise UserError(f"{where}: images of shape {data[f].shape[1:]}, the feature says {(c, h, w)}")
        else:
            data[f] = _to_numpy(table.column(f), n, np.dtype(fts[f]["dtype"]), shapes[f], where)
    # -- the videos: each file decoded once, every frame row mapped to its time in the file
    if videos:
        from tqdm import tqdm

        ts = table.column("timestamp").to_numpy().astype(np.float64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        with tqdm(total=n * len(videos), desc="decode videos", unit="frame", disable=not progress,
                  dynamic_ncols=True) as bar:
            for f in videos:
                c, h, w = _image_shape(fts[f], f, root)
                out = np.empty((n, c, h, w), dtype=np.uint8)
                by_file: dict[tuple[int, int], list[int]] = {}
                for e, key in enumerate(zip(eps[f"videos/{f}/chunk_index"], eps[f"videos/{f}/file_index"])):
                    by_file.setdefault((int(key[0]), int(key[1])), []).append(e)
                for (ci, fi), members in sorted(by_file.items()):
                    rows = np.concatenate([np.arange(starts[e], starts[e] + lengths[e]) for e in members])
                    offset = np.repeat([float(eps[f"videos/{f}/from_timestamp"][e]) for e in members],
                                       lengths[members])
                    path = _path(root, info, "video_path", VIDEO_PATH, video_key=f, chunk_index=ci,
                                        file_index=fi)
                    _decode_video(path, offset + ts[rows], rows, out, fps, bar)
                data[f] = out
    return data, lengths, eps


def _load_record(root: Path) -> dict[str, Any] | None:
    p = root / DIFFTOP_PATH
    if not p.is_file():
        return None
    record = _read_json(p)
    if not isinstance(record, dict):
        raise UserError(f"{p}: not a JSON object")
    return record


def _episode_meta(record: Mapping[str, Any] | None, eps: Mapping[str, Any], info: Mapping[str, Any],
                  root: Path) -> dict[str, np.ndarray]:
    n = len(eps["episode_index"])
    meta: dict[str, np.ndarray] = {}
    tasks = [t[0] if isinstance(t, list) and t else t for t in eps["tasks"]]
    if all(isinstance(t, str) for t in tasks):
        meta["task"] = np.asarray(tasks)
    if record is not None:
        for k, v in record.get("episode_meta", {}).items():
            a = np.asarray(v["values"], dtype=v.get("dtype"))
            if len(a) != n:
                raise UserError(f"{root / DIFFTOP_PATH}: episode_meta {k} has {len(a)} values for {n} "
                                "episodes")
            meta[k] = a
    if "mask/train" not in meta:  # the dataset's own train / validation split, if it has one
        splits = info.get("splits") or {}
        valid = next((s for s in ("valid", "val", "validation", "test") if s in splits), None)
        if "train" in splits and valid is not None:
            idx = np.asarray(eps["episode_index"], dtype=np.int64)
            for name, split in (("train", "train"), ("valid", valid)):
                lo, _, hi = str(splits[split]).partition(":")
                try:
                    meta[f"mask/{name}"] = (idx >= int(lo)) & (idx < int(hi))
                except ValueError as e:
                    raise UserError(f"{root / INFO_PATH}: splits.{split} is {splits[split]!r}, "
                                    "not 'start:end'") from e
    return meta


def lerobot_obs_keys(folder: str | Path) -> dict[str, tuple[str, tuple[int, ...], str]]:
    """The loadable features of a LeRobot folder: ``{difftop key: (feature, per-step shape, dtype)}``
    (images channel-first, dtype ``video`` / ``image``), ``action`` included."""
    root = Path(folder)
    info = _read_info(root)
    record = _load_record(root)
    out = {}
    for f, key in _short_names(info["features"], record).items():
        ft = info["features"][f]
        shape = _image_shape(ft, f, root) if ft["dtype"] in ("video", "image") else tuple(ft["shape"])
        out[key] = (f, tuple(int(s) for s in shape), str(ft["dtype"]))
    return out


def load_lerobot(folder: str | Path, obs_keys: Sequence[str] | None = None, *,
                 keys: Sequence[str] | None = None, progress: bool = False) -> EpisodeData:
    """Read a LeRobot v3.0 folder into memory (videos decoded to uint8 ``(N, C, H, W)``).

    ``obs_keys`` as :func:`difftop.data.load_dataset` takes them for robomimic (each a difftop key or
    a LeRobot feature name): low-dim ones concatenated into ``state``, images kept, ``action``;
    None: every numeric, image and video feature under its difftop key (see the module docstring).
    ``keys`` (exclusive with ``obs_keys``): the named features under their LeRobot names.
    ``attrs["lerobot"]`` holds fps, robot_type and codebase_version; ``episode_meta["task"]`` each
    episode's (first) task text.
    """
    root = Path(folder)
    if not root.exists():
        raise UserError(f"{root}: no such LeRobot dataset")
    if not is_lerobot(root):
        raise UserError(f"{root}: not a LeRobot dataset (no {INFO_PATH})")
    if obs_keys is not None and keys is not None:
        raise UserError("load_lerobot: pass obs_keys or keys, not both")
    info = _read_info(root)
    record = _load_record(root)
    names = _short_names(info["features"], record)  # feature -> difftop key
    by_key = {k: f for f, k in names.items()}

    def resolve(k: str) -> str:
        f = k if k in names else by_key.get(k)
        if f is None:
            avail = {key: (shape, dtype) for key, (_, shape, dtype) in lerobot_obs_keys(root).items()}
            raise UserError(f"{root}: unknown key {k!r}; available keys: {_describe(avail)}")
        return f

    if obs_keys is not None:
        _check_obs_keys(obs_keys)
        if any(resolve(k) == "action" for k in obs_keys):
            raise UserError(f"{root}: 'action' is not an observation key")
        if "action" not in info["features"]:
            raise UserError(f"{root}: no 'action' feature; features: {', '.join(info['features'])}")
        sources = {(names[k] if k in names else k): resolve(k) for k in obs_keys}
        features = [*dict.fromkeys([*sources.values(), "action"])]
    elif keys is not None:
        features = [resolve(k) for k in keys]
    else:
        features = list(names)
    if not features:
        raise UserError(f"{root}: no numeric, image or video features to load")
    data, lengths, eps = _read(root, features, info, record, progress)
    attrs = {k: v for k, v in (record or {}).get("attrs", {}).items()}
    attrs["lerobot"] = {"fps": info["fps"], "robot_type": info.get("robot_type"),
                        "codebase_version": info["codebase_version"]}
    meta = _episode_meta(record, eps, info, root)
    raw = EpisodeData(data, np.cumsum(lengths), meta, attrs, source=str(root))
    if obs_keys is not None:
        return _assemble(raw, sources, "action", str(root))
    if keys is not None:
        return raw
    return EpisodeData({names[f]: v for f, v in data.items()}, raw.episode_ends, meta, attrs, str(root))


# -- writing -------------------------------------------------------------------------------------
def _feature_name(key: str, image: bool) -> str:
    if key == "action":
        return "action"
    if key == "state":
        return "observation.state"
    return f"observation.images.{key}" if image else f"observation.{key}"


def _stats(a: np.ndarray, image: bool) -> dict[str, np.ndarray]:
    """LeRobot's statistics of one feature: per dimension over frames; images per channel in [0, 1]
    over up to ~100-10000 evenly spaced frames (as LeRobot samples them)."""
    n = len(a)
    if image:
        k = n if n < 100 else max(100, min(int(n**0.75), 10000))
        x = a[np.round(np.linspace(0, n - 1, k)).astype(int)]
        side = max(x.shape[2:])
        if side >= 300:  # LeRobot's auto_downsample_height_width: to about 150 pixels
            x = x[:, :, :: side // 150, :: side // 150]
        x = x.astype(np.float32) / 255.0
        per_channel = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)  # (C, frames*H*W)
        out = {"min": per_channel.min(1), "max": per_channel.max(1), "mean": per_channel.mean(1),
               "std": per_channel.std(1)}
        out.update(zip(_Q_KEYS, np.quantile(per_channel, QUANTILES, axis=1)))
        out = {s: np.asarray(v, dtype=np.float64).reshape(-1, 1, 1) for s, v in out.items()}
        out["count"] = np.array([k])
        return out
    x = a.astype(np.float64).reshape(n, -1) if a.ndim == 1 else a.astype(np.float64)
    out = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0)}
    out.update(zip(_Q_KEYS, np.quantile(x, QUANTILES, axis=0)))
    out["count"] = np.array([n])
    return out


def _aggregate(per_episode: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Dataset statistics from episodes' (LeRobot's aggregate_stats): count-weighted mean and
    variance, min of the minima, max of the maxima, and for quantiles the envelope (the minimum of
    the lower ones, the maximum of the upper ones)."""
    counts = np.array([float(s["count"][0]) for s in per_episode])
    w = counts.reshape(-1, *([1] * np.ndim(per_episode[0]["mean"]))) / counts.sum()
    means = np.stack([s["mean"] for s in per_episode])
    mean = (w * means).sum(0)
    var = (w * (np.stack([s["std"] for s in per_episode]) ** 2 + (means - mean) ** 2)).sum(0)
    out = {"min": np.min([s["min"] for s in per_episode], 0),
           "max": np.max([s["max"] for s in per_episode], 0), "mean": mean, "std": np.sqrt(var),
           "count": np.array([int(counts.sum())])}
    for q, key in zip(QUANTILES, _Q_KEYS):
        out[key] = (np.min if q <= 0.5 else np.max)([s[key] for s in per_episode], 0)
    return out


def _default_columns(frame_index: np.ndarray, episode_index: np.ndarray, index: np.ndarray,
                     task_index: np.ndarray, fps: int) -> dict[str, np.ndarray]:
    """LeRobot's per-frame bookkeeping columns; ``timestamp`` is ``frame_index / fps``, float32."""
    i64 = np.int64
    return {"timestamp": (frame_index / fps).astype(np.float32), "frame_index": frame_index.astype(i64),
            "episode_index": episode_index.astype(i64), "index": index.astype(i64),
            "task_index": task_index.astype(i64)}


def _column(a: np.ndarray) -> Any:
    """``(n, *shape)`` -> a Parquet column as LeRobot writes it: scalars for shape [1], else
    fixed-size lists (nested for more dimensions)."""
    import pyarrow as pa

    n = len(a)
    shape = a.shape[1:]
    if math.prod(shape) == 1 and len(shape) <= 1:
        return pa.array(a.reshape(n))
    col = pa.array(np.ascontiguousarray(a).reshape(-1))
    for d in reversed(shape):
        col = pa.FixedSizeListArray.from_arrays(col, int(d))
    return col


def _png_column(a: np.ndarray) -> Any:
    """CHW uint8 frames -> LeRobot's ``image`` column: structs of PNG bytes and a null path."""
    import pyarrow as pa
    from PIL import Image

    blobs = []
    for img in a:
        buf = io.BytesIO()
        Image.fromarray(img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)).save(buf, format="PNG")
        blobs.append(buf.getvalue())
    return pa.StructArray.from_arrays([pa.array(blobs, pa.binary()), pa.array([None] * len(a), pa.string())],
                                      names=["bytes", "path"])


class _VideoWriter:
    """One feature's MP4 files: episodes appended to the current file until it passes its size limit."""

    def __init__(self, root: Path, feature: str, fps: int, vcodec: str, crf: int, gop: int, limit_mb: float,
                 chunks_size: int):
        self.root, self.feature, self.fps = root, feature, fps
        self.vcodec, self.crf, self.gop = vcodec, crf, gop
        self.limit_mb, self.chunks_size = limit_mb, chunks_size
        self.n_files, self.container, self.stream, self.frames = 0, None, None, 0
        self.path: Path | None = None

    def _open(self, h: int, w: int) -> None:
        import av

        self.chunk, self.file = divmod(self.n_files, self.chunks_size)
        self.n_files += 1
        self.path = self.root / VIDEO_PATH.format(video_key=self.feature, chunk_index=self.chunk,
                                                  file_index=self.file)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        options = {"g": str(self.gop), "crf": str(self.crf)} if self.vcodec in _CODEC_OPTIONS else {}
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration otherwise: errors only
        self.container = av.open(str(self.path), "w")
        try:
            self.stream = self.container.add_stream(self.vcodec, rate=self.fps, options=options)
        except Exception as e:
            self.container.close()
            raise UserError(f"cannot encode videos with codec {self.vcodec!r} ({type(e).__name__}: {e})") \
                from e
        self.stream.width, self.stream.height, self.stream.pix_fmt = w, h, "yuv420p"
        self.frames = 0

    def append(self, images: np.ndarray) -> dict[str, Any]:
        """Encode one episode's RGB CHW uint8 frames; its ``videos/<key>/...`` episode columns."""
        import av

        full = self.container is not None and self.path.is_file() \
            and self.path.stat().st_size / 2**20 >= self.limit_mb
        if full:
            self.close()
        if self.container is None:
            self._open(images.shape[2], images.shape[3])
        start = self.frames
        for img in images:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.moveaxis(img, 0, -1)), format="rgb24")
            frame.pts, frame.time_base = self.frames, Fraction(1, self.fps)
            self.frames += 1
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
        key = f"videos/{self.feature}"
        return {f"{key}/chunk_index": self.chunk, f"{key}/file_index": self.file,
                f"{key}/from_timestamp": start / self.fps, f"{key}/to_timestamp": self.frames / self.fps}

    def close(self) -> None:
        if self.container is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
            self.container.close()
            self.container = None

    def info(self) -> dict[str, Any]:
        """The feature's ``info`` entry, probed from its first file as LeRobot does."""
        import av

        first = self.root / VIDEO_PATH.format(video_key=self.feature, chunk_index=0, file_index=0)
        with av.open(str(first)) as c:
            s = c.streams.video[0]
            codec = s.codec_context.codec
            out = {"video.height": s.height, "video.width": s.width,
                   "video.codec": getattr(codec, "canonical_name", codec.name), "video.pix_fmt": s.pix_fmt,
                   "video.is_depth_map": False, "video.fps": self.fps, "video.channels": 3,
                   "has_audio": False, "is_depth_map": False}
        if self.vcodec in _CODEC_OPTIONS:
            out.update({"video.g": self.gop, "video.crf": self.crf})
        return out


def _swap_in(tmp: Path, folder: Path) -> None:
    """Put the finished ``tmp`` at ``folder``, replacing what was there (renamed away first, so a
    kill leaves either the old or the new dataset at ``folder``)."""
    if folder.exists():
        trash = folder.with_name(f".{folder.name}.trash-{os.getpid()}")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(folder, trash)
        os.replace(tmp, folder)
        if trash.is_dir():
            shutil.rmtree(trash, ignore_errors=True)
        else:
            trash.unlink()
    else:
        os.replace(tmp, folder)


def save_lerobot(
    data: EpisodeData,
    folder: str | Path,
    fps: int | None = None,
    image_keys: Sequence[str] | None = None,
    key_map: Mapping[str, str] | None = None,
    *,
    task: str | None = None,
    robot_type: str | None = None,
    video: bool = True,
    vcodec: str = "libsvtav1",
    crf: int = 30,
    gop: int = 2,
    chunks_size: int = 1000,
    data_files_size_in_mb: float = 100,
    video_files_size_in_mb: float = 200,
    progress: bool = False,
) -> Path:
    """Write ``data`` as a LeRobot v3.0 folder (replacing ``folder``); returns the folder.

    ``fps``: the control rate (default: the rate a LeRobot source had, else 10, Push-T's).
    ``image_keys``: keys stored as images (default: every uint8 ``(N, C, H, W)`` array); as MP4
    (``vcodec``, yuv420p, ``crf``, keyframe every ``gop`` frames: LeRobot's defaults) when ``video``
    and the image is RGB of even size, else as PNG ``image`` features (lossless). ``key_map``:
    difftop key -> feature name, over the defaults of the module docstring. ``task``: the task text
    of every episode (default: ``episode_meta["task"]``, else ``attrs["task"]``, else
    "unspecified task"). Data and video files hold many episodes each, up to the ``*_size_in_mb``
    limits; ``chunks_size`` files per chunk folder.
    """
    import pyarrow as pa

    pq = _pq()
    try:
        import av  # noqa: F401
    except ImportError as e:
        raise UserError("LeRobot datasets need PyAV: pip install -e '.[il]'") from e
    folder = Path(folder)
    if data.n_episodes == 0:
        raise UserError(f"{data.source}: no episodes to write")
    lerobot_attrs = data.attrs.get("lerobot") if isinstance(data.attrs.get("lerobot"), dict) else {}
    fps_value = fps if fps is not None else lerobot_attrs.get("fps", 10)
    if not isinstance(fps_value, (int, float)) or isinstance(fps_value, bool) or fps_value <= 0 \
            or float(fps_value) != int(fps_value):
        raise UserError(f"fps must be a positive integer, got {fps_value!r}")
    fps = int(fps_value)
    images = list(image_keys) if image_keys is not None else [k for k, v in data.data.items()
                                                               if is_channel_first_image(v)]
    for k in images:
        if k not in data.data or not is_channel_first_image(data.data[k]):
            raise UserError(f"{data.source}: image key {k!r} is not a uint8 (N, C, H, W) array")
    key_map = dict(key_map or {})
    unknown = sorted(set(key_map) - set(data.data))
    if unknown:
        raise UserError(f"{data.source}: key_map names key(s) {unknown} the data lacks; "
                        f"keys: {', '.join(data.data)}")
    names = {k: key_map.get(k, _feature_name(k, k in images)) for k in data.data}
    clash = sorted({f for f in names.values() if list(names.values()).count(f) > 1 or f in DEFAULT_FEATURES})
    if clash:
        raise UserError(f"{data.source}: keys {[k for k in names if names[k] in clash]} would be written as "
                        f"feature(s) {clash} (taken, or reserved by LeRobot): pass key_map")
    features: dict[str, dict[str, Any]] = {}
    kinds: dict[str, str] = {}
    for k, a in data.data.items():
        f = names[k]
        if k in images:
            c, h, w = a.shape[1:]
            # LeRobot decodes videos to RGB, and yuv420p needs even sizes: anything else as PNG
            kinds[k] = "video" if video and c == 3 and h % 2 == 0 and w % 2 == 0 else "image"
            features[f] = {"dtype": kinds[k], "shape": [h, w, c], "names": ["height", "width", "channels"]}
        else:
            if a.dtype.kind not in "biuf":
                raise UserError(f"{data.source}: {k} has dtype {a.dtype}; LeRobot features are numeric")
            kinds[k] = "array"
            shape = [int(s) for s in a.shape[1:]] or [1]  # a scalar per step: LeRobot's shape [1]
            features[f] = {"dtype": str(a.dtype), "shape": shape, "names": None}
    features.update({k: dict(v) for k, v in DEFAULT_FEATURES.items()})

    # -- tasks: one text per episode
    if task is not None:
        texts = [str(task)] * data.n_episodes
    elif "task" in data.episode_meta and np.asarray(data.episode_meta["task"]).dtype.kind in "UO":
        texts = [str(t) for t in data.episode_meta["task"]]
    else:
        texts = [str(data.attrs.get("task", DEFAULT_TASK))] * data.n_episodes
    task_index = {t: i for i, t in enumerate(dict.fromkeys(texts))}

    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    from tqdm import tqdm

    try:  # a failure anywhere leaves no temporary folder behind
        videos = {k: _VideoWriter(tmp, names[k], fps, vcodec, crf, gop, video_files_size_in_mb, chunks_size)
                  for k in data.data if kinds[k] == "video"}
        rows: list[dict[str, Any]] = []  # the episode table
        image_stats: dict[str, list[dict[str, np.ndarray]]] = {}  # per feature, per episode
        writer, n_files, file_bytes, chunk, file = None, 0, 0.0, 0, 0
        try:
            starts, ends = data.episode_starts, data.episode_ends
            bar = tqdm(range(data.n_episodes), desc=f"write {folder.name}", unit="ep", disable=not progress,
                       dynamic_ncols=True)
            for e in bar:
                s, t = int(starts[e]), int(ends[e])
                n = t - s
                defaults = _default_columns(np.arange(n), np.full(n, e), np.arange(s, t),
                                            np.full(n, task_index[texts[e]]), fps)
                cols: dict[str, Any] = {}
                for k, a in data.data.items():
                    if kinds[k] == "array":
                        cols[names[k]] = _column(a[s:t])
                    elif kinds[k] == "image":
                        cols[names[k]] = _png_column(a[s:t])
                cols.update({k: _column(v) for k, v in defaults.items()})
                table = pa.table(cols)
                ep_bytes = sum(a[s:t].nbytes for k, a in data.data.items() if kinds[k] != "video") / 2**20
                if writer is not None and file_bytes + ep_bytes > data_files_size_in_mb:
                    writer.close()
                    writer = None
                if writer is None:
                    chunk, file = divmod(n_files, chunks_size)
                    n_files += 1
                    path = tmp / DATA_PATH.format(chunk_index=chunk, file_index=file)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    writer, file_bytes = pq.ParquetWriter(path, table.schema, compression="snappy"), 0.0
                writer.write_table(table)
                file_bytes += ep_bytes
                row: dict[str, Any] = {"episode_index": e, "tasks": [texts[e]], "length": n,
                                       "data/chunk_index": chunk, "data/file_index": file,
                                       "dataset_from_index": s, "dataset_to_index": t}
                for k, w in videos.items():
                    row.update(w.append(data.data[k][s:t]))
                stats = {names[k]: _stats(a[s:t], kinds[k] != "array") for k, a in data.data.items()}
                stats.update({k: _stats(v, False) for k, v in defaults.items()})
                row.update({f"stats/{f}/{s_}": v.tolist() for f, st in stats.items() for s_, v in st.items()})
                for k in images:
                    image_stats.setdefault(names[k], []).append(stats[names[k]])
                row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
                rows.append(row)
        finally:
            if writer is not None:
                writer.close()
            for w in videos.values():
                w.close()
        for k, w in videos.items():
            features[names[k]]["info"] = w.info()
        _write_meta(tmp, data, rows, image_stats, features, names, kinds, texts, task_index, fps,
                    robot_type if robot_type is not None else lerobot_attrs.get("robot_type"),
                    chunks_size, data_files_size_in_mb, video_files_size_in_mb, bool(videos))
        _swap_in(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _write_meta(root: Path, data: EpisodeData, rows: list[dict[str, Any]],
                image_stats: Mapping[str, Sequence[Mapping[str, np.ndarray]]], features: dict[str, Any],
                names: dict[str, str], kinds: dict[str, str], texts: list[str], task_index: dict[str, int],
                fps: int, robot_type: str | None, chunks_size: int, data_mb: float, video_mb: float,
                has_videos: bool) -> None:
    """meta/: the episode table, tasks, global stats (exact for arrays, aggregated from the
    episodes' for images), info.json and difftop's own record."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = root / EPISODES_PATH.format(chunk_index=0, file_index=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path, compression="snappy")
    # tasks.parquet as LeRobot writes it: a pandas frame of task_index indexed by the task text
    pd.DataFrame({"task_index": list(task_index.values())},
                 index=pd.Index(list(task_index), name="task")).to_parquet(root / TASKS_PATH)
    n, lengths = data.n_steps, data.episode_lengths
    defaults = _default_columns(np.concatenate([np.arange(k) for k in lengths]),
                                np.repeat(np.arange(data.n_episodes), lengths), np.arange(n),
                                np.repeat([task_index[t] for t in texts], lengths), fps)
    stats = {names[k]: _stats(a, False) if kinds[k] == "array" else _aggregate(image_stats[names[k]])
             for k, a in data.data.items()}
    stats.update({k: _stats(v, False) for k, v in defaults.items()})
    (root / STATS_PATH).write_text(json.dumps({f: {s: v.tolist() for s, v in st.items()}
                                               for f, st in stats.items()}, indent=4))
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type,
        "total_episodes": data.n_episodes,
        "total_frames": n,
        "total_tasks": len(task_index),
        "chunks_size": chunks_size,
        "data_files_size_in_mb": data_mb,
        "video_files_size_in_mb": video_mb,
        "fps": fps,
        "splits": {"train": f"0:{data.n_episodes}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if has_videos else None,
        "features": features,
    }
    (root / INFO_PATH).write_text(json.dumps(info, indent=4))
    record = {
        "keys": {names[k]: {"key": k, "shape": list(a.shape[1:])} for k, a in data.data.items()},
        "episode_meta": {k: {"dtype": str(np.asarray(v).dtype), "values": np.asarray(v).tolist()}
                         for k, v in data.episode_meta.items()
                         if k != "task" and np.asarray(v).dtype.kind in "biufU"},
        "attrs": {k: v for k, v in data.attrs.items() if k != "lerobot"},
    }
    (root / DIFFTOP_PATH).write_text(json.dumps(record, indent=2, default=_json_default))
