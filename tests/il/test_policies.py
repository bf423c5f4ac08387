"""Baseline imitation policies (BC, BC-RNN, Diffusion, IBC, Residual) and the shared encoders.

Everything runs on tiny networks and synthetic batches built in memory: the actions are a
fixed function of the observation, offset to ~200 raw units so that a policy that forgot to
(un)normalise is caught.
"""

from __future__ import annotations

import dataclasses
import importlib

import pytest
import torch

from difftop.data.normalizer import Normalizer
from difftop.errors import UserError
from difftop.il.policies.base import Policy, ShapeMeta
from difftop.il.policies.bc import BCPolicy
from difftop.il.policies.bc_rnn import BCRNNPolicy, gmm_log_prob
from difftop.il.policies.diffusion import DiffusionPolicy
from difftop.il.policies.ibc import IBCPolicy, dfo_minimize
from difftop.il.policies.residual import ResidualPolicy
from difftop.nn.encoders import ConvEncoder, ObsEncoder, PointNetEncoder

torch.set_num_threads(1)

B, M, TO, T, TA = 16, 2, 2, 4, 2
ENC = dict(image_channels=(8, 16), num_kp=4, image_dim=8)
NAMES = ["bc", "bc_rnn", "diffusion", "ibc", "residual"]
W = torch.tensor([[1.0, -0.5], [0.3, 0.8], [-0.7, 0.2], [0.5, 0.5], [0.1, -0.9]])


def _shape_meta(name: str, kind: str = "state") -> ShapeMeta:
    obs = {"state": (5,)} if kind == "state" else {"agent_pos": (2,), "image": (3, 16, 16)}
    if name == "bc_rnn":  # robomimic's layout: a sequence of (obs, action) pairs, one action per step
        return ShapeMeta(obs=obs, action_dim=M, obs_horizon=T, horizon=T, n_action_steps=1)
    return ShapeMeta(obs=obs, action_dim=M, obs_horizon=TO, horizon=T, n_action_steps=TA)


def _data(sm: ShapeMeta, seed: int = 0, b: int = B) -> tuple[dict, Normalizer]:
    """A raw batch whose action at chunk step t is a fixed function of observation min(t, To-1)."""
    g = torch.Generator().manual_seed(seed)
    to, t = sm.obs_horizon, sm.horizon
    state = torch.rand(b, to, 5, generator=g) * 2 - 1
    if "state" in sm.obs:
        obs = {"state": state}
    else:
        img = (torch.rand(b, to, 3, 16, 16, generator=g) * 255).to(torch.uint8)
        obs = {"agent_pos": state[..., :2], "image": img}
    idx = torch.arange(t).clamp(max=to - 1)
    action = 200 + 40 * torch.tanh(state[:, idx] @ W)  # (b, T, M), raw units ~[160, 240]
    data = {k: v.flatten(0, 1) for k, v in obs.items()} | {"action": action.flatten(0, 1)}
    norm = Normalizer.fit(data, mode={"image": "image"})
    return {"obs": obs, "action": action}, norm


class _Constant(Policy):
    """A fixed raw action chunk: a stand-in initialiser/base whose output is known."""

    def __init__(self, sm: ShapeMeta, value: torch.Tensor):
        super().__init__(sm)
        self.register_buffer("value", value)

    @torch.no_grad()
    def predict_action(self, obs):
        b = next(iter(obs.values())).shape[0]
        return self.value.expand(b, self.shape_meta.n_action_steps, -1).clone()


def _build(name: str, sm: ShapeMeta, norm: Normalizer, seed: int = 0, **kw) -> Policy:
    torch.manual_seed(seed)
    if name == "bc":
        p = BCPolicy(sm, hidden=(64,), encoder=ENC, **kw)
    elif name == "bc_rnn":
        p = BCRNNPolicy(sm, rnn_hidden=32, rnn_layers=1, num_modes=3, encoder=ENC, **kw)
    elif name == "diffusion":
        p = DiffusionPolicy(
            sm, down_dims=(16, 32), step_embed_dim=16, num_inference_steps=5, encoder=ENC, **kw
        )
    elif name == "ibc":
        p = IBCPolicy(sm, hidden=(64, 64), n_negatives=32, dfo_samples=64, encoder=ENC, **kw)
    else:
        base = BCPolicy(sm, hidden=(16,), encoder=ENC)
        base.set_normalizer(norm)
        p = ResidualPolicy(sm, base=base, hidden=(64,), encoder=ENC, **kw)
    p.set_normalizer(norm)
    return p


def _loss(p: Policy, batch: dict) -> float:
    torch.manual_seed(123)  # the same noise / timesteps / negatives for every evaluation
    with torch.no_grad():
        return p.compute_loss(batch)[0].item()


def _train(p: Policy, batch: dict, steps: int, lr: float = 3e-3) -> None:
    p.train()
    opt = torch.optim.Adam([q for q in p.parameters() if q.requires_grad], lr=lr)
    for _ in range(steps):
        loss, info = p.compute_loss(batch)
        assert torch.isfinite(loss) and all(isinstance(v, float) for v in info.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    p.eval()


def _act(p: Policy, obs: dict, seed: int = 0) -> torch.Tensor:
    if isinstance(p, (DiffusionPolicy, IBCPolicy)):
        return p.predict_action(obs, generator=torch.Generator().manual_seed(seed))
    return p.predict_action(obs)


@pytest.mark.parametrize("name", NAMES)
def test_loss_decreases_on_a_fixed_batch(name):
    sm = _shape_meta(name)
    batch, norm = _data(sm)
    p = _build(name, sm, norm)
    before = _loss(p, batch)
    _train(p, batch, 50)
    after = _loss(p, batch)
    if name == "bc_rnn":  # a negative log-likelihood: compare differences, not ratios (measured -2.0)
        assert after < before - 1.0, (before, after)
    else:  # measured ratios: bc, residual ~0.02, ibc ~0.2, diffusion ~0.6 (a noisy target)
        assert after < {"diffusion": 0.8, "ibc": 0.4}.get(name, 0.1) * before, (before, after)
    if name in ("bc", "residual"):  # deterministic regressors: raw-unit error falls too
        target = batch["action"][:, TO - 1 : TO - 1 + TA]
        fresh = _build(name, sm, norm)
        err0 = (fresh.predict_action(batch["obs"]) - target).abs().mean()
        assert (p.predict_action(batch["obs"]) - target).abs().mean() < 0.5 * err0


@pytest.mark.parametrize("kind", ["state", "image"])
@pytest.mark.parametrize("name", NAMES)
def test_predict_action_shapes_in_raw_units(name, kind):
    sm = _shape_meta(name, kind)
    batch, norm = _data(sm, b=4)
    p = _build(name, sm, norm)
    _train(p, batch, 2)
    a = _act(p, batch["obs"])
    assert a.shape == (4, sm.n_action_steps, M)
    assert torch.isfinite(a).all()
    # normalised outputs are O(1); raw ones sit around the demonstrations' ~[160, 240]
    assert a.min() > 100 and a.max() < 300, a
    # a longer history than To is cut to the last To steps
    longer = {k: torch.cat([v[:, :1], v], 1) for k, v in batch["obs"].items()}
    p.reset()
    a_long = _act(p, longer)
    p.reset()
    torch.testing.assert_close(a_long, _act(p, batch["obs"]))


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_restores_the_policy_and_its_normalizer(name):
    sm = _shape_meta(name)
    batch, norm = _data(sm)
    p = _build(name, sm, norm)
    _train(p, batch, 3)
    sd = p.state_dict()
    assert "normalizer.fields.action.scale" in sd and "normalizer.fields.state.offset" in sd
    fresh = _build(name, sm, Normalizer(), seed=1)  # other weights, no normalizer fitted
    fresh.load_state_dict(sd)
    fresh.eval()
    p.reset(), fresh.reset()
    torch.testing.assert_close(_act(fresh, batch["obs"]), _act(p, batch["obs"]))
    if name == "residual":
        assert any(k.startswith("base.normalizer.") for k in sd) and any(
            k.startswith("base.head.") for k in sd
        )


def test_unfitted_normalizer_is_a_clear_error():
    sm = _shape_meta("bc")
    batch, _ = _data(sm)
    p = BCPolicy(sm, hidden=(8,))
    with pytest.raises(KeyError, match="no normalizer for"):
        p.predict_action(batch["obs"])


def test_bc_rnn_keeps_its_state_across_calls_and_reset_clears_it():
    sm = _shape_meta("bc_rnn")
    batch, norm = _data(sm, b=4)
    p = _build("bc_rnn", sm, norm, rnn_horizon=3)
    p.eval()
    obs = {"state": batch["obs"]["state"][:, -1:]}
    a1, a2 = p.predict_action(obs), p.predict_action(obs)
    assert not torch.allclose(a1, a2)  # same input, carried state: a different output
    a3 = p.predict_action(obs)
    assert p.predict_action(obs).equal(a1)  # re-zeroed after rnn_horizon=3 calls, as robomimic
    p.reset()
    assert p.predict_action(obs).equal(a1) and p.predict_action(obs).equal(a2)
    # the stateless variant over a history equals stepping through it from a zero state
    hist = {"state": torch.cat([obs["state"]] * 3, 1)}
    torch.testing.assert_close(p.predict_action_stateless(hist), a3)
    # a batch of another size restarts the state rather than failing
    p.predict_action({"state": obs["state"][:2]})


def test_bc_rnn_gmm_log_prob_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    logits, means = torch.randn(6, 3, generator=g), torch.randn(6, 3, 2, generator=g)
    stds, x = torch.rand(6, 3, 2, generator=g) + 0.1, torch.randn(6, 2, generator=g)
    D = torch.distributions
    ref = D.MixtureSameFamily(D.Categorical(logits=logits), D.Independent(D.Normal(means, stds), 1))
    torch.testing.assert_close(gmm_log_prob(logits, means, stds, x), ref.log_prob(x))


def test_bc_rnn_sampling_and_config_errors():
    sm = _shape_meta("bc_rnn")
    batch, norm = _data(sm, b=4)
    p = _build("bc_rnn", sm, norm)
    s1 = p.predict_action_stateless(batch["obs"], sample=True, generator=torch.Generator().manual_seed(0))
    s2 = p.predict_action_stateless(batch["obs"], sample=True, generator=torch.Generator().manual_seed(0))
    assert s1.equal(s2) and not s1.equal(p.predict_action_stateless(batch["obs"]))
    with pytest.raises(UserError, match="n_action_steps=1"):
        BCRNNPolicy(_shape_meta("bc"))


def test_residual_trains_only_the_delta():
    sm = _shape_meta("residual")
    batch, norm = _data(sm)
    p = _build("residual", sm, norm)
    base_before = {k: v.clone() for k, v in p.base.state_dict().items()}
    # the zero-initialised delta makes the untrained residual policy its base
    torch.testing.assert_close(p.predict_action(batch["obs"]), p.base.predict_action(batch["obs"]))
    _train(p, batch, 5)
    p.train()
    assert not p.base.training  # the base stays in eval mode
    for k, v in p.base.state_dict().items():
        assert v.equal(base_before[k]), k
    assert all(not q.requires_grad and q.grad is None for q in p.base.parameters())
    assert not torch.allclose(p.predict_action(batch["obs"]), p.base.predict_action(batch["obs"]))


def test_residual_rejects_a_base_with_a_longer_history():
    sm = _shape_meta("bc")
    base = BCPolicy(
        ShapeMeta(obs=sm.obs, action_dim=M, obs_horizon=3, horizon=4, n_action_steps=2), hidden=(8,)
    )
    with pytest.raises(UserError, match="obs_horizon"):
        ResidualPolicy(sm, base=base)


def test_dfo_finds_the_minimum_of_a_known_energy():
    c = torch.tensor([[0.3, -0.5, 0.7], [-0.8, 0.1, 0.0]])  # one target per batch row

    def energy(a):  # (B, N, 3) -> (B, N)
        return 20 * (a - c[:, None]).square().sum(-1)

    g = torch.Generator().manual_seed(0)
    samples = torch.rand(2, 256, 3, generator=g) * 2 - 1
    best = dfo_minimize(energy, samples, -1.0, 1.0, iters=6, noise_scale=0.33, noise_shrink=0.5, generator=g)
    assert best.shape == (2, 3)
    assert (best - c).abs().max() < 0.05, best
    # the same generator seed gives the same answer
    g2 = torch.Generator().manual_seed(0)
    s2 = torch.rand(2, 256, 3, generator=g2) * 2 - 1
    assert dfo_minimize(energy, s2, -1.0, 1.0, iters=6, generator=g2).equal(best)


def test_ibc_with_an_init_policy_searches_around_its_action():
    sm = _shape_meta("ibc")
    batch, norm = _data(sm, b=4)
    init = _Constant(sm, norm.unnormalize("action", torch.tensor([0.3, -0.4])))  # inside the box
    p = _build("ibc", sm, norm, init_policy=init, init_noise=0.01)
    assert all(not q.requires_grad for q in p.init_policy.parameters())
    a = p.predict_action(batch["obs"], generator=torch.Generator().manual_seed(0))
    scale = norm["action"].scale
    assert ((a - init.value) * scale).abs().max() < 0.1  # within a few init_noise of the seed action
    plain = _build("ibc", sm, norm)  # uniform initial samples land anywhere in the box
    assert ((plain.predict_action(batch["obs"]) - init.value) * scale).abs().max() > 0.1


class _Chunked(Policy):
    """A base acting in chunks of 4 whose k-th query returns the chunk [k, k + 0.1, k + 0.2, k + 0.3]
    (the first action coordinate; raw units) and counts its queries."""

    def __init__(self, sm: ShapeMeta, norm: Normalizer):
        super().__init__(dataclasses.replace(sm, horizon=4, n_action_steps=4))
        self.set_normalizer(norm)
        self.calls = 0

    @torch.no_grad()
    def predict_action(self, obs):
        b = next(iter(obs.values())).shape[0]
        self.calls += 1
        first = self.calls + 0.1 * torch.arange(4.0)
        raw = torch.stack([first, torch.zeros(4)], -1)  # (4, m) in normalised units
        return self.normalizer.unnormalize("action", raw).expand(b, 4, M).clone()


@pytest.mark.parametrize("follow", [True, False])
def test_ibc_follows_a_chunked_initialiser_once_per_chunk(follow):
    sm = _shape_meta("ibc")
    sm = dataclasses.replace(sm, horizon=sm.obs_horizon, n_action_steps=1)
    batch, norm = _data(sm, b=3)
    base = _Chunked(sm, norm)
    p = _build("ibc", sm, norm, init_policy=base, init_noise=0.0, follow_base_chunks=follow)
    p.low, p.high = -100.0, 100.0  # no clipping: with zero noise the DFO returns the base's action
    p.reset()
    got = [norm.normalize("action", _act(p, batch["obs"]))[0, 0, 0].item() for _ in range(6)]
    if follow:  # one query per 4 steps; each step starts from the chunk's next action
        assert base.calls == 2
        assert got == pytest.approx([1.0, 1.1, 1.2, 1.3, 2.0, 2.1], abs=1e-5)
    else:  # the first action of a fresh chunk every step
        assert base.calls == 6
        assert got == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], abs=1e-5)
    p.reset()  # a new episode starts a new chunk
    _act(p, batch["obs"])
    assert base.calls == (3 if follow else 7)
    _act(p, {k: v[:2] for k, v in batch["obs"].items()})  # fewer environments: a new chunk
    assert base.calls == (4 if follow else 8)


def test_diffusion_sampling_is_deterministic_given_a_generator():
    sm = _shape_meta("diffusion")
    batch, norm = _data(sm, b=4)
    p = _build("diffusion", sm, norm)
    _train(p, batch, 2)

    def gen(s):
        return torch.Generator().manual_seed(s)

    a = p.predict_action(batch["obs"], generator=gen(7))
    assert a.equal(p.predict_action(batch["obs"], generator=gen(7)))
    assert not a.equal(p.predict_action(batch["obs"], generator=gen(8)))
    chunk = p.sample_chunk(batch["obs"], generator=gen(7))
    assert chunk.shape == (4, T, M) and a.equal(chunk[:, TO - 1 : TO - 1 + TA])


@pytest.mark.parametrize("horizon", [3, 5])
def test_diffusion_unet_pads_a_horizon_that_does_not_halve(horizon):
    sm = ShapeMeta(obs={"state": (5,)}, action_dim=M, obs_horizon=1, horizon=horizon, n_action_steps=2)
    batch, norm = _data(sm, b=3)
    p = _build("diffusion", sm, norm, sampler="ddpm")
    loss, _ = p.compute_loss(batch)
    loss.backward()
    assert p.predict_action(batch["obs"], generator=torch.Generator().manual_seed(0)).shape == (3, 2, M)


def test_bad_horizons_and_options_are_user_errors():
    with pytest.raises(UserError, match="horizon"):
        BCPolicy(ShapeMeta(obs={"s": (3,)}, action_dim=2, obs_horizon=2, horizon=2, n_action_steps=2))
    with pytest.raises(UserError, match="sampler"):
        DiffusionPolicy(_shape_meta("diffusion"), sampler="euler")
    with pytest.raises(UserError, match="obs_encoder"):
        BCPolicy(_shape_meta("bc"), obs_encoder="image")  # no image key in a state shape_meta


def test_registry_finds_every_policy_module_and_its_yaml():
    """The names come from the modules' ``@register_policy`` (read without importing them); each one
    registers exactly that name when imported, and each has its YAML in configs/il_policy/."""
    from difftop.cli import CONFIG_DIR
    from difftop.il.policies import POLICIES, policy_class
    from difftop.il.policies.registry import declared_policies

    assert set(POLICIES) >= {*NAMES, "difftop"} and set(declared_policies()) == {*NAMES, "difftop"}
    for name, path in declared_policies().items():
        module, cls = path.split(":")
        assert policy_class(name) is getattr(importlib.import_module(module), cls)
        assert issubclass(policy_class(name), Policy)
    assert {p.stem for p in (CONFIG_DIR / "il_policy").glob("*.yaml")} == set(declared_policies())
    with pytest.raises(UserError, match="unknown policy 'nope'; choose one of: bc, bc_rnn"):
        policy_class("nope")


TOY_MODULE = '''
"""A toy policy in its own module: the constant mean action of the training data, plus a bias."""
import torch
from torch import nn

from difftop.il.policies.base import Policy
from difftop.il.policies.registry import register_policy


@register_policy("toy_mean")
class ToyMeanPolicy(Policy):
    def __init__(self, shape_meta, bias: float = 0.0):
        super().__init__(shape_meta)
        self.mean = nn.Parameter(torch.zeros(shape_meta.n_action_steps, shape_meta.action_dim))
        self.bias = float(bias)

    def compute_loss(self, batch):
        to, ta = self.shape_meta.obs_horizon, self.shape_meta.n_action_steps
        target = self.normalizer.normalize("action", batch["action"][:, to - 1 : to - 1 + ta])
        loss = (self.mean - target).pow(2).mean()
        return loss, {"mse": loss.item()}

    @torch.no_grad()
    def predict_action(self, obs):
        b = next(iter(obs.values())).shape[0]
        return self.normalizer.unnormalize("action", self.mean.expand(b, -1, -1) + self.bias)
'''
TOY_YAML = """\
# ToyMeanPolicy (toy_policy.ToyMeanPolicy): the training data's mean action chunk.
obs_horizon: 2
n_action_steps: 2
horizon: null
bias: 0.5
"""


def test_a_new_policy_is_one_module_and_one_yaml(tmp_path, monkeypatch):
    """No registry to edit: the module's decorator names the policy and its YAML holds its
    hyper-parameters; the policy then trains, is saved as a spec + state_dict and rebuilt."""
    from omegaconf import OmegaConf

    from difftop.il.policies import POLICIES, build_policy, policy_from_spec, policy_from_state, registry

    monkeypatch.setattr(registry, "_registered", dict(registry._registered))  # leave no trace behind
    (tmp_path / "toy_policy.py").write_text(TOY_MODULE)
    (tmp_path / "toy_mean.yaml").write_text(TOY_YAML)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "toy_mean" not in POLICIES
    importlib.import_module("toy_policy")
    assert POLICIES["toy_mean"] == "toy_policy:ToyMeanPolicy"

    params = OmegaConf.to_container(OmegaConf.load(tmp_path / "toy_mean.yaml"))
    sm = _shape_meta("toy")
    batch, norm = _data(sm)
    policy, spec = build_policy("toy_mean", {"state": (5,)}, M, params)
    assert policy.shape_meta.horizon == TO - 1 + TA and policy.bias == 0.5
    policy.set_normalizer(norm)
    _train(policy, batch, 100, lr=0.05)
    target = norm.normalize("action", batch["action"][:, TO - 1 : TO - 1 + TA]).mean(0)
    torch.testing.assert_close(policy.mean.detach(), target, atol=1e-3, rtol=0)
    rebuilt = policy_from_spec(spec)
    rebuilt.load_state_dict(policy.state_dict())
    torch.testing.assert_close(rebuilt.predict_action(batch["obs"]), policy.predict_action(batch["obs"]))
    loaded = policy_from_state({"spec": spec, "policy": policy.state_dict()})
    torch.testing.assert_close(loaded.predict_action(batch["obs"]), policy.predict_action(batch["obs"]))
    with pytest.raises(ValueError, match="already registered by toy_policy:ToyMeanPolicy"):
        registry.register_policy("toy_mean")(type("Other", (Policy,), {}))


def test_conv_encoder_uint8_crop_and_shapes():
    torch.manual_seed(0)
    enc = ConvEncoder((3, 20, 20), channels=(8, 16), num_kp=4, out_dim=6, crop=(16, 16))
    img = (torch.rand(5, 3, 20, 20) * 255).to(torch.uint8)
    enc.eval()
    out = enc(img)
    assert out.shape == (5, 6)
    torch.testing.assert_close(out, enc(img.float() * (2 / 255) - 1))  # uint8 is mapped to [-1, 1]
    torch.testing.assert_close(enc._crop(img.float()), img.float()[..., 2:18, 2:18])  # centre crop in eval
    enc.train()
    crops = enc._crop(img.float())
    assert crops.shape == (5, 3, 16, 16)
    # every random crop is a window of its own image
    for i in range(5):
        wins = img[i].float().unfold(1, 16, 1).unfold(2, 16, 1)  # (3, 5, 5, 16, 16)
        assert (wins == crops[i][:, None, None]).flatten(3).all(-1).all(0).any()


def test_pointnet_is_permutation_invariant():
    torch.manual_seed(0)
    enc = PointNetEncoder(4, dims=(8, 16), out_dim=5)
    pts = torch.randn(2, 30, 4)
    torch.testing.assert_close(enc(pts), enc(pts[:, torch.randperm(30)]))
    assert enc(pts).shape == (2, 5)


def test_obs_encoder_selects_keys_by_shape():
    shapes = {"pos": (2,), "vel": (3,), "cloud": (50, 3), "cam": (3, 16, 16)}
    auto = ObsEncoder(shapes, "auto", point_dims=(8,), point_dim=4, **ENC)
    assert auto.keys == ["pos", "vel", "cloud", "cam"] and auto.out_dim == 5 + 4 + 8
    obs = {
        "pos": torch.randn(2, 3, 2),
        "vel": torch.randn(2, 3, 3),
        "cloud": torch.randn(2, 3, 50, 3),
        "cam": torch.zeros(2, 3, 3, 16, 16, dtype=torch.uint8),
    }
    assert auto(obs).shape == (2, 3, 17)
    assert ObsEncoder(shapes, "state").keys == ["pos", "vel"]
    assert ObsEncoder(shapes, "image", **ENC).keys == ["pos", "vel", "cam"]
    assert ObsEncoder(shapes, "pointcloud", point_dims=(8,)).keys == ["pos", "vel", "cloud"]
    with pytest.raises(ValueError, match="expected"):
        auto(obs | {"vel": torch.randn(2, 3, 4)})
    with pytest.raises(UserError, match="unknown obs_encoder"):
        ObsEncoder(shapes, "voxels")
