"""The one MLP builder and the one weight-EMA update shared by the RL and IL code."""

import copy

import pytest
import torch
from torch import nn

from difftop.errors import UserError
from difftop.nn import TOLD, ema_update_
from difftop.nn.mlp import activation, mlp


def test_mlp_layer_order_options_and_keys():
    assert [type(x) for x in mlp(3, (4, 5), 2, "elu")] == [nn.Linear, nn.ELU, nn.Linear, nn.ELU, nn.Linear]
    drop = mlp(3, (4,), 2, nn.ReLU, dropout=0.1)
    assert [type(x) for x in drop] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    trunk = mlp(3, (4, 6), None, "relu", norm=nn.LayerNorm)  # no last Linear: a feature trunk
    assert [type(x) for x in trunk] == [nn.Linear, nn.LayerNorm, nn.ReLU] * 2
    assert trunk[3].in_features == 4 and trunk[4].normalized_shape == (6,)
    assert [type(x) for x in mlp(3, (), 2)] == [nn.Linear]
    assert set(mlp(3, (4,), 2).state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    shared = nn.ELU()
    assert activation(shared) is shared and isinstance(activation("mish"), nn.Mish)
    with pytest.raises(UserError, match="unknown activation 'swish'"):
        mlp(3, (4,), 2, "swish")
    with pytest.raises(TypeError, match="sequence of widths"):
        mlp(3, 4, 2)


def test_mlp_draws_the_default_init_in_layer_order():
    """Same seed, same numbers as the layers built by hand: swapping a hand-written stack for the
    builder leaves every parameter initialisation (and the RNG state after it) unchanged."""
    torch.manual_seed(0)
    built = mlp(5, (7, 3), 2, "relu")
    after_built = torch.rand(1)
    torch.manual_seed(0)
    hand = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3), nn.ReLU(), nn.Linear(3, 2))
    assert torch.equal(after_built, torch.rand(1))
    for k, v in hand.state_dict().items():
        assert torch.equal(built.state_dict()[k], v), k


def test_told_parts_are_public_views_of_the_tdmpc_modules():
    m = TOLD((5,), 2, latent_dim=4, mlp_dim=8, enc_dim=6)
    assert m.encoder is m._encoder and m.dynamics_net is m._dynamics and m.reward_net is m._reward
    assert m.pi_net is m._pi and m.q_nets == (m._Q1, m._Q2)
    z, a = torch.randn(3, 4), torch.rand(3, 2)
    torch.testing.assert_close(m.reward(z, a), m.reward_net(torch.cat([z, a], -1)))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.frozen = nn.Linear(4, 2)
        self.register_buffer("stat", torch.zeros(2))


def test_ema_update_lerps_trained_parameters_copies_buffers_and_skips_frozen_ones():
    torch.manual_seed(0)
    src = _Net()
    src.frozen.requires_grad_(False)
    tgt = copy.deepcopy(src).requires_grad_(False)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p))
        src.stat.fill_(3.0)
    old = {k: v.clone() for k, v in tgt.state_dict().items()}
    ema_update_(tgt, src, 0.25)
    for name in ("body.weight", "body.bias"):  # target + tau * (source - target), as per-tensor lerp_
        want = old[name].lerp(src.state_dict()[name], 0.25)
        assert torch.equal(tgt.state_dict()[name], want), name
    assert torch.equal(tgt.frozen.weight, old["frozen.weight"])  # frozen in the source: left alone
    assert torch.equal(tgt.stat, src.stat)  # buffers: copied
    ema_update_(tgt, src, 1.0)
    assert torch.equal(tgt.body.weight, src.body.weight)


def test_ema_update_rejects_networks_of_different_structure():
    with pytest.raises(ValueError):
        ema_update_(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), 0.1)
