"""Fewer points per cloud before the point encoder (``ObsEncoder(num_points=...)``) and the CPU preset's
point-cloud section: the prefix of a stored cloud is its farthest-point subset, ``random`` draws a
subset per cloud while training only, and every policy compared gets the same point settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from difftop.envs.pointcloud import farthest_point_sample
from difftop.errors import UserError
from difftop.nn.encoders import ObsEncoder
from difftop.nn.pointcloud import make_point_encoder, max_pool_points, subsample_points


def test_prefix_of_a_stored_cloud_is_its_farthest_point_subset():
    # why `prefix` is a farthest-point subset: the envs store clouds in farthest-point selection order
    pts = np.random.default_rng(0).normal(size=(600, 3)).astype(np.float32)
    stored = farthest_point_sample(pts, 64, seed=3)
    for n in (8, 16, 40):
        np.testing.assert_array_equal(stored[:n], farthest_point_sample(pts, n, seed=3))


@pytest.mark.parametrize("kind", ["pointnet", "dp3"])
def test_max_pool_matches_amax_in_value_and_parameter_gradients(kind):
    # the pure-speed max-pool: same features and parameter gradients as amax, duplicate points included
    torch.manual_seed(0)
    x = torch.randn(4, 40, 3)
    x[:, 20:30] = x[:, :10]  # tied points, as a padded farthest-point sample has
    enc = make_point_encoder(kind, 3, (16, 32), 8)
    grads = []
    for pool in (max_pool_points, lambda h: h.amax(-2)):
        enc.zero_grad()
        y = enc.proj(pool(enc.point_mlp(x)))
        y.square().sum().backward()
        grads.append((y.detach(), [p.grad.clone() for p in enc.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b)


def test_subsample_points_prefix_random_and_errors():
    torch.manual_seed(0)
    x = torch.randn(5, 2, 32, 6)
    assert subsample_points(x, None) is x and subsample_points(x, 32, "random", True) is x
    torch.testing.assert_close(subsample_points(x, 8), x[..., :8, :])
    torch.testing.assert_close(subsample_points(x, 8, "random", training=False), x[..., :8, :])
    y = subsample_points(x, 8, "random", training=True)
    assert y.shape == (5, 2, 8, 6)
    # each kept point is one of its own cloud's, each once, in stored order; clouds get different subsets
    match = (y.unsqueeze(-2) == x.unsqueeze(-3)).all(-1)  # (5, 2, 8, 32)
    assert (match.sum(-1) == 1).all()
    pos = match.float().argmax(-1)
    assert (pos.diff(dim=-1) > 0).all()
    assert len({tuple(p.tolist()) for p in pos.reshape(-1, 8)}) > 1
    with pytest.raises(UserError, match="num_points"):
        subsample_points(x, 33)
    with pytest.raises(UserError, match="point_sample"):
        subsample_points(x, 8, "fps")


@pytest.mark.parametrize("kind", ["pointnet", "dp3"])
def test_obs_encoder_num_points_uses_only_the_kept_points(kind):
    torch.manual_seed(0)
    shapes = {"point_cloud": (32, 3), "agent_pos": (4,)}
    enc = ObsEncoder(shapes, kind="pointcloud", point_encoder=kind, point_dims=(8, 8), point_dim=8,
                     num_points=12)
    obs = {"point_cloud": torch.randn(3, 2, 32, 3, requires_grad=True), "agent_pos": torch.randn(3, 2, 4)}
    out = enc(obs)
    assert out.shape == (3, 2, 4 + 8)
    kept = enc.points["point_cloud"](obs["point_cloud"][:, :, :12].reshape(6, 12, 3)).reshape(3, 2, 8)
    torch.testing.assert_close(out[..., 4:], kept)  # all 3 x 2 clouds in one call, on their first 12 points
    out.sum().backward()
    assert obs["point_cloud"].grad[:, :, 12:].abs().sum() == 0 and obs["point_cloud"].grad.abs().sum() > 0
    with pytest.raises(UserError, match="num_points"):
        ObsEncoder(shapes, kind="pointcloud", num_points=64)
    with pytest.raises(UserError, match="point_sample"):
        ObsEncoder(shapes, kind="pointcloud", point_sample="fps")


def test_cpu_preset_gives_every_policy_the_same_point_section_and_paper_keeps_defaults():
    from difftop.bench.il import il_config

    cpu, paper = il_config("cpu"), il_config("paper")
    point_keys = ("num_points", "point_sample", "point_dims", "point_dim", "point_encoder")
    sections = {p: {k: cpu.policies[p].encoder.get(k) for k in point_keys}
                for p in ("bc", "diffusion", "residual", "difftop")}
    first = next(iter(sections.values()))
    assert first["num_points"] is not None and all(s == first for s in sections.values())
    # the image part of the preset is untouched, and the paper preset keeps every point default
    assert list(cpu.policies.bc.encoder.image_channels) == [16, 32, 64]
    assert all(paper.policies[p].encoder.get("num_points") is None for p in sections)
