"""The zarr replay buffer: round trips, incremental appends, and errors on malformed files."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from difftop.data import EpisodeData, ZarrEpisodeWriter, load_dataset, load_zarr, save_zarr
from difftop.errors import UserError


def episodes(n: int = 3, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for e in range(n):
        t = 4 + 3 * e
        out.append(
            {
                "state": rng.normal(size=(t, 5)).astype(np.float32),
                "keypoint": rng.normal(size=(t, 8, 2)).astype(np.float32),
                "img": rng.integers(0, 256, size=(t, 3, 12, 12), dtype=np.uint8),
                "action": rng.uniform(0, 512, size=(t, 2)).astype(np.float32),
            }
        )
    return out


def buffer(n: int = 3) -> EpisodeData:
    return EpisodeData.from_episodes(
        episodes(n), episode_meta={"episode_seed": np.arange(n) + 10}, attrs={"task": "pusht"}
    )


def assert_same(a: EpisodeData, b: EpisodeData) -> None:
    assert sorted(a.data) == sorted(b.data)
    for k in a.data:
        assert a.data[k].dtype == b.data[k].dtype
        np.testing.assert_array_equal(a.data[k], b.data[k])
    np.testing.assert_array_equal(a.episode_ends, b.episode_ends)
    assert b.episode_ends.dtype == np.int64


@pytest.mark.parametrize("name", ["buf.zarr", "buf.zarr.zip"])
def test_round_trip(tmp_path, name):
    ep = buffer()
    path = tmp_path / name
    save_zarr(ep, path)
    back = load_zarr(path)
    assert_same(ep, back)
    np.testing.assert_array_equal(back.episode_meta["episode_seed"], [10, 11, 12])
    assert back.attrs["task"] == "pusht"
    assert back.source == str(path)
    np.testing.assert_array_equal(back.episode(1)["action"], ep.episode(1)["action"])
    assert_same(ep.select_keys(["state"]), load_dataset(path, keys=["state"]))


def test_layout_is_diffusion_policys(tmp_path):
    save_zarr(buffer(), tmp_path / "b.zarr")
    root = zarr.open_group(str(tmp_path / "b.zarr"), mode="r")
    assert root["data/img"].shape == (4 + 7 + 10, 12, 12, 3)  # channel-last on disk
    assert root["meta/episode_ends"].dtype == np.int64
    assert root["meta/episode_ends"][:].tolist() == [4, 11, 21]


def test_reads_diffusion_policy_float_images(tmp_path):
    """diffusion_policy's Push-T file stores img as float32 (N, 96, 96, 3) in [0, 255]."""
    root = zarr.open_group(str(tmp_path / "dp.zarr"), mode="w")
    img = np.random.default_rng(0).integers(0, 256, size=(5, 10, 10, 3)).astype(np.float32)
    root.create_group("data").array("img", img)
    root["data"].array("action", np.zeros((5, 2), np.float32))
    root.create_group("meta").array("episode_ends", np.array([2, 5]))
    back = load_zarr(tmp_path / "dp.zarr")
    assert back.data["img"].dtype == np.uint8 and back.data["img"].shape == (5, 3, 10, 10)
    np.testing.assert_array_equal(back.data["img"], np.moveaxis(img, -1, 1).astype(np.uint8))


def test_writer_appends_continues_and_repairs(tmp_path):
    path = tmp_path / "inc.zarr"
    eps = episodes(4)
    w = ZarrEpisodeWriter(path)
    w.append(eps[0], {"episode_seed": 5})
    w.append(eps[1], {"episode_seed": 6})
    w.commit({"next_seed": 7})
    # an interrupted third episode: per-step arrays written, episode_ends not
    for k, v in eps[2].items():
        v = np.moveaxis(v, 1, -1) if k == "img" else v
        w.data[k].append(v)
    w.meta["episode_seed"].append(np.array([7]))
    back = load_zarr(path)  # readers ignore the uncommitted steps
    assert back.n_episodes == 2 and back.n_steps == 4 + 7
    assert_same(back, EpisodeData.from_episodes(eps[:2]))
    # reopening truncates them and continues
    w2 = ZarrEpisodeWriter(path)
    assert w2.n_episodes == 2 and w2.data["state"].shape[0] == 11 and w2.meta["episode_seed"].shape[0] == 2
    assert w2.attrs["next_seed"] == 7
    w2.append(eps[3], {"episode_seed": 8})
    back = load_zarr(path)
    assert_same(back, EpisodeData.from_episodes([eps[0], eps[1], eps[3]]))
    np.testing.assert_array_equal(back.episode_meta["episode_seed"], [5, 6, 8])
    with pytest.raises(UserError, match="holds keys"):
        w2.append({"state": eps[0]["state"]})
    bad = dict(eps[0], state=np.zeros((4, 6), np.float32))
    with pytest.raises(UserError, match="shape"):
        w2.append(bad)
    with pytest.raises(UserError, match="not a zip"):
        ZarrEpisodeWriter(tmp_path / "x.zarr.zip")


def test_malformed_files(tmp_path):
    good = tmp_path / "good.zarr"
    save_zarr(buffer(), good)

    with pytest.raises(UserError, match="no such"):
        load_zarr(tmp_path / "missing.zarr")
    junk = tmp_path / "junk.zarr"
    junk.write_text("not a zarr")
    with pytest.raises(UserError, match=r"junk.zarr: not a zarr dataset"):
        load_zarr(junk)
    fake_zip = tmp_path / "fake.zarr.zip"
    fake_zip.write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(UserError, match="fake.zarr.zip"):
        load_zarr(fake_zip)
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(UserError, match=r"empty.zarr: not a zarr dataset"):
        load_zarr(tmp_path / "empty.zarr")

    root = zarr.open_group(str(tmp_path / "nometa.zarr"), mode="w")
    root.create_group("data").array("action", np.zeros((3, 2)))
    with pytest.raises(UserError, match=r"nometa.zarr: not a replay buffer: missing group\(s\) meta"):
        load_zarr(tmp_path / "nometa.zarr")
    root.create_group("meta")
    with pytest.raises(UserError, match="missing meta/episode_ends"):
        load_zarr(tmp_path / "nometa.zarr")

    with pytest.raises(UserError, match="missing data/nope; available: action, img, keypoint, state"):
        load_zarr(good, keys=["nope"])

    # episode_ends past the arrays' end (a truncated file)
    zarr.open_group(str(good), mode="a")["meta/episode_ends"][-1] = 40
    with pytest.raises(
        UserError, match=r"good.zarr: data/action has 21 steps but meta/episode_ends ends at 40"
    ):
        load_zarr(good)
    zarr.open_group(str(good), mode="a")["meta/episode_ends"][:] = [4, 3, 21]
    with pytest.raises(UserError, match="strictly increasing"):
        load_zarr(good)
    zarr.open_group(str(good), mode="a")["meta/episode_ends"][:] = [4, 11, 21]

    # a corrupt chunk
    chunk = next(p for p in (good / "data" / "img").iterdir() if not p.name.startswith("."))
    chunk.write_bytes(chunk.read_bytes()[:20])
    with pytest.raises(UserError, match=r"good.zarr: cannot read data/img"):
        load_zarr(good)
    assert load_zarr(good, keys=["state"]).n_episodes == 3  # the other keys still load


def test_in_memory_validation():
    with pytest.raises(UserError, match="has 3 steps but episode_ends ends at 4"):
        EpisodeData({"a": np.zeros(3)}, np.array([2, 4]))
    with pytest.raises(UserError, match="1-D integer"):
        EpisodeData({"a": np.zeros(3)}, np.array([1.5, 3.0]))
    with pytest.raises(UserError, match="episode metadata s has 1 entries for 2 episodes"):
        EpisodeData({"a": np.zeros(3)}, np.array([1, 3]), {"s": np.zeros(1)})
    ep = buffer()
    sub = ep.select_episodes(np.array([2, 0]))
    np.testing.assert_array_equal(sub.episode_lengths, [10, 4])
    np.testing.assert_array_equal(sub.episode(0)["state"], ep.episode(2)["state"])
    np.testing.assert_array_equal(sub.episode_meta["episode_seed"], [12, 10])


def test_deleted_chunk_is_an_error_not_zeros(tmp_path):
    """zarr reads a missing chunk file as the fill value: a deleted chunk of data/action would train
    on all-zero actions. Every array read is checked for the chunk files its shape needs."""
    good = tmp_path / "good.zarr"
    save_zarr(buffer(), good)
    (good / "data" / "action" / "0.0").unlink()
    with pytest.raises(UserError, match=r"good.zarr: data/action is missing chunk file\(s\) data/action/0.0"):
        load_zarr(good)
    with pytest.raises(UserError, match=r"good.zarr: data/action is missing"):
        load_dataset(good)  # what the trainer calls
    with pytest.raises(UserError, match=r"data/action is missing"):
        load_dataset(good, obs_keys=["state"])
    with pytest.raises(UserError, match=r"data/action is missing"):
        ZarrEpisodeWriter(good)  # nor is a damaged store continued
    assert load_zarr(good, keys=["state", "img"]).n_episodes == 3  # the intact arrays still load

    # one chunk among several, and the episode ends themselves
    root = zarr.open_group(str(tmp_path / "multi.zarr"), mode="w")
    root.create_group("data").array("action", np.arange(40.0).reshape(20, 2), chunks=(4, 2))
    root.create_group("meta").array("episode_ends", np.array([8, 20]), chunks=(1,))
    (tmp_path / "multi.zarr" / "data" / "action" / "2.0").unlink()
    with pytest.raises(UserError, match=r"multi.zarr: data/action is missing chunk file\(s\) data/action/2.0 "
                       r"\(deleted, or a partial copy\?\); zarr would read those steps as 0.0"):
        load_zarr(tmp_path / "multi.zarr")
    (tmp_path / "multi.zarr" / "meta" / "episode_ends" / "1").unlink()
    with pytest.raises(UserError, match=r"meta/episode_ends is missing chunk file\(s\) meta/episode_ends/1"):
        load_zarr(tmp_path / "multi.zarr")


def test_writer_commit_record(tmp_path):
    """Episodes and the caller's attributes are committed together; staged steps are not visible."""
    path = tmp_path / "c.zarr"
    eps = episodes(3)
    w = ZarrEpisodeWriter(path)
    w.append(eps[0], {"episode_seed": 1}, {"next_seed": 2})
    w.commit({"next_seed": 3, "attempts": 2})  # a failed attempt: attributes only
    assert w.attrs == {"next_seed": 3, "attempts": 2} and w.n_episodes == 1
    # an episode staged (arrays and episode_ends) but not committed
    for k, v in eps[1].items():
        w.data[k].append(np.moveaxis(v, 1, -1) if k == "img" else v)
    w.ends.append(np.array([w.n_steps + len(eps[1]["state"])]))
    back = load_zarr(path)
    assert back.n_episodes == 1 and "committed_episodes" not in back.attrs and back.attrs["next_seed"] == 3
    w2 = ZarrEpisodeWriter(path)
    assert w2.n_episodes == 1 and w2.ends.shape == (1,) and w2.data["state"].shape[0] == 4
    w2.append(eps[2], {"episode_seed": 5}, {"next_seed": 6})
    assert_same(load_zarr(path), EpisodeData.from_episodes([eps[0], eps[2]]))
    with pytest.raises(UserError, match=r"per-episode key\(s\) \['other'\] are new"):
        w2.append(eps[0], {"episode_seed": 7, "other": 1})
    # a record claiming more episodes than episode_ends holds is a truncated file
    zarr.open_group(str(path), mode="a").attrs["committed_episodes"] = 5
    with pytest.raises(UserError, match="5 episodes are committed but meta/episode_ends holds 2"):
        load_zarr(path)
