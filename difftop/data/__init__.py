"""Datasets for imitation learning: the zarr replay buffer, robomimic hdf5, windows, normalizers.

- :class:`EpisodeData`: episodes in memory (per-step arrays concatenated + ``episode_ends``).
- :func:`load_zarr` / :func:`save_zarr` / :class:`ZarrEpisodeWriter`: diffusion_policy's layout.
- :func:`load_robomimic` / :func:`save_robomimic`: robomimic's hdf5 layout.
- :func:`load_dataset`: either, by file type.
- :class:`SequenceDataset`: observation-history / action-chunk windows with edge padding.
- :class:`Normalizer`: per-key min-max or mean/std normalizers kept in a policy's state_dict.

Torch is imported only by the window dataset and the normalizers, so the writers stay light.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from difftop.data.episodes import EpisodeData, split_episodes
from difftop.data.hdf5_io import load_robomimic, save_robomimic
from difftop.data.zarr_io import ZarrEpisodeWriter, load_zarr, save_zarr

if TYPE_CHECKING:
    from difftop.data.normalizer import Normalizer
    from difftop.data.sequence import SequenceDataset

HDF5_SUFFIXES = (".hdf5", ".h5", ".he5")


def load_dataset(path: str | Path, keys: Any = None) -> EpisodeData:
    """Read a zarr replay buffer (directory or ``.zarr.zip``) or a robomimic hdf5 file."""
    from difftop.errors import UserError

    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such dataset")
    if p.suffix in HDF5_SUFFIXES:
        return load_robomimic(p, keys)
    if p.is_file():
        import zipfile

        import h5py

        if h5py.is_hdf5(p):
            return load_robomimic(p, keys)
        if not zipfile.is_zipfile(p):
            raise UserError(f"{p}: not a dataset: neither a robomimic hdf5 file nor a zarr replay buffer")
    return load_zarr(p, keys)


def __getattr__(name: str) -> Any:  # lazy torch-dependent exports
    if name == "SequenceDataset":
        from difftop.data.sequence import SequenceDataset

        return SequenceDataset
    if name == "Normalizer":
        from difftop.data.normalizer import Normalizer

        return Normalizer
    raise AttributeError(name)


__all__ = [
    "EpisodeData",
    "Normalizer",
    "SequenceDataset",
    "ZarrEpisodeWriter",
    "load_dataset",
    "load_robomimic",
    "load_zarr",
    "save_robomimic",
    "save_zarr",
    "split_episodes",
]
