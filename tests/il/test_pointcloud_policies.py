"""Imitation policies on point clouds (``obs=pointcloud``): the DP3 encoder, the ObsEncoder's
``point_encoder`` option, and BC / Diffusion (DP3-style) / Residual / DiffTOP + base training a few
steps through ``difftop il`` on a tiny synthetic MetaWorld-shaped dataset, one of them evaluated in the
real MetaWorld env."""

from __future__ import annotations

import csv
import math
import os

import numpy as np
import pytest
import torch

from difftop.errors import UserError
from difftop.nn.encoders import ObsEncoder, PointNetEncoder
from difftop.nn.pointcloud import DP3Encoder, make_point_encoder

os.environ.setdefault("MUJOCO_GL", "egl")

N = 512  # the MetaWorld task's cloud size, so that a trained policy can act in its env
FAST = ["steps=3", "batch_size=8", "log_every=1", "val_every=0", "eval_every=0", "eval_episodes=0",
        "threads=1", "progress=false", "tensorboard=false", "video=false", "task=metaworld-reach",
        "obs=pointcloud"]


def _small(policy: str, encoder: str = "pointnet") -> list[str]:
    enc = f"+policies.{policy}.encoder"
    args = [f"{enc}.point_encoder={encoder}", f"{enc}.point_dims=[16,16]", f"{enc}.point_dim=8"]
    return args + {
        "bc": ["policies.bc.hidden=[16]"],
        "diffusion": ["policies.diffusion.down_dims=[8,16]", "policies.diffusion.step_embed_dim=8",
                      "policies.diffusion.num_inference_steps=2"],
        "residual": ["policies.residual.hidden=[16]"],
        "difftop": [f"policies.difftop.{k}" for k in ("mlp_hidden=16", "enc_hidden=16", "fuse_hidden=16",
                                                       "latent_dim=8", "posterior_dim=4", "max_iters=10")],
    }[policy]


def test_dp3_encoder_shapes_layout_and_permutation_invariance():
    torch.manual_seed(0)
    enc = DP3Encoder(3)
    linears = [m for m in enc.point_mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(3, 64), (64, 128), (128, 256)]
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in enc.point_mlp) == 3
    assert isinstance(enc.proj[1], torch.nn.LayerNorm) and enc.out_dim == 64
    x = torch.randn(2, 50, 3)
    y = enc(x)
    assert y.shape == (2, 64)
    torch.testing.assert_close(enc(x[:, torch.randperm(50)]), y)
    assert not torch.allclose(y[0], y[1])
    assert isinstance(make_point_encoder("pointnet", 6), PointNetEncoder)
    with pytest.raises(UserError, match="point_encoder"):
        make_point_encoder("pointnet++", 3)


def test_obs_encoder_point_encoder_option_and_gradients():
    shapes = {"point_cloud": (32, 3), "agent_pos": (9,)}
    enc = ObsEncoder(shapes, kind="pointcloud", point_encoder="dp3", point_dim=16)
    assert isinstance(enc.points["point_cloud"], DP3Encoder) and enc.out_dim == 9 + 16
    obs = {"point_cloud": torch.randn(4, 2, 32, 3, requires_grad=True), "agent_pos": torch.randn(4, 2, 9)}
    out = enc(obs)
    assert out.shape == (4, 2, 25)
    out.sum().backward()
    assert obs["point_cloud"].grad.abs().sum() > 0  # features depend on the points
    assert isinstance(ObsEncoder(shapes).points["point_cloud"], PointNetEncoder)  # the default
    with pytest.raises(UserError, match="point_encoder"):
        ObsEncoder(shapes, point_encoder="nope")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """4 episodes of 12 steps: a cloud around a moving 'object' and actions pointing the hand at it."""
    from difftop.data import EpisodeData, save_zarr

    rng = np.random.default_rng(0)
    eps = []
    for _ in range(4):
        obj = rng.uniform([-0.2, 0.5, 0.0], [0.2, 0.8, 0.2], (12, 3))
        pc = (obj[:, None] + rng.normal(0, 0.03, (12, N, 3))).astype(np.float32)
        hand = rng.uniform([-0.3, 0.4, 0.05], [0.3, 0.9, 0.3], (12, 3))
        agent = np.concatenate([hand, hand + 0.01, hand - 0.01], 1).astype(np.float32)
        act = np.concatenate([np.clip((obj - hand) * 5, -1, 1), rng.uniform(-1, 1, (12, 1))], 1)
        eps.append({"point_cloud": pc, "agent_pos": agent, "action": act.astype(np.float32)})
    path = tmp_path_factory.mktemp("pc") / "pc.zarr"
    save_zarr(EpisodeData.from_episodes(eps), path)
    return path


def _il(data, out, policy, *extra):
    from difftop.cli import main

    return main(["il", f"policy={policy}", f"data={data}", f"out_dir={out}", *FAST, *extra])


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _trained(out) -> None:
    rows = _rows(out / "train.csv")
    assert len(rows) == 3 and all(math.isfinite(float(r["loss"])) and r["skipped"] == "0" for r in rows)


@pytest.fixture(scope="module")
def bc_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("bc")
    assert _il(data, out, "bc", *_small("bc"), "eval_episodes=1", "max_steps=3", "eval_batch=1") == 0
    return out


def test_bc_trains_on_point_clouds_and_acts_in_metaworld(bc_run):
    from difftop.utils.checkpoint import load_checkpoint

    _trained(bc_run)
    ev = _rows(bc_run / "eval.csv")
    assert len(ev) == 1 and float(ev[0]["mean_length"]) == 3.0  # 3 steps in the real env, no crash
    state = load_checkpoint(bc_run / "checkpoint.pt", kind="il")
    # the cloud is normalised per channel (x, y, z) over all points, not per point index
    assert state["policy"]["normalizer.fields.point_cloud.scale"].shape == (3,)
    assert any(k.startswith("encoder.points.point_cloud.") for k in state["policy"])


def test_diffusion_dp3_style_trains_on_point_clouds(data, tmp_path):
    from difftop.utils.checkpoint import load_checkpoint

    out = tmp_path / "dp3"
    assert _il(data, out, "diffusion", *_small("diffusion", "dp3")) == 0
    _trained(out)
    state = load_checkpoint(out / "checkpoint.pt", kind="il")
    assert state["spec"]["params"]["encoder"]["point_encoder"] == "dp3"
    # a DP3 encoder: LayerNorm after the projection (PointNet's projection has none)
    assert "encoder.points.point_cloud.proj.1.weight" in state["policy"]


@pytest.mark.parametrize("policy", ["residual", "difftop"])
def test_policies_on_a_point_cloud_base_train(data, bc_run, tmp_path, policy):
    out = tmp_path / policy
    extra = ["init=base"] if policy == "difftop" else []
    assert _il(data, out, policy, f"base={bc_run}", *extra, *_small(policy)) == 0
    _trained(out)
