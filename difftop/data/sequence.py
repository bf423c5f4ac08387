"""Windows of observation history and action chunks, as diffusion_policy samples them.

A sample anchored at step ``t`` of an episode holds the observations ``t-To+1 .. t`` (``To`` =
``obs_horizon``) and the actions ``t-To+1 .. t-To+T`` (``T`` = ``horizon``): one window of ``T``
steps starting at ``s = t-To+1``, of which the observations use the first ``To``. Windows start
at ``s = -pad_before .. L - T + pad_after`` within an episode of length ``L``; steps outside
the episode repeat its first or last step, so a window never reads another episode.
Defaults as diffusion_policy: ``pad_before = To - 1``, ``pad_after = Ta - 1`` with ``Ta`` =
``n_action_steps`` (the actions executed per prediction; default ``T - To + 1``).

Every window is a ``(T,)`` vector of step indices ``clip(s + arange(T), start, end - 1)``, so
fetching one sample or a batch is one fancy index per key.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from difftop.data.episodes import EpisodeData, _ranges, split_episodes
from difftop.errors import UserError


def window_index(
    episode_ends: np.ndarray,
    horizon: int,
    pad_before: int,
    pad_after: int,
    episodes: np.ndarray | None = None,
) -> np.ndarray:
    """``(W, 3)`` int64 rows (first step of the window, episode start, episode end - 1).

    Vectorised over episodes; ``episodes`` (indices) restricts to some of them. An episode
    shorter than ``horizon - pad_before - pad_after`` yields no window.
    """
    ends = np.asarray(episode_ends, dtype=np.int64)
    starts = np.concatenate([[0], ends[:-1]])
    if episodes is not None:
        starts, ends = starts[episodes], ends[episodes]
    counts = np.maximum(ends - starts - horizon + pad_before + pad_after + 1, 0)
    first = _ranges(starts - pad_before, counts)
    return np.stack([first, np.repeat(starts, counts), np.repeat(ends - 1, counts)], axis=1)


class SequenceDataset(torch.utils.data.Dataset):
    """``{"obs": {key: (To, ...)}, "action": (T, A)}`` windows over the chosen episodes.

    Observations keep their stored dtype (images stay uint8 ``(To, C, H, W)``; normalise them
    in the policy); everything else is converted with :func:`torch.from_numpy`.
    """

    def __init__(
        self,
        data: EpisodeData,
        obs_keys: Sequence[str],
        action_key: str,
        horizon: int,
        obs_horizon: int = 1,
        n_action_steps: int | None = None,
        pad_before: int | None = None,
        pad_after: int | None = None,
        episodes: np.ndarray | Sequence[int] | None = None,
    ) -> None:
        if obs_horizon < 1 or horizon < obs_horizon:
            raise UserError(
                f"need 1 <= obs_horizon <= horizon, got obs_horizon={obs_horizon}, horizon={horizon}"
            )
        ta = horizon - obs_horizon + 1 if n_action_steps is None else int(n_action_steps)
        if not 1 <= ta <= horizon - obs_horizon + 1:
            raise UserError(f"n_action_steps must be in [1, horizon - obs_horizon + 1], got {ta}")
        self.data = data
        self.obs_keys = list(obs_keys)
        self.action_key = action_key
        for k in [*self.obs_keys, action_key]:
            data[k]  # raises a UserError naming the file when the key is missing
        self.horizon, self.obs_horizon, self.n_action_steps = int(horizon), int(obs_horizon), ta
        self.pad_before = obs_horizon - 1 if pad_before is None else int(pad_before)
        self.pad_after = ta - 1 if pad_after is None else int(pad_after)
        if self.pad_before < 0 or self.pad_after < 0:
            raise UserError("pad_before and pad_after must be >= 0")
        if episodes is None:
            self.episodes = np.arange(data.n_episodes)
        else:
            e = np.asarray(episodes)
            self.episodes = np.flatnonzero(e) if e.dtype == bool else e.astype(np.int64)
        self.index = window_index(
            data.episode_ends, self.horizon, self.pad_before, self.pad_after, self.episodes
        )
        self._offsets = np.arange(self.horizon)

    def __len__(self) -> int:
        return len(self.index)

    def step_indices(self, i: np.ndarray | int) -> np.ndarray:
        """The ``(..., T)`` step indices of windows ``i`` (edges repeated by clipping)."""
        rows = self.index[i]
        steps = rows[..., :1] + self._offsets
        return np.clip(steps, rows[..., 1:2], rows[..., 2:3])

    def get_batch(self, i: np.ndarray | Sequence[int] | int) -> dict:
        """Samples ``i`` stacked (a leading batch axis when ``i`` is an array)."""
        steps = self.step_indices(np.asarray(i))
        obs_steps = steps[..., : self.obs_horizon]
        obs = {k: torch.from_numpy(np.ascontiguousarray(self.data.data[k][obs_steps])) for k in self.obs_keys}
        action = torch.from_numpy(np.ascontiguousarray(self.data.data[self.action_key][steps]))
        return {"obs": obs, "action": action}

    def __getitem__(self, i: int) -> dict:
        return self.get_batch(int(i))

    def sample(self, batch_size: int, generator: np.random.Generator) -> dict:
        """A random batch (with replacement), without DataLoader overhead."""
        return self.get_batch(generator.integers(0, len(self), size=batch_size))

    def steps(self) -> np.ndarray:
        """Indices of every step of the chosen episodes (e.g. to fit normalizers on them)."""
        return _ranges(self.data.episode_starts[self.episodes], self.data.episode_lengths[self.episodes])

    def split(self, val_ratio: float, seed: int = 0) -> tuple[SequenceDataset, SequenceDataset]:
        """(train, val) datasets over a random split of this dataset's episodes."""
        tr, va = split_episodes(len(self.episodes), val_ratio, seed)
        kw = dict(
            obs_keys=self.obs_keys,
            action_key=self.action_key,
            horizon=self.horizon,
            obs_horizon=self.obs_horizon,
            n_action_steps=self.n_action_steps,
            pad_before=self.pad_before,
            pad_after=self.pad_after,
        )
        return (
            SequenceDataset(self.data, episodes=self.episodes[tr], **kw),
            SequenceDataset(self.data, episodes=self.episodes[va], **kw),
        )
