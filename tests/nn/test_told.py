"""TOLD (TD-MPC world model): architecture, init, shapes, dtypes, pi sampling."""

import math

import pytest
import torch
from torch import nn

from difftop.nn import TOLD, PixelEncoder, orthogonal_init, q_head, truncated_normal_sample
from difftop.nn.mlp import mlp

OBS, ACT, LAT, MLP, ENC = 7, 3, 8, 16, 12


def _state_model(**kw):
    torch.manual_seed(0)
    return TOLD((OBS,), ACT, latent_dim=LAT, mlp_dim=MLP, enc_dim=ENC, **kw)


def _pixel_model():
    torch.manual_seed(0)
    return TOLD((9, 84, 84), ACT, latent_dim=LAT, mlp_dim=MLP, num_channels=4, obs_type="pixels")


def test_state_shapes_and_leading_dims():
    m = _state_model()
    obs = torch.randn(5, OBS)
    z = m.h(obs)
    a = torch.rand(5, ACT) * 2 - 1
    z1, r = m.next(z, a)
    q1, q2 = m.Q(z, a)
    assert z.shape == (5, LAT) and z1.shape == (5, LAT) and r.shape == (5, 1)
    assert q1.shape == (5, 1) and q2.shape == (5, 1)
    assert m.pi(z).shape == (5, ACT) and m.pi(z, 0.3).shape == (5, ACT)
    torch.testing.assert_close(m.dynamics(z, a), z1)
    torch.testing.assert_close(m.reward(z, a), r)
    # any leading dims, as used by the batched planner
    zz = m.h(torch.randn(2, 4, OBS))
    aa = torch.rand(2, 4, ACT)
    assert zz.shape == (2, 4, LAT)
    assert m.next(zz, aa)[1].shape == (2, 4, 1) and m.Q(zz, aa)[0].shape == (2, 4, 1)
    torch.testing.assert_close(m.dynamics(zz, aa)[1, 2], m.dynamics(zz[1, 2:3], aa[1, 2:3])[0])


def test_pixel_shapes_uint8_and_float():
    m = _pixel_model()
    frames = torch.randint(0, 256, (2, 9, 84, 84), dtype=torch.uint8)
    z = m.h(frames)
    assert z.shape == (2, LAT)
    torch.testing.assert_close(m.h(frames.float()), z)
    assert m.h(frames.unsqueeze(0)).shape == (1, 2, LAT)
    enc = m.encoder
    assert isinstance(enc, PixelEncoder)
    convs = [x for x in enc if isinstance(x, nn.Conv2d)]
    assert [(c.kernel_size[0], c.stride[0]) for c in convs] == [(7, 2), (5, 2), (3, 2), (3, 2)]
    assert convs[0].in_channels == 9 and all(c.out_channels == 4 for c in convs)
    assert enc[-1].in_features == 4 * 3 * 3  # 84 -> 39 -> 18 -> 8 -> 3
    # the /255 normalisation comes first
    torch.testing.assert_close(enc[0](torch.full((1,), 255.0)), torch.ones(1))


def test_layer_orders_are_tdmpc():
    m = _state_model()
    assert [type(x) for x in m.q_nets[0]] == [nn.Linear, nn.LayerNorm, nn.Tanh, nn.Linear, nn.ELU, nn.Linear]
    assert [type(x) for x in m.dynamics_net] == [nn.Linear, nn.ELU, nn.Linear, nn.ELU, nn.Linear]
    assert [type(x) for x in m.encoder] == [nn.Linear, nn.ELU, nn.Linear]
    assert m.q_nets[0][0].in_features == LAT + ACT and m.q_nets[0][-1].out_features == 1
    assert m.reward_net[0].in_features == LAT + ACT and m.reward_net[-1].out_features == 1
    assert m.pi_net[0].in_features == LAT and m.pi_net[-1].out_features == ACT
    assert [type(x) for x in mlp(2, (3, 4), 5, act=nn.ReLU)] == [nn.Linear, nn.ReLU] * 2 + [nn.Linear]
    assert q_head(6, 10)[1].normalized_shape == (10,)
    keys = set(m.state_dict())  # TD-MPC's parameter names: a TD-MPC state_dict loads as is
    assert {"_encoder.0.weight", "_Q1.1.weight", "_Q2.5.bias", "_pi.4.weight", "_reward.4.bias"} <= keys


def test_zero_init_reward_and_q_are_exactly_zero():
    m = _state_model()
    for head in (m.reward_net, *m.q_nets):
        assert torch.count_nonzero(head[-1].weight) == 0 and torch.count_nonzero(head[-1].bias) == 0
    z = m.h(torch.randn(6, OBS))
    a = torch.rand(6, ACT) * 2 - 1
    assert torch.equal(m.reward(z, a), torch.zeros(6, 1))
    q1, q2 = m.Q(z, a)
    assert torch.equal(q1, torch.zeros(6, 1)) and torch.equal(q2, torch.zeros(6, 1))


def test_orthogonal_init():
    m = _state_model()
    for lin in (m.dynamics_net[0], m.dynamics_net[2], m.pi_net[4], m.encoder[0], m.q_nets[0][3]):
        w = lin.weight.detach()
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        torch.testing.assert_close(gram, torch.eye(gram.shape[0]), atol=1e-5, rtol=0)
        assert torch.count_nonzero(lin.bias) == 0
    conv = _pixel_model().encoder[1]
    w = conv.weight.detach().flatten(1)  # (4, 9*7*7): orthogonal rows with the ReLU gain sqrt(2)
    torch.testing.assert_close(w @ w.T, 2.0 * torch.eye(4), atol=1e-5, rtol=0)
    lin = nn.Linear(3, 3)
    orthogonal_init(lin)
    assert torch.count_nonzero(lin.bias) == 0


def test_pi_bounds_noise_clip_and_straight_through_grad():
    m = _state_model()
    with torch.no_grad():
        m.pi_net[-1].weight.mul_(50.0)  # saturate tanh so that the clamp is active
    z = m.h(torch.randn(64, OBS))
    mu = m.pi(z)
    torch.testing.assert_close(mu, torch.tanh(m.pi_net(z)))
    assert mu.abs().max() <= 1.0
    torch.manual_seed(1)
    a = m.pi(z, 5.0)
    assert a.abs().max() <= 1.0 - 1e-6 + 1e-12
    assert ((a - mu).abs() <= 0.3 + 1e-6).all()
    assert not torch.equal(a, mu)
    noise = torch.randn(64, ACT)
    torch.testing.assert_close(m.pi(z, 0.1, noise=noise), m.pi(z, 0.1, noise=noise))
    expected = (mu + (0.1 * noise).clamp(-0.3, 0.3)).clamp(-1 + 1e-6, 1 - 1e-6)
    torch.testing.assert_close(m.pi(z, 0.1, noise=noise), expected)
    g = torch.Generator().manual_seed(3)
    g2 = torch.Generator().manual_seed(3)
    torch.testing.assert_close(m.pi(z, 0.2, generator=g), m.pi(z, 0.2, generator=g2))
    # straight-through: the clamp does not block the gradient
    x = torch.tensor([2.0], requires_grad=True)
    truncated_normal_sample(x, 1.0, noise=torch.zeros(1)).sum().backward()
    assert x.grad.item() == 1.0


def test_double_dtype():
    m = _state_model().double()
    z = m.h(torch.randn(4, OBS, dtype=torch.float64))
    a = torch.rand(4, ACT, dtype=torch.float64)
    outs = [z, *m.next(z, a), *m.Q(z, a), m.pi(z), m.pi(z, 0.5)]
    assert all(t.dtype == torch.float64 for t in outs)
    assert m.h(torch.randn(4, OBS)).dtype == torch.float64  # float32 obs is cast to the model dtype
    mp = _pixel_model().double()
    assert mp.h(torch.randint(0, 256, (1, 9, 84, 84), dtype=torch.uint8)).dtype == torch.float64


def test_track_q_grad():
    m = _state_model()
    m.track_q_grad(False)
    assert not any(p.requires_grad for p in [*m.q_nets[0].parameters(), *m.q_nets[1].parameters()])
    assert all(p.requires_grad for p in m.pi_net.parameters())
    m.track_q_grad(True)
    assert all(p.requires_grad for p in m.parameters())


def test_bad_arguments():
    with pytest.raises(ValueError):
        TOLD((OBS,), ACT, obs_type="rgb")
    with pytest.raises(ValueError):
        TOLD((9, 84, 84), ACT, obs_type="state")
    with pytest.raises(ValueError):
        TOLD((9, 20, 20), ACT, obs_type="pixels")
    assert math.isfinite(float(_state_model().h(torch.randn(1, OBS)).sum().detach()))


def test_pixel_encoder_channels_last_on_cpu_equals_the_plain_layers():
    """On CPU the encoder runs its convolutions channels-last (faster there): the same outputs and
    input gradients as the plain layer stack in the default layout, from either layout of input."""
    enc = _pixel_model().encoder
    frames = (torch.rand(6, 9, 84, 84) * 255).requires_grad_(True)
    ref = torch.nn.Sequential.forward(enc, frames)
    ref.sum().backward()
    g_ref, frames.grad = frames.grad.clone(), None
    for x in (frames, frames.contiguous(memory_format=torch.channels_last)):
        out = enc(x)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        out.sum().backward()
        torch.testing.assert_close(frames.grad, g_ref, rtol=1e-5, atol=1e-5)
        frames.grad = None
    assert torch.equal(enc(frames.detach().to(torch.uint8)), enc(frames.detach().to(torch.uint8).float()))


def test_pixel_encoder_slices_large_cpu_batches_without_changing_results():
    enc = _pixel_model().encoder
    frames = torch.rand(3, 5, 9, 84, 84) * 255
    whole = enc(frames)
    enc.cpu_chunk = 4  # 15 frames -> slices of 4, 4, 4, 3
    torch.testing.assert_close(enc(frames), whole)
    frames.requires_grad_(True)
    enc(frames).sum().backward()
    g = frames.grad.clone()
    frames.grad = None
    enc.cpu_chunk = 10**6
    enc(frames).sum().backward()
    torch.testing.assert_close(frames.grad, g)
