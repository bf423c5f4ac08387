"""``difftop data convert``: datasets between LeRobot v3.0, diffusion_policy zarr and robomimic hdf5.

Why a command: LeRobot users share v3.0 folders, ``difftop demos`` writes zarr or hdf5, robomimic
releases hdf5; each trains as it is (``difftop il data=...``), but a dataset handed to another tool
has to be in that tool's format.

The input format is read off the path (a folder with ``meta/info.json``: LeRobot; a ``.zarr``
folder or a zip: zarr; an hdf5 file: robomimic), the output's off its suffix (``.zarr`` /
``.zarr.zip``: zarr, ``.hdf5``: robomimic, no suffix: a LeRobot folder) unless ``format=`` says.
``obs_keys`` chooses observations as ``difftop il`` does (a foreign robomimic file needs them).
The dataset goes through memory (:class:`~difftop.data.EpisodeData`) and is written beside ``out``,
then moved into place, so an interrupted conversion never leaves half a dataset at ``out``.
"""

from __future__ import annotations

import os
import shutil
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from difftop.data.dataset import HDF5_SUFFIXES, load_dataset
from difftop.data.episodes import EpisodeData
from difftop.errors import UserError

__all__ = ["FORMATS", "convert", "input_format", "main", "output_format"]

FORMATS = ("lerobot", "zarr", "hdf5")
_KINDS = ("a LeRobot v3 folder (meta/info.json), a diffusion_policy .zarr folder or .zarr.zip, "
          "or a robomimic .hdf5")


def input_format(path: str | Path) -> str:
    """``lerobot``, ``zarr`` or ``hdf5`` by the layout at ``path``; UserError if none."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file or folder")
    if p.is_dir():
        if (p / "meta" / "info.json").is_file():
            return "lerobot"
        if (p / ".zgroup").is_file() or p.suffix == ".zarr":
            return "zarr"
        raise UserError(f"{p}: unknown dataset format: expected {_KINDS}")
    import h5py

    if p.suffix in HDF5_SUFFIXES or h5py.is_hdf5(p):
        return "hdf5"
    if zipfile.is_zipfile(p):
        return "zarr"
    raise UserError(f"{p}: unknown dataset format: expected {_KINDS}")


def output_format(path: str | Path, fmt: str = "auto") -> str:
    """The format to write at ``path``: ``fmt`` unless ``auto``, else by suffix (none: LeRobot)."""
    p = Path(path)
    if fmt != "auto":
        if fmt not in FORMATS:
            raise UserError(f"format must be auto or one of {', '.join(FORMATS)}, got {fmt!r}")
        return fmt
    suffix = p.suffix.lower()
    if suffix in (".zarr", ".zip"):
        return "zarr"
    if suffix in HDF5_SUFFIXES:
        return "hdf5"
    if not suffix:
        return "lerobot"
    raise UserError(f"out={p}: unknown output format {suffix!r}: name a .zarr folder, a .zarr.zip, an .hdf5 "
                    "file or a folder without suffix (LeRobot v3), or pass format=lerobot|zarr|hdf5")


def _occupied(p: Path) -> bool:
    return p.is_file() or p.is_symlink() or (p.is_dir() and any(p.iterdir()))


def convert(src: str | Path, dst: str | Path, *, obs_keys: Sequence[str] | None = None, fmt: str = "auto",
            overwrite: bool = False, fps: int | None = None, task: str | None = None, video: bool = True,
            progress: bool = False, log: Any = None) -> EpisodeData:
    """Convert the dataset at ``src`` into ``dst``; returns what was written (see the module docstring).

    ``fps``, ``task`` and ``video`` apply to a LeRobot output (:func:`~difftop.data.lerobot.save_lerobot`).
    An existing, non-empty ``dst`` is a UserError unless ``overwrite``. ``log(line)`` reports the stages.
    """
    from difftop.data.lerobot import _swap_in, load_lerobot, save_lerobot

    say = log or (lambda line: None)
    src, dst = Path(src), Path(dst)
    kind_in = input_format(src)
    kind_out = output_format(dst, fmt)
    if dst.exists() and dst.resolve() == src.resolve():
        raise UserError(f"out={dst} is the input: write the conversion elsewhere")
    if _occupied(dst) and not overwrite:
        raise UserError(f"{dst}: exists and is not empty (pass overwrite=true to replace it)")
    say(f"reading {src} ({kind_in})")
    data = (load_lerobot(src, obs_keys, progress=progress) if kind_in == "lerobot"
            else load_dataset(src, obs_keys))
    say(f"writing {dst} ({kind_out}): {data.n_episodes} episodes, {data.n_steps} steps")
    staging = dst.parent / f".{dst.name}.convert-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    target = staging / dst.name  # the same name, so suffix-driven writers (a .zip zarr) see it
    try:
        if kind_out == "lerobot":
            save_lerobot(data, target, fps=fps, task=task, video=video, progress=progress)
        elif kind_out == "zarr":
            from difftop.data.zarr_io import save_zarr

            save_zarr(data, target)
        else:
            from difftop.data.hdf5_io import save_robomimic

            save_robomimic(data, target, action_key="action")
        _swap_in(target, dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return data


def _shape(a: Any) -> str:
    return "x".join(str(s) for s in a.shape[1:]) or "scalar"


def main(cfg: Any) -> int:
    """``difftop data convert in=<path> out=<path> [obs_keys=[...]] [format=...] [overwrite=true]``."""
    from omegaconf import OmegaConf

    src, dst = cfg.get("in"), cfg.get("out")
    if not src:
        raise UserError(f"in= is required: the dataset to convert ({_KINDS})")
    if not dst:
        raise UserError("out= is required: a .zarr folder, .zarr.zip, .hdf5 file or a LeRobot folder "
                        "(no suffix)")
    obs_keys = cfg.get("obs_keys")
    if obs_keys is not None and not isinstance(obs_keys, str):
        obs_keys = [str(k) for k in OmegaConf.to_container(obs_keys)]
    progress = bool(cfg.get("progress", True)) and sys.stderr.isatty()  # in a log file: the stage lines only
    data = convert(str(src), str(dst), obs_keys=obs_keys, fmt=str(cfg.get("format", "auto")),
                   overwrite=bool(cfg.get("overwrite", False)), fps=cfg.get("fps"), task=cfg.get("task"),
                   video=bool(cfg.get("video", True)), progress=progress, log=print)
    keys = ", ".join(f"{k} ({_shape(v)} {v.dtype})" for k, v in data.data.items())
    print(f"{dst}: {data.n_episodes} episodes, {data.n_steps} steps; keys: {keys}")
    return 0
