"""Datasets for imitation learning: the zarr replay buffer, robomimic hdf5, windows, normalizers.

- :class:`EpisodeData`: episodes in memory (per-step arrays concatenated + ``episode_ends``).
- :func:`load_zarr` / :func:`save_zarr` / :class:`ZarrEpisodeWriter`: diffusion_policy's layout.
- :func:`load_robomimic` / :func:`save_robomimic`: robomimic's hdf5 layout.
- :func:`load_lerobot` / :func:`save_lerobot`: LeRobotDataset v3.0 folders (Parquet + MP4), with
  pyarrow and PyAV; ``difftop data convert`` (:mod:`difftop.data.convert`) converts between all three.
- :func:`load_dataset`: any of them, by file type, with the keys a policy trains on (``obs_keys``
  chooses and concatenates a robomimic file's observations); :func:`file_split`: the file's own
  train/valid episodes (robomimic's masks). See :mod:`difftop.data.dataset`.
- :class:`SequenceDataset`: observation-history / action-chunk windows with edge padding.
- :class:`Normalizer`: per-key min-max or mean/std normalizers kept in a policy's state_dict.

Torch is imported only by the window dataset and the normalizers, so the writers stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from difftop.data.dataset import HDF5_SUFFIXES, file_split, load_dataset, robomimic_obs_keys
from difftop.data.episodes import EpisodeData, split_episodes
from difftop.data.hdf5_io import load_robomimic, save_robomimic
from difftop.data.lerobot import is_lerobot, load_lerobot, save_lerobot
from difftop.data.zarr_io import ZarrEpisodeWriter, load_zarr, save_zarr

if TYPE_CHECKING:
    from difftop.data.normalizer import Normalizer
    from difftop.data.sequence import SequenceDataset


def __getattr__(name: str) -> Any:  # lazy torch-dependent exports
    if name == "SequenceDataset":
        from difftop.data.sequence import SequenceDataset

        return SequenceDataset
    if name == "Normalizer":
        from difftop.data.normalizer import Normalizer

        return Normalizer
    raise AttributeError(name)


__all__ = [
    "HDF5_SUFFIXES",
    "EpisodeData",
    "Normalizer",
    "SequenceDataset",
    "ZarrEpisodeWriter",
    "file_split",
    "is_lerobot",
    "load_dataset",
    "load_lerobot",
    "load_robomimic",
    "load_zarr",
    "robomimic_obs_keys",
    "save_lerobot",
    "save_robomimic",
    "save_zarr",
    "split_episodes",
]
