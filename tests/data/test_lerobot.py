"""LeRobotDataset v3.0: round trips through `difftop data convert` (zarr and hdf5 -> LeRobot -> back),
a folder laid out by hand per the published schema (pyarrow and PyAV only, no difftop writer), the
command's one-line errors, and `difftop il data=<LeRobot folder>` training."""

from __future__ import annotations

import json
import shutil
from fractions import Fraction

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
av = pytest.importorskip("av")

from difftop.cli import main  # noqa: E402
from difftop.data import EpisodeData, file_split, load_dataset, save_robomimic, save_zarr  # noqa: E402
from difftop.data.convert import convert  # noqa: E402
from difftop.data.lerobot import load_lerobot, save_lerobot  # noqa: E402
from difftop.errors import UserError  # noqa: E402
from tests.data.test_robomimic_layout import step_values, write_robomimic  # noqa: E402

LENGTHS = (6, 9, 7)


def smooth_images(t: int, e: int, c: int = 3, h: int = 32, w: int = 32) -> np.ndarray:
    """Gradients that a lossy codec keeps within a few levels, different per step and episode."""
    y, x = np.mgrid[:h, :w]
    frames = [16 + 2 * x + 2 * y + 4 * i + 20 * ch + 6 * e for i in range(t) for ch in range(c)]
    return np.clip(np.stack(frames).reshape(t, c, h, w), 0, 255).astype(np.uint8)


def pusht_like(images: bool = True) -> EpisodeData:
    rng = np.random.default_rng(0)
    eps = []
    for e, t in enumerate(LENGTHS):
        s = rng.uniform(50, 460, (t, 5)).astype(np.float32)
        ep = {"state": s, "action": (s[:, :2] + rng.normal(0, 10, (t, 2))).astype(np.float32)}
        if images:
            ep["img"] = smooth_images(t, e)
        eps.append(ep)
    return EpisodeData.from_episodes(eps, episode_meta={"episode_seed": np.array([3, 5, 8])},
                                     attrs={"task": "pusht", "next_seed": 9})


def assert_same(a: EpisodeData, b: EpisodeData, image_tol: float = 3.0) -> None:
    assert sorted(a.data) == sorted(b.data)
    np.testing.assert_array_equal(a.episode_ends, b.episode_ends)
    for k, v in a.data.items():
        assert b.data[k].dtype == v.dtype and b.data[k].shape == v.shape, k
        if v.dtype == np.uint8 and v.ndim == 4:  # video: lossy, but every frame in its place
            err = np.abs(b.data[k].astype(np.int16) - v).reshape(len(v), -1).mean(1)
            assert err.max() <= image_tol, (k, err.max())
        else:
            np.testing.assert_array_equal(b.data[k], v)


def test_zarr_to_lerobot_to_zarr(tmp_path):
    src = tmp_path / "pusht.zarr"
    data = pusht_like()
    save_zarr(data, src)
    lr = tmp_path / "pusht_lerobot"
    convert(src, lr)
    # the published layout, many episodes per file
    info = json.loads((lr / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 10 and info["total_episodes"] == 3
    assert info["total_frames"] == sum(LENGTHS) and info["splits"] == {"train": "0:3"}
    feats = info["features"]
    assert feats["observation.state"] == {"dtype": "float32", "shape": [5], "names": None}
    assert feats["observation.images.img"]["dtype"] == "video"
    assert feats["observation.images.img"]["shape"] == [32, 32, 3]
    assert {"index", "episode_index", "frame_index", "timestamp", "task_index"} <= set(feats)
    assert (lr / "data/chunk-000/file-000.parquet").is_file() and (lr / "meta/tasks.parquet").is_file()
    assert (lr / "videos/observation.images.img/chunk-000/file-000.mp4").is_file()
    eps = pq.read_table(lr / "meta/episodes/chunk-000/file-000.parquet").to_pydict()
    assert eps["length"] == list(LENGTHS) and eps["dataset_to_index"] == np.cumsum(LENGTHS).tolist()
    assert eps["videos/observation.images.img/from_timestamp"] == pytest.approx([0, 0.6, 1.5])
    assert eps["tasks"] == [["pusht"]] * 3
    stats = json.loads((lr / "meta/stats.json").read_text())
    assert set(stats["action"]) >= {"min", "max", "mean", "std", "count"}
    assert np.shape(stats["observation.images.img"]["mean"]) == (3, 1, 1)
    frames = pq.read_table(lr / "data/chunk-000/file-000.parquet").to_pydict()
    assert frames["episode_index"][:7] == [0] * 6 + [1] and frames["timestamp"][6] == 0.0

    back = tmp_path / "back.zarr"
    convert(lr, back)
    again = load_dataset(back)
    assert_same(data, again)
    np.testing.assert_array_equal(again.episode_meta["episode_seed"], [3, 5, 8])
    assert again.attrs["next_seed"] == 9 and again.attrs["lerobot"]["fps"] == 10


def test_hdf5_to_lerobot_to_hdf5_keeps_masks(tmp_path):
    src = tmp_path / "demos.hdf5"
    data = pusht_like()
    data.episode_meta["mask/train"] = np.array([True, False, True])
    data.episode_meta["mask/valid"] = np.array([False, True, False])
    save_robomimic(data, src, action_key="action")
    lr, back = tmp_path / "lr", tmp_path / "back.hdf5"
    convert(src, lr)
    ep = load_dataset(lr)
    assert [x.tolist() for x in file_split(ep)] == [[0, 2], [1]]  # the file's own split
    convert(lr, back)
    again = load_dataset(back)
    assert_same(load_dataset(src), again)
    assert [x.tolist() for x in file_split(again)] == [[0, 2], [1]]


def test_foreign_robomimic_needs_obs_keys_and_passes_them(tmp_path):
    lift = tmp_path / "lift.hdf5"
    write_robomimic(lift)
    with pytest.raises(UserError, match="obs_keys"):
        convert(lift, tmp_path / "lr0")
    lr = tmp_path / "lr"
    convert(lift, lr, obs_keys=["robot0_eef_pos", "object", "agentview_image"], video=False)
    ep = load_dataset(lr)
    assert sorted(ep.data) == ["action", "agentview_image", "state"]
    np.testing.assert_array_equal(ep["state"][:4, :3], step_values("demo_0", "robot0_eef_pos", 4, 3))
    exact = load_dataset(lift, obs_keys=["robot0_eef_pos", "object", "agentview_image"])
    np.testing.assert_array_equal(ep["agentview_image"], exact["agentview_image"])  # PNG: lossless
    info = json.loads((lr / "meta/info.json").read_text())
    assert info["features"]["observation.images.agentview_image"]["dtype"] == "image"
    assert info["features"]["observation.state"]["shape"] == [13]
    # obs_keys on a LeRobot folder: difftop keys or LeRobot feature names
    sub = load_dataset(lr, obs_keys=["observation.images.agentview_image"])
    assert sorted(sub.data) == ["action", "agentview_image"]


def _write_video(path, frames: list[np.ndarray], fps: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps, options={"crf": "10"})
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = "yuv420p"
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _png(img_hwc: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img_hwc).save(buf, format="PNG")
    return buf.getvalue()


def color(e: int, f: int) -> tuple[int, int, int]:
    return 30 + 50 * e, 20 + 15 * f, 128


def test_folder_laid_out_by_hand_per_the_schema(tmp_path):
    """LeRobot's v3.0 schema written with pyarrow and PyAV alone: two data files, one video file
    holding episodes 1 and 0 in that order and a second holding episode 2, a camera stored as PNG
    images channel-first, a scalar reward and a text column."""
    root, fps = tmp_path / "hand", 15
    lengths = [4, 6, 5]
    feats = {
        "observation.state": {"dtype": "float32", "shape": [3], "names": ["x", "y", "z"]},
        "action": {"dtype": "float32", "shape": [2], "names": None},
        "observation.images.top": {"dtype": "video", "shape": [32, 48, 3],
                                   "names": ["height", "width", "channel"],
                                   "info": {"video.fps": fps, "video.codec": "h264"}},
        "observation.images.wrist": {"dtype": "image", "shape": [3, 8, 10],
                                     "names": ["channels", "height", "width"]},
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
        "language": {"dtype": "string", "shape": [1], "names": None},
        **{k: {"dtype": d, "shape": [1], "names": None} for k, d in
           [("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
            ("index", "int64"), ("task_index", "int64")]},
    }
    (root / "meta").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps({
        "codebase_version": "v3.0", "robot_type": "so100", "total_episodes": 3, "total_frames": sum(lengths),
        "total_tasks": 1, "chunks_size": 1000, "data_files_size_in_mb": 100, "video_files_size_in_mb": 200,
        "fps": fps, "splits": {"train": "0:3"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": feats}))
    pq.write_table(pa.table({"task_index": [0], "task": ["Push the cube."]}), root / "meta/tasks.parquet")
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).tolist()

    def rows(e: int) -> dict:
        n = lengths[e]
        wrist = [_png(np.full((8, 10, 3), (e, f, 7), np.uint8)) for f in range(n)]
        return {
            "observation.state": pa.array([[100 * e + f, f, -1.0] for f in range(n)],
                                          pa.list_(pa.float32(), 3)),
            "action": pa.array([[e, f / 10] for f in range(n)], pa.list_(pa.float32(), 2)),
            "observation.images.wrist": pa.array([{"bytes": b, "path": None} for b in wrist],
                                                 pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            "next.reward": pa.array([float(f == n - 1) for f in range(n)], pa.float32()),
            "language": pa.array(["push"] * n),
            "timestamp": pa.array([f / fps for f in range(n)], pa.float32()),
            "frame_index": pa.array(range(n), pa.int64()),
            "episode_index": pa.array([e] * n, pa.int64()),
            "index": pa.array(range(starts[e], starts[e] + n), pa.int64()),
            "task_index": pa.array([0] * n, pa.int64()),
        }

    for file, members in ((0, [0, 1]), (1, [2])):
        parts = [pa.table(rows(e)) for e in members]
        (root / "data/chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.concat_tables(parts), root / f"data/chunk-000/file-{file:03d}.parquet")
    video = root / "videos/observation.images.top/chunk-000"
    clip = {e: [np.full((32, 48, 3), color(e, f), np.uint8) for f in range(lengths[e])] for e in range(3)}
    _write_video(video / "file-000.mp4", clip[1] + clip[0], fps)  # episode 1 first
    _write_video(video / "file-001.mp4", clip[2], fps)
    episodes = {
        "episode_index": [0, 1, 2], "tasks": [["Push the cube."]] * 3, "length": lengths,
        "data/chunk_index": [0, 0, 0], "data/file_index": [0, 0, 1],
        "dataset_from_index": starts, "dataset_to_index": np.cumsum(lengths).tolist(),
        "videos/observation.images.top/chunk_index": [0, 0, 0],
        "videos/observation.images.top/file_index": [0, 0, 1],
        "videos/observation.images.top/from_timestamp": [6 / fps, 0.0, 0.0],
        "videos/observation.images.top/to_timestamp": [10 / fps, 6 / fps, 5 / fps],
        "meta/episodes/chunk_index": [0, 0, 0], "meta/episodes/file_index": [0, 0, 0],
    }
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(pa.table(episodes), root / "meta/episodes/chunk-000/file-000.parquet")

    ep = load_dataset(root)
    assert sorted(ep.data) == ["action", "next.reward", "state", "top", "wrist"]
    np.testing.assert_array_equal(ep.episode_ends, np.cumsum(lengths))
    assert ep["top"].shape == (15, 3, 32, 48) and ep["wrist"].shape == (15, 3, 8, 10)
    assert ep["next.reward"].shape == (15, 1) and ep["state"].dtype == np.float32
    assert ep.attrs["lerobot"] == {"fps": fps, "robot_type": "so100", "codebase_version": "v3.0"}
    assert ep.episode_meta["task"].tolist() == ["Push the cube."] * 3
    for e in range(3):
        steps = ep.episode(e)
        np.testing.assert_array_equal(steps["state"][:, 0], 100 * e + np.arange(lengths[e]))
        np.testing.assert_array_equal(steps["wrist"][:, 1, 0, 0], np.arange(lengths[e]))  # PNG: exact
        for f in range(lengths[e]):  # each video frame from its episode's place in its file
            np.testing.assert_allclose(steps["top"][f].reshape(3, -1).mean(1), color(e, f), atol=3)
    obs = load_dataset(root, obs_keys=["observation.state", "next.reward", "top"])
    assert obs.attrs["state_keys"] == ["state", "next.reward"] and obs["state"].shape == (15, 4)
    assert obs.attrs["obs_keys"] == ["state", "top"]
    with pytest.raises(UserError, match=r"unknown key 'cam'; available keys: .*top \(3x32x48 video\)"):
        load_dataset(root, obs_keys=["cam"])
    # a missing data file and a missing video are one error naming the file
    shutil.move(video / "file-001.mp4", tmp_path / "v.mp4")
    with pytest.raises(UserError, match=r"file-001.mp4: missing \(video\)"):
        load_dataset(root)
    (root / "data/chunk-000/file-001.parquet").unlink()
    with pytest.raises(UserError, match=r"file-001.parquet: missing"):
        load_dataset(root, obs_keys=["state"])


def test_png_images_and_errors_of_the_format(tmp_path):
    data = pusht_like()
    lr = save_lerobot(data, tmp_path / "png", video=False, fps=5)
    assert_same(data, load_lerobot(lr), image_tol=0)
    info = json.loads((lr / "meta/info.json").read_text())
    assert info["video_path"] is None and info["fps"] == 5
    # several data and video files: episodes split across them by the size limits
    multi = save_lerobot(data, tmp_path / "multi", data_files_size_in_mb=1e-4, video_files_size_in_mb=1e-6,
                         vcodec="mpeg4")  # no look-ahead: its bytes are on disk when an episode ends
    assert len(list((multi / "data").glob("*/*.parquet"))) == 3
    assert len(list((multi / "videos/observation.images.img").glob("*/*.mp4"))) == 3
    assert_same(data, load_lerobot(multi))
    info["codebase_version"] = "v2.1"
    (lr / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(UserError, match="codebase_version v2.1; difftop reads v3.0"):
        load_dataset(lr)
    eps = lr / "meta/episodes/chunk-000/file-000.parquet"
    info["codebase_version"] = "v3.0"
    (lr / "meta/info.json").write_text(json.dumps(info))
    t = pq.read_table(eps)
    pq.write_table(t.set_column(t.schema.get_field_index("length"), "length", pa.array([6, 9, 8])), eps)
    with pytest.raises(UserError, match="hold 7 frames of episode 2, meta/episodes says 8"):
        load_dataset(lr)


def test_convert_command_errors(tmp_path, capsys):
    src = tmp_path / "pusht.zarr"
    save_zarr(pusht_like(images=False), src)

    def error(*args: str) -> str:
        assert main(["data", "convert", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    err = error(f"in={tmp_path / 'nope.zarr'}", f"out={tmp_path / 'x'}")
    assert err.endswith("nope.zarr: no such file or folder")
    (tmp_path / "notes.txt").write_text("hello")
    assert "unknown dataset format" in error(f"in={tmp_path / 'notes.txt'}", f"out={tmp_path / 'x'}")
    assert "unknown output format '.csv'" in error(f"in={src}", f"out={tmp_path / 'x.csv'}")
    assert "out= is required" in error(f"in={src}")
    out = tmp_path / "lr"
    assert main(["data", "convert", f"in={src}", f"out={out}", "progress=false"]) == 0
    assert "3 episodes, 22 steps" in capsys.readouterr().out
    assert "exists and is not empty (pass overwrite=true" in error(f"in={src}", f"out={out}")
    assert main(["data", "convert", f"in={src}", f"out={out}", "overwrite=true", "fps=20"]) == 0
    assert json.loads((out / "meta/info.json").read_text())["fps"] == 20
    assert "unknown key 'nope'" in error(f"in={out}", f"out={tmp_path / 'y.zarr'}", "obs_keys=[nope]")
    assert not (tmp_path / "y.zarr").exists() and not list(tmp_path.glob(".*"))  # nothing left behind


def test_il_trains_on_a_lerobot_folder(tmp_path):
    from tests.golden.cases import IL_FAST, IL_SMALL, il_data

    lr = tmp_path / "pusht_lerobot"
    convert(il_data(tmp_path / "pusht.zarr"), lr)
    out = tmp_path / "run"
    assert main(["il", "policy=bc", f"data={lr}", f"out_dir={out}", *IL_FAST, *IL_SMALL["bc"]]) == 0
    assert (out / "checkpoint").exists() and (out / "eval.csv").is_file()
