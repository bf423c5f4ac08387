"""SequenceDataset windows against a brute-force reference (diffusion_policy's sampler, by loops)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from difftop.data import EpisodeData, split_episodes
from difftop.data.sequence import SequenceDataset, window_index
from difftop.errors import UserError

LENGTHS = [5, 1, 9, 3, 12]


def tiny() -> EpisodeData:
    """Per-step values that name their episode and step: obs = 100*episode + step."""
    eps = []
    for e, n in enumerate(LENGTHS):
        t = np.arange(n)
        eps.append(
            {
                "obs": np.stack([100 * e + t, -(100 * e + t)], 1).astype(np.float32),
                "img": np.broadcast_to((100 * e + t)[:, None, None, None] % 256, (n, 3, 6, 6)).astype(
                    np.uint8
                ),
                "act": (1000 * e + t)[:, None].astype(np.float32),
                "ep": np.full(n, e),
            }
        )
    return EpisodeData.from_episodes(eps)


def reference(
    data: EpisodeData, horizon: int, pad_before: int, pad_after: int
) -> list[dict[str, np.ndarray]]:
    """Windows as diffusion_policy's SequenceSampler builds them, one loop iteration per sample."""
    out = []
    for e in range(data.n_episodes):
        ep = data.episode(e)
        n = len(ep["act"])
        for s in range(-pad_before, n - horizon + pad_after + 1):
            w = {}
            for k, v in ep.items():
                lo, hi = max(s, 0), min(s + horizon, n)
                chunk = v[lo:hi]
                before = [chunk[:1]] * (lo - s)
                after = [chunk[-1:]] * (s + horizon - hi)
                w[k] = np.concatenate([*before, chunk, *after])
            out.append(w)
    return out


@pytest.mark.parametrize(
    "horizon,obs_horizon,n_action_steps",
    [(1, 1, None), (4, 2, None), (4, 2, 2), (16, 2, 8), (6, 3, 1), (3, 3, None)],
)
def test_windows_match_bruteforce(horizon, obs_horizon, n_action_steps):
    data = tiny()
    ds = SequenceDataset(data, ["obs", "img", "ep"], "act", horizon, obs_horizon, n_action_steps)
    ref = reference(data, horizon, ds.pad_before, ds.pad_after)
    assert len(ds) == len(ref)
    for i, r in enumerate(ref):
        got = ds[i]
        assert got["action"].shape == (horizon, 1)
        np.testing.assert_array_equal(got["action"].numpy(), r["act"])
        for k in ("obs", "img", "ep"):
            assert got["obs"][k].shape[0] == obs_horizon
            np.testing.assert_array_equal(got["obs"][k].numpy(), r[k][:obs_horizon])
    # a batch is the stack of the samples
    idx = np.arange(len(ds))[::-1]
    batch = ds.get_batch(idx)
    np.testing.assert_array_equal(batch["action"].numpy(), np.stack([r["act"] for r in ref])[idx])
    np.testing.assert_array_equal(
        batch["obs"]["img"].numpy(), np.stack([r["img"][:obs_horizon] for r in ref])[idx]
    )


def test_semantics_obs_history_and_action_chunk():
    """obs t-To+1..t and actions t-To+1..t-To+T, edges repeating the episode's first/last step."""
    data = tiny()
    ds = SequenceDataset(data, ["obs"], "act", horizon=4, obs_horizon=2)  # pad_before 1, pad_after 2
    first = ds[0]  # episode 0, anchored at t=0: obs (0, 0), actions (0, 0, 1, 2)
    np.testing.assert_array_equal(first["obs"]["obs"][:, 0].numpy(), [0, 0])
    np.testing.assert_array_equal(first["action"][:, 0].numpy(), [0, 0, 1, 2])
    rows = ds.index[ds.index[:, 1] == 0]  # episode 0 (length 5): windows start at -1 .. 3
    np.testing.assert_array_equal(rows[:, 0], [-1, 0, 1, 2, 3])
    last = ds[len(rows) - 1]  # anchored at t=4: obs (3, 4), actions (3, 4, 4, 4)
    np.testing.assert_array_equal(last["obs"]["obs"][:, 0].numpy(), [3, 4])
    np.testing.assert_array_equal(last["action"][:, 0].numpy(), [3, 4, 4, 4])
    assert first["obs"]["obs"].dtype == torch.float32


def test_no_cross_episode_leakage():
    data = tiny()
    ds = SequenceDataset(data, ["ep"], "act", horizon=16, obs_horizon=2, n_action_steps=8)
    b = ds.get_batch(np.arange(len(ds)))
    ep_obs = b["obs"]["ep"].numpy()
    ep_act = (b["action"].numpy()[..., 0] // 1000).astype(int)
    assert (ep_obs == ep_obs[:, :1]).all()
    assert (ep_act == ep_obs[:, :1]).all()
    # an episode has L - T + pad_before + pad_after + 1 = L - 7 windows: only those of 9 and 12 steps
    assert set(np.unique(ep_obs)) == {2, 4}
    assert len(ds) == (9 - 7) + (12 - 7)


def test_window_count_formula_and_episode_subset():
    ends = np.cumsum(LENGTHS)
    idx = window_index(ends, horizon=4, pad_before=1, pad_after=2)
    assert len(idx) == sum(max(n - 4 + 1 + 2 + 1, 0) for n in LENGTHS)
    sub = window_index(ends, horizon=4, pad_before=1, pad_after=2, episodes=np.array([2, 4]))
    assert set(sub[:, 1]) == {ends[1], ends[3]}  # starts of episodes 2 and 4


def test_split_by_episode():
    ds = SequenceDataset(tiny(), ["obs"], "act", horizon=2, obs_horizon=1)
    tr, va = ds.split(0.4, seed=3)
    assert set(tr.episodes).isdisjoint(va.episodes)
    assert sorted([*tr.episodes, *va.episodes]) == list(range(len(LENGTHS)))
    assert len(va.episodes) == 2
    tr2, va2 = ds.split(0.4, seed=3)
    np.testing.assert_array_equal(va.episodes, va2.episodes)
    assert len(tr) + len(va) == len(ds)
    splits = {tuple(split_episodes(50, 0.2, s)[1]) for s in range(5)}
    assert len(splits) > 1  # the seed matters
    assert len(split_episodes(1, 0.5)[1]) == 0 and len(split_episodes(3, 0.01)[1]) == 1
    # the steps of the chosen episodes (for fitting normalizers)
    steps = tr.steps()
    assert set(np.unique(tr.data["ep"][steps])) == set(tr.episodes)


def test_bad_arguments():
    data = tiny()
    with pytest.raises(UserError, match="obs_horizon"):
        SequenceDataset(data, ["obs"], "act", horizon=2, obs_horizon=3)
    with pytest.raises(UserError, match="no key 'nope'"):
        SequenceDataset(data, ["nope"], "act", horizon=2)
    with pytest.raises(UserError, match="n_action_steps"):
        SequenceDataset(data, ["obs"], "act", horizon=4, obs_horizon=2, n_action_steps=4)
