"""robomimic's hdf5 layout is trainable: `load_dataset(path, obs_keys)` on a file written by hand with
h5py as robomimic writes it, difftop's own files without obs_keys, the file's train/valid masks, and
the errors that name what is available."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from difftop.data import (
    EpisodeData,
    SequenceDataset,
    file_split,
    load_dataset,
    robomimic_obs_keys,
    save_robomimic,
)
from difftop.errors import UserError

LOW_DIM = {"robot0_eef_pos": 3, "robot0_gripper_qpos": 2, "object": 10}
NAMES = ["demo_0", "demo_1", "demo_2", "demo_10"]  # robomimic's numbering: demo_10 after demo_2
LENGTHS = {"demo_0": 4, "demo_1": 3, "demo_2": 6, "demo_10": 5}


def step_values(name: str, key: str, t: int, width: int) -> np.ndarray:
    """Values that tell demo, key and step apart."""
    i = int(name.split("_")[1])
    return (1000 * i + 100 * list(LOW_DIM).index(key) + 10 * np.arange(t)[:, None]
            + np.arange(width)[None, :]).astype(np.float64)


def image(name: str, t: int) -> np.ndarray:
    rng = np.random.default_rng(int(name.split("_")[1]))
    return rng.integers(0, 256, size=(t, 16, 16, 3), dtype=np.uint8)


def write_robomimic(path, masks: bool = True) -> None:
    """A file as robomimic writes it (h5py only, no difftop code)."""
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["total"] = sum(LENGTHS.values())
        data.attrs["env_args"] = json.dumps(
            {"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 20, "has_renderer": False}}
        )
        for name in ["demo_10", "demo_2", "demo_0", "demo_1"]:  # creation order is not demo order
            t = LENGTHS[name]
            d = data.create_group(name)
            d.attrs["num_samples"] = t
            d.attrs["model_file"] = "<mujoco model='lift'/>"
            i = int(name.split("_")[1])
            d.create_dataset("actions", data=np.full((t, 7), i, np.float64) + np.arange(t)[:, None] / 10)
            d.create_dataset("states", data=np.zeros((t, 32)))
            d.create_dataset("rewards", data=(np.arange(t) == t - 1).astype(np.float64))
            d.create_dataset("dones", data=(np.arange(t) == t - 1).astype(np.int64))
            for grp in ("obs", "next_obs"):
                for key, width in LOW_DIM.items():
                    d.create_dataset(f"{grp}/{key}", data=step_values(name, key, t, width))
                d.create_dataset(f"{grp}/agentview_image", data=image(name, t), compression="gzip")
                d.create_dataset(f"{grp}/eye_in_hand_image", data=np.moveaxis(image(name, t), -1, 1))  # CxHxW
        if masks:
            f.create_dataset("mask/train", data=np.array([b"demo_0", b"demo_2", b"demo_10"]))
            f.create_dataset("mask/valid", data=np.array([b"demo_1"]))


@pytest.fixture
def lift(tmp_path):
    path = tmp_path / "lift_ph_low_dim.hdf5"
    write_robomimic(path)
    return path


def test_obs_keys_concatenated_in_order_images_channel_first(lift):
    keys = ["robot0_eef_pos", "robot0_gripper_qpos", "object", "agentview_image"]
    ep = load_dataset(lift, obs_keys=keys)
    assert sorted(ep.data) == ["action", "agentview_image", "state"]
    assert ep.attrs["obs_keys"] == ["state", "agentview_image"]
    assert ep.attrs["state_keys"] == ["robot0_eef_pos", "robot0_gripper_qpos", "object"]
    np.testing.assert_array_equal(ep.episode_lengths, [LENGTHS[n] for n in NAMES])
    n = sum(LENGTHS.values())
    assert ep.data["state"].shape == (n, 15) and ep.data["state"].dtype == np.float32
    for e, name in enumerate(NAMES):
        t = LENGTHS[name]
        want = np.concatenate([step_values(name, k, t, w) for k, w in LOW_DIM.items()], axis=1)
        np.testing.assert_array_equal(ep.episode(e)["state"], want.astype(np.float32))
        np.testing.assert_array_equal(ep.episode(e)["agentview_image"], np.moveaxis(image(name, t), -1, 1))
        want_action = int(name[5:]) + np.arange(t) / 10
        np.testing.assert_allclose(ep.episode(e)["action"][:, 0], want_action, rtol=1e-6)
    assert ep.data["agentview_image"].shape == (n, 3, 16, 16) and ep.data["agentview_image"].dtype == np.uint8
    assert ep.data["action"].shape == (n, 7) and ep.data["action"].dtype == np.float32

    # another order gives another concatenation; obs/ prefixes and CxHxW images are accepted
    other = load_dataset(lift, obs_keys=["obs/object", "robot0_eef_pos", "eye_in_hand_image"])
    assert sorted(other.data) == ["action", "eye_in_hand_image", "state"]
    first = other.episode(0)["state"]
    np.testing.assert_array_equal(first[:, :10], step_values("demo_0", "object", 4, 10).astype(np.float32))
    eef = step_values("demo_0", "robot0_eef_pos", 4, 3).astype(np.float32)
    np.testing.assert_array_equal(first[:, 10:], eef)
    np.testing.assert_array_equal(other.data["eye_in_hand_image"], ep.data["agentview_image"])

    # images only: no state; the trainer's window dataset takes the result as it is
    only = load_dataset(lift, obs_keys=["agentview_image"])
    assert sorted(only.data) == ["action", "agentview_image"] and only.attrs["state_keys"] == []
    ds = SequenceDataset(ep, ["state", "agentview_image"], "action", horizon=4, obs_horizon=2,
                         n_action_steps=2)
    item = ds[0]
    assert item["obs"]["state"].shape == (2, 15) and item["obs"]["agentview_image"].shape == (2, 3, 16, 16)


def test_masks_give_the_files_split(lift, tmp_path):
    ep = load_dataset(lift, obs_keys=["object"])
    train, valid = file_split(ep)
    np.testing.assert_array_equal(train, [0, 2, 3])  # demo_0, demo_2, demo_10
    np.testing.assert_array_equal(valid, [1])  # demo_1
    np.testing.assert_array_equal(ep.episode_meta["demo_index"], [0, 1, 2, 10])
    assert ep.select_episodes(valid).n_steps == LENGTHS["demo_1"]
    assert ep.attrs["env_args"]["env_name"] == "Lift"

    no_masks = tmp_path / "no_masks.hdf5"
    write_robomimic(no_masks, masks=False)
    assert file_split(load_dataset(no_masks, obs_keys=["object"])) is None


def test_errors_list_the_available_obs_keys(lift):
    listing = ("robot0_eef_pos (3), robot0_gripper_qpos (2), object (10), agentview_image (16x16x3 uint8), "
               "eye_in_hand_image (3x16x16 uint8)")
    assert robomimic_obs_keys(lift)["agentview_image"] == ((16, 16, 3), "uint8")
    with pytest.raises(UserError) as e:
        load_dataset(lift)
    msg = str(e.value)
    assert "not written by difftop" in msg and "obs_keys=[...]" in msg and "lift_ph_low_dim.hdf5" in msg
    assert sorted(msg.split("available obs keys: ")[1].split(", ")) == sorted(listing.split(", "))
    with pytest.raises(UserError, match=r"unknown obs key\(s\) \['nope', 'obs/gone'\]; available obs keys: "):
        load_dataset(lift, obs_keys=["object", "nope", "obs/gone"])
    with pytest.raises(UserError, match="non-empty list"):
        load_dataset(lift, obs_keys="object")
    with pytest.raises(UserError, match="non-empty list"):
        load_dataset(lift, obs_keys=[])
    with pytest.raises(UserError, match="duplicates"):
        load_dataset(lift, obs_keys=["object", "object"])
    with h5py.File(lift, "a") as f:
        del f["data/demo_2/obs/object"]
    with pytest.raises(UserError, match=r"lift_ph_low_dim.hdf5: data/demo_2 has no obs/object"):
        load_dataset(lift, obs_keys=["object"])


def pusht_like(n: int = 3) -> EpisodeData:
    rng = np.random.default_rng(1)
    eps = []
    for e in range(n):
        t = 5 + e
        eps.append({
            "state": rng.normal(size=(t, 5)).astype(np.float32),
            "keypoint": rng.normal(size=(t, 8, 2)).astype(np.float32),
            "img": rng.integers(0, 256, size=(t, 3, 12, 12), dtype=np.uint8),
            "action": rng.uniform(0, 512, size=(t, 2)).astype(np.float32),
        })
    return EpisodeData.from_episodes(
        eps,
        episode_meta={"episode_seed": np.array([4, 7, 9]), "episode_coverage": np.array([0.96, 0.97, 0.99])},
        attrs={"task": "pusht", "next_seed": 10, "attempts": 8, "expert": {"candidates": 64}},
    )


def test_difftops_own_file_round_trips_without_obs_keys(tmp_path):
    ep = pusht_like()
    path = tmp_path / "pusht.hdf5"
    save_robomimic(ep, path, action_key="action", env_args={"env_name": "pusht"})
    back = load_dataset(path)  # no obs_keys: the keys difftop wrote, as difftop expects them
    assert sorted(back.data) == ["action", "img", "keypoint", "state"]
    for k in ep.data:
        assert back.data[k].dtype == ep.data[k].dtype
        np.testing.assert_array_equal(back.data[k], ep.data[k])
    np.testing.assert_array_equal(back.episode_ends, ep.episode_ends)
    for k in ep.episode_meta:
        assert back.episode_meta[k].dtype == ep.episode_meta[k].dtype
        np.testing.assert_array_equal(back.episode_meta[k], ep.episode_meta[k])
    assert {k: back.attrs[k] for k in ep.attrs} == ep.attrs
    with h5py.File(path, "r") as f:  # and on disk it is robomimic's layout
        assert f["data/demo_1/obs/img"].shape == (6, 12, 12, 3) and f["data/demo_1/actions"].shape == (6, 2)
        assert f["data/demo_2"].attrs["num_samples"] == 7 and f["data"].attrs["total"] == 18
        assert json.loads(f["data"].attrs["env_args"]) == {"env_name": "pusht"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pusht.hdf5"]  # written through a temporary file

    # obs_keys on difftop's file follow the same rule as on any robomimic file
    chosen = load_dataset(path, obs_keys=["state", "img"])
    np.testing.assert_array_equal(chosen.data["state"], ep.data["state"])
    np.testing.assert_array_equal(chosen.data["img"], ep.data["img"])


def test_unmarked_file_of_the_old_writer_needs_obs_keys(tmp_path):
    """A file difftop wrote before it marked its files: obs_keys=[state] makes it trainable."""
    ep = pusht_like()
    path = tmp_path / "old.hdf5"
    save_robomimic(ep, path, action_key="action")
    with h5py.File(path, "a") as f:
        del f["data"].attrs["difftop"]
    with pytest.raises(UserError, match=r"available obs keys: .*state \(5\)"):
        load_dataset(path)
    back = load_dataset(path, obs_keys=["state"])
    np.testing.assert_array_equal(back.data["state"], ep.data["state"])
    np.testing.assert_array_equal(back.data["action"], ep.data["action"])


def test_zarr_obs_keys_follow_the_same_rule(tmp_path):
    from difftop.data import save_zarr

    ep = pusht_like()
    save_zarr(ep, tmp_path / "p.zarr")
    got = load_dataset(tmp_path / "p.zarr", obs_keys=["keypoint", "state", "img"])
    assert sorted(got.data) == ["action", "img", "state"]
    np.testing.assert_array_equal(got.data["state"][:, :16], ep.data["keypoint"].reshape(-1, 16))
    np.testing.assert_array_equal(got.data["state"][:, 16:], ep.data["state"])
    np.testing.assert_array_equal(got.data["img"], ep.data["img"])
    with pytest.raises(UserError, match="missing data/nope; available: action, img, keypoint, state"):
        load_dataset(tmp_path / "p.zarr", obs_keys=["nope"])
    assert sorted(load_dataset(tmp_path / "p.zarr").data) == ["action", "img", "keypoint", "state"]
