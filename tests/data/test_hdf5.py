"""robomimic hdf5: round trips, the official files' layout, and errors on malformed files."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from difftop.data import EpisodeData, load_dataset, load_robomimic, save_robomimic
from difftop.errors import UserError


def robomimic_like(n: int = 3) -> EpisodeData:
    rng = np.random.default_rng(0)
    eps = []
    for e in range(n):
        t = 3 + 2 * e
        eps.append(
            {
                "actions": rng.uniform(-1, 1, size=(t, 7)),
                "states": rng.normal(size=(t, 32)),
                "rewards": np.zeros(t),
                "dones": (np.arange(t) == t - 1).astype(np.int64),
                "obs/robot0_eef_pos": rng.normal(size=(t, 3)).astype(np.float32),
                "obs/agentview_image": rng.integers(0, 256, size=(t, 3, 16, 16), dtype=np.uint8),
            }
        )
    return EpisodeData.from_episodes(
        eps,
        episode_meta={
            "mask/train": np.array([True, True, False]),
            "mask/valid": np.array([False, False, True]),
        },
        attrs={"env_args": {"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 20}}},
    )


def test_round_trip(tmp_path):
    ep = robomimic_like()
    path = tmp_path / "demo.hdf5"
    save_robomimic(ep, path)
    back = load_robomimic(path)
    assert sorted(back.data) == sorted(ep.data)
    for k in ep.data:
        np.testing.assert_array_equal(back.data[k], ep.data[k])
    np.testing.assert_array_equal(back.episode_ends, ep.episode_ends)
    np.testing.assert_array_equal(back.episode_meta["mask/train"], [True, True, False])
    np.testing.assert_array_equal(back.episode_meta["mask/valid"], [False, False, True])
    assert back.attrs["env_args"]["env_name"] == "Lift" and back.attrs["total"] == ep.n_steps
    with h5py.File(path, "r") as f:  # robomimic's own conventions on disk
        assert f["data/demo_1"].attrs["num_samples"] == 5
        assert f["data/demo_0/obs/agentview_image"].shape == (3, 16, 16, 3)
        assert f["mask/valid"][()].tolist() == [b"demo_2"]
        assert json.loads(f["data"].attrs["env_args"])["env_kwargs"]["control_freq"] == 20
    assert load_dataset(path).n_episodes == 3


def test_pusht_keys_written_under_obs(tmp_path):
    ep = EpisodeData.from_episodes(
        [{"state": np.ones((4, 5), np.float32), "action": np.zeros((4, 2), np.float32)}] * 2
    )
    path = tmp_path / "pusht.hdf5"
    save_robomimic(ep, path, action_key="action", env_args={"env_name": "PushT"})
    back = load_robomimic(path)
    assert sorted(back.data) == ["actions", "dones", "obs/state", "rewards"]
    np.testing.assert_array_equal(back.data["dones"], [0, 0, 0, 1] * 2)
    with pytest.raises(UserError, match="no action key 'act'"):
        save_robomimic(ep, path, action_key="act")


def write_official(path, lengths=(4, 2, 3, 5)) -> None:
    """A file laid out like robomimic's released datasets (demo_10 after demo_2 when numbered)."""
    names = ["demo_0", "demo_1", "demo_10", "demo_2"][: len(lengths)]
    with h5py.File(path, "w") as f:
        g = f.create_group("data")
        g.attrs["total"] = sum(lengths)
        g.attrs["env_args"] = json.dumps({"env_name": "Square", "type": 1, "env_kwargs": {}})
        for name, t in zip(names, lengths):
            d = g.create_group(name)
            d.attrs["num_samples"] = t
            d.attrs["model_file"] = "<mujoco/>"
            i = int(name.split("_")[1])
            d["actions"] = np.full((t, 7), i, np.float64)
            d["states"] = np.zeros((t, 45))
            d["rewards"] = np.zeros(t)
            d["dones"] = np.zeros(t, np.int64)
            for grp in ("obs", "next_obs"):
                d[f"{grp}/agentview_image"] = np.full((t, 84, 84, 3), i, np.uint8)
                d[f"{grp}/robot0_eef_pos"] = np.zeros((t, 3))
        f["mask/train"] = np.array([b"demo_0", b"demo_10"])
        f["mask/valid"] = np.array([b"demo_1", b"demo_2"])


def test_reads_official_layout(tmp_path):
    path = tmp_path / "square_ph.hdf5"
    write_official(path)
    ep = load_robomimic(path)
    np.testing.assert_array_equal(ep.episode_meta["demo_index"], [0, 1, 2, 10])  # numeric order
    np.testing.assert_array_equal(ep.episode_lengths, [4, 2, 5, 3])
    np.testing.assert_array_equal(ep.data["actions"][ep.episode_starts, 0], [0, 1, 2, 10])
    assert ep.data["obs/agentview_image"].shape == (14, 3, 84, 84)
    assert "next_obs/agentview_image" not in ep.data
    np.testing.assert_array_equal(ep.episode_meta["mask/train"], [True, False, False, True])
    assert ep.attrs["env_args"]["env_name"] == "Square"
    with_next = load_robomimic(path, next_obs=True)
    assert "next_obs/robot0_eef_pos" in with_next.data
    only = load_robomimic(path, keys=["actions", "obs/robot0_eef_pos"])
    assert sorted(only.data) == ["actions", "obs/robot0_eef_pos"]


def test_malformed_files(tmp_path):
    with pytest.raises(UserError, match="no such"):
        load_robomimic(tmp_path / "none.hdf5")
    junk = tmp_path / "junk.hdf5"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match=r"junk.hdf5: not an hdf5 file"):
        load_robomimic(junk)
    with pytest.raises(UserError, match=r"junk.bin: not a dataset: neither a robomimic hdf5 file nor a zarr"):
        load_dataset(_copy(junk, tmp_path / "junk.bin"))

    p = tmp_path / "nodata.hdf5"
    with h5py.File(p, "w") as f:
        f.create_group("other")
    with pytest.raises(UserError, match=r"nodata.hdf5: not a robomimic dataset: missing group data/"):
        load_robomimic(p)
    with h5py.File(p, "a") as f:
        f.create_group("data")
    with pytest.raises(UserError, match="no demos under data/"):
        load_robomimic(p)

    p = tmp_path / "bad.hdf5"
    write_official(p)
    with h5py.File(p, "a") as f:
        del f["data/demo_2/actions"]
    with pytest.raises(UserError, match=r"bad.hdf5: data/demo_2 has no actions"):
        load_robomimic(p)

    p = tmp_path / "short.hdf5"
    write_official(p)
    with h5py.File(p, "a") as f:
        del f["data/demo_1/obs/robot0_eef_pos"]
        f["data/demo_1/obs/robot0_eef_pos"] = np.zeros((1, 3))  # truncated: 1 of 2 steps
    with pytest.raises(
        UserError, match=r"data/demo_1/obs/robot0_eef_pos has shape \(1, 3\), expected 2 steps"
    ):
        load_robomimic(p)

    p = tmp_path / "shape.hdf5"
    write_official(p)
    with h5py.File(p, "a") as f:
        del f["data/demo_1/states"]
        f["data/demo_1/states"] = np.zeros((2, 44))
    with pytest.raises(UserError, match=r"data/demo_1/states has step shape \(44,\)"):
        load_robomimic(p)

    p = tmp_path / "total.hdf5"
    write_official(p)
    with h5py.File(p, "a") as f:
        f["data"].attrs["total"] = 99
    with pytest.raises(UserError, match="total'] is 99 but the demos hold 14"):
        load_robomimic(p)


def _copy(src, dst):
    dst.write_bytes(src.read_bytes())
    return dst
