"""Image observations for every imitation policy: the conv encoder's crop, multi-camera fusion, every
policy (DiffTOP included) trained by ``difftop il`` on a robomimic file in the official layout with two
channel-last cameras and low-dim proprio (written with h5py, not difftop's writer) and acting from its
checkpoint, and Push-T from pixels end to end with rendered rollouts.

One-camera policy shapes are in tests/il/test_policies.py; DiffTOP's own image test in
tests/il/test_difftop_cvae.py.
"""

from __future__ import annotations

import csv

import h5py
import numpy as np
import pytest
import torch

from difftop.cli import main
from difftop.data import EpisodeData, SequenceDataset, load_dataset, save_zarr
from difftop.data.normalizer import Normalizer
from difftop.errors import UserError
from difftop.il.policies.bc import normalize_obs
from difftop.il.train import load_policy
from difftop.nn.encoders import ConvEncoder, ObsEncoder, crop_size

CAMS = ("agentview_image", "robot0_eye_in_hand_image")
LOW_DIM = {"robot0_eef_pos": 3, "robot0_gripper_qpos": 2}
KEYS = "obs_keys=[robot0_eef_pos,robot0_gripper_qpos,agentview_image,robot0_eye_in_hand_image]"
FAST = ["steps=2", "batch_size=4", "log_every=1", "val_every=2", "val_batches=1", "threads=1",
        "progress=false", "tensorboard=false", "video=false"]
SMALL = {
    "bc": ["hidden=[16]"],
    "bc_rnn": ["rnn_hidden=16", "rnn_layers=1", "num_modes=2", "obs_horizon=4", "horizon=4"],
    "diffusion": ["down_dims=[8,16]", "step_embed_dim=8", "num_inference_steps=2"],
    "ibc": ["hidden=[16]", "n_negatives=8", "dfo_samples=16"],
    "residual": ["hidden=[16]"],
    "difftop": ["mlp_hidden=16", "enc_hidden=16", "fuse_hidden=16", "latent_dim=8", "posterior_dim=4",
                "max_iters=10"],
}
TINY_ENCODER = ["image_channels=[4,8]", "num_kp=4", "image_dim=8"]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _small(policy: str) -> list[str]:
    """Tiny sizes for ``policy`` (its image encoder keeps the default crop)."""
    return [f"policies.{policy}.{a}" for a in SMALL[policy]] + [f"++policies.{policy}.encoder.{a}"
                                                                   for a in TINY_ENCODER]


# -- the encoder -----------------------------------------------------------------------------------
def test_crop_size_takes_pixels_or_a_fraction_of_each_side():
    assert crop_size(None, 96, 96) is None
    assert crop_size(0.9, 96, 96) == (86, 86) and crop_size(0.9, 84, 84) == (76, 76)  # robomimic's 76
    assert crop_size(0.875, 96, 96) == (84, 84)  # diffusion_policy's Push-T crop
    assert crop_size(20, 24, 32) == (20, 20) and crop_size((20, 30), 24, 32) == (20, 30)
    for bad, match in [(1.5, "in \\(0, 1\\]"), (0.0, "in \\(0, 1\\]"), (True, "crop must be"),
                       ("84", "crop must be"), ((25, 20), "does not fit"), (33, "does not fit")]:
        with pytest.raises(UserError, match=match):
            crop_size(bad, 24, 32)


def test_random_crop_takes_each_samples_drawn_window_and_uint8_crops_like_float():
    """The training crop is the window at the offsets it draws (top, then left, per sample), and a uint8
    image cropped before its float conversion encodes exactly as the float image cropped after it."""
    enc = ConvEncoder((3, 20, 24), channels=(4, 8), num_kp=4, out_dim=6, crop=(15, 17)).train()
    img = torch.randint(0, 256, (6, 3, 20, 24), dtype=torch.uint8)
    torch.manual_seed(3)
    crops = enc._crop(img)
    torch.manual_seed(3)
    top, left = torch.randint(0, 6, (6, 1)), torch.randint(0, 8, (6, 1))
    offsets = zip(top[:, 0].tolist(), left[:, 0].tolist())
    want = torch.stack([img[i, :, t : t + 15, u : u + 17] for i, (t, u) in enumerate(offsets)])
    assert crops.dtype == torch.uint8 and crops.is_contiguous()
    assert torch.equal(crops, want) and len({(int(t), int(u)) for t, u in zip(top, left)}) > 1
    # what the policies feed it: uint8 frames under the image normaliser stay uint8 (normalize_obs), and
    # give bit for bit what the normaliser's full-frame float conversion gave
    norm = Normalizer.fit({"img": img, "pos": torch.randn(6, 2) * 50}, mode={"img": "image"})
    obs = {"img": img, "pos": torch.randn(6, 2)}
    fed = normalize_obs(norm, obs)
    assert fed["img"] is img and torch.equal(fed["pos"], norm.normalize("pos", obs["pos"]))
    custom = Normalizer.fit({"img": img}, mode={"img": "meanstd"})  # another map is still applied
    assert torch.equal(normalize_obs(custom, {"img": img})["img"], custom.normalize("img", img))
    torch.manual_seed(5)
    from_uint8 = enc(fed["img"])
    torch.manual_seed(5)
    assert torch.equal(from_uint8, enc(norm(obs)["img"]))


def test_two_cameras_have_their_own_encoders_and_both_feed_the_features():
    """Multi-camera fusion: one conv encoder per camera key, concatenated after the low-dim state; a
    change in either camera changes the features and each camera's encoder gets gradients."""
    shapes = {"robot0_eef_pos": (3,), CAMS[0]: (3, 16, 16), CAMS[1]: (3, 16, 16)}
    torch.manual_seed(0)
    enc = ObsEncoder(shapes, "auto", image_channels=(4, 8), num_kp=4, image_dim=5, crop=0.9)
    assert enc.keys == ["robot0_eef_pos", *CAMS] and set(enc.images) == set(CAMS) and enc.out_dim == 3 + 2 * 5
    assert enc.images[CAMS[0]].crop == (14, 14)
    obs = {"robot0_eef_pos": torch.randn(2, 3, 3)} | {
        c: torch.randint(0, 256, (2, 3, 3, 16, 16), dtype=torch.uint8) for c in CAMS}
    enc.eval()
    feats = enc(obs)
    assert feats.shape == (2, 3, 13)
    torch.testing.assert_close(feats[..., :3], obs["robot0_eef_pos"])  # normalised proprio, as given
    for i, cam in enumerate(CAMS):
        other = enc(obs | {cam: 255 - obs[cam]})
        block = slice(3 + 5 * i, 8 + 5 * i)
        assert not torch.allclose(other[..., block], feats[..., block])  # its own block moves
        torch.testing.assert_close(other[..., 3 + 5 * (1 - i): 8 + 5 * (1 - i)],
                                   feats[..., 3 + 5 * (1 - i): 8 + 5 * (1 - i)])  # the other's does not
    enc.train()
    enc(obs).square().sum().backward()
    for cam in CAMS:
        assert enc.images[cam].trunk[0].weight.grad.abs().sum() > 0


# -- robomimic's official layout, two cameras ------------------------------------------------------
def write_official(path, demos: int = 4, steps: int = 16, size: int = 20) -> None:
    """A robomimic image dataset as robomimic writes it (h5py only): channel-last uint8 cameras
    ``agentview_image`` and ``robot0_eye_in_hand_image``, float64 low-dim keys and actions, masks."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["total"] = demos * steps
        data.attrs["env_args"] = '{"env_name": "Lift", "type": 1, "env_kwargs": {}}'
        for i in range(demos):
            d = data.create_group(f"demo_{i}")
            d.attrs["num_samples"] = steps
            d.create_dataset("actions", data=rng.uniform(-1, 1, (steps, 7)))
            d.create_dataset("dones", data=(np.arange(steps) == steps - 1).astype(np.int64))
            d.create_dataset("rewards", data=np.zeros(steps))
            for key, width in LOW_DIM.items():
                d.create_dataset(f"obs/{key}", data=rng.normal(size=(steps, width)))
            for cam in CAMS:
                frames = rng.integers(0, 256, (steps, size, size, 3), dtype=np.uint8)  # HxWxC, as robomimic
                d.create_dataset(f"obs/{cam}", data=frames)
        f.create_dataset("mask/train", data=np.array([f"demo_{i}".encode() for i in range(demos - 1)]))
        f.create_dataset("mask/valid", data=np.array([f"demo_{demos - 1}".encode()]))


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """The file, and a BC run on it (the base of Residual and DiffTOP)."""
    tmp = tmp_path_factory.mktemp("official")
    path = tmp / "lift_image.hdf5"
    write_official(path)
    torch.set_num_threads(1)
    assert main(["il", "policy=bc", f"data={path}", f"out_dir={tmp / 'bc'}", KEYS, "eval_episodes=0", *FAST,
                 *_small("bc")]) == 0
    return path, tmp / "bc"


@pytest.mark.parametrize("policy", ["bc", "bc_rnn", "diffusion", "ibc", "residual", "difftop"])
def test_every_policy_trains_on_two_cameras_and_proprio_and_acts(official, tmp_path, policy):
    path, bc = official
    out = bc
    if policy != "bc":
        out = tmp_path / policy
        base = [f"base={bc}"] if policy in ("residual", "difftop") else []
        assert main(["il", f"policy={policy}", f"data={path}", f"out_dir={out}", KEYS, "eval_episodes=0",
                     *FAST, *_small(policy), *base]) == 0
    with open(out / "train.csv", newline="") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    assert len(losses) == 2 and np.isfinite(losses).all()
    policy_obj, state = load_policy(out)
    meta = policy_obj.shape_meta
    assert dict(meta.obs) == {"state": (5,), CAMS[0]: (3, 20, 20), CAMS[1]: (3, 20, 20)}
    assert state["spec"]["action_frame"] == "absolute"  # recorded, so a later change of frame is caught
    prefix = "obs_encoder" if policy == "difftop" else "encoder"  # one conv encoder per camera
    assert meta.action_dim == 7 and all(f"{prefix}.images.{c}.proj.weight" in state["policy"] for c in CAMS)
    data = load_dataset(path, obs_keys=KEYS.split("=")[1].strip("[]").split(","))
    ds = SequenceDataset(data, ["state", *CAMS], "action", horizon=meta.horizon, obs_horizon=meta.obs_horizon,
                         n_action_steps=meta.n_action_steps)
    obs = ds.get_batch(np.arange(3))["obs"]
    assert obs[CAMS[1]].dtype == torch.uint8 and obs[CAMS[1]].shape == (3, meta.obs_horizon, 3, 20, 20)
    policy_obj.reset()
    act = policy_obj.predict_action(obs)
    assert act.shape == (3, meta.n_action_steps, 7) and torch.isfinite(act).all()


# -- Push-T from pixels ----------------------------------------------------------------------------
def test_pusht_from_pixels_trains_and_evaluates_on_rendered_frames(tmp_path):
    """``difftop il task=pusht obs=image``: ``img`` + ``agent_pos`` (derived from ``state``), rollouts
    rendered at the training images' size; DiffTOP on the BC base acts in them too."""
    rng = np.random.default_rng(0)
    eps = []
    for _ in range(4):
        s = rng.uniform(50, 460, (12, 5)).astype(np.float32)
        eps.append({"state": s, "img": rng.integers(0, 256, (12, 3, 24, 24), dtype=np.uint8),
                    "action": (s[:, :2] + rng.normal(0, 10, (12, 2))).astype(np.float32)})
    data = tmp_path / "pix.zarr"
    save_zarr(EpisodeData.from_episodes(eps), data)
    run = ["il", "task=pusht", "obs=image", f"data={data}", *FAST, "eval_episodes=1", "max_steps=3",
           "eval_batch=1"]
    assert main([*run, "policy=bc", f"out_dir={tmp_path / 'bc'}", *_small("bc")]) == 0
    assert main([*run, "policy=difftop", f"out_dir={tmp_path / 'dt'}", f"base={tmp_path / 'bc'}",
                 *_small("difftop")]) == 0
    for name in ("bc", "dt"):
        policy, _ = load_policy(tmp_path / name)
        assert dict(policy.shape_meta.obs) == {"img": (3, 24, 24), "agent_pos": (2,)}
        with open(tmp_path / name / "eval.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 1 and rows[0]["episodes"] == "1" and 0 <= float(rows[0]["mean_max_coverage"]) <= 1


# -- the benchmark ---------------------------------------------------------------------------------
def test_bench_il_writes_a_table_with_the_step_split_and_difftops_ratio_over_its_base(tmp_path):
    """``difftop bench il`` end to end on a tiny setting (a smoke run: no timing is asserted)."""
    tiny = ",".join(f'"{a.removeprefix("++")}"' for p in ("bc", "difftop") for a in _small(p))
    assert main(["bench", "il", "policies=[bc,difftop]", "episodes=1", "episode_steps=12", "image_size=24",
                 "rounds=1", "steps_per_round=2", "warmup=0", f"out_dir={tmp_path}",
                 f'overrides=[{tiny},"batch_size=4"]']) == 0
    with open(tmp_path / "il_image.csv", newline="") as f:
        rows = {r["policy"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"bc", "difftop"} and rows["bc"]["ratio_vs_base"] == ""
    ms = {k: float(r["ms_per_step"]) for k, r in rows.items()}
    assert float(rows["difftop"]["ratio_vs_base"]) == pytest.approx(ms["bc"] / ms["difftop"])
    assert float(rows["difftop"]["solve"]) > 0 and float(rows["bc"]["solve"]) == 0
    text = (tmp_path / "il_image.md").read_text()
    assert "pusht (image, {'img': (3, 24, 24)})" in text and "| difftop |" in text and "base_cache" in text
