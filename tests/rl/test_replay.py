"""Replay buffer: sequences within episodes, PER sampling and priority updates, pixel stacks, persistence."""

import numpy as np
import pytest
import torch

from difftop.rl.replay import ReplayBuffer

L, H, M = 10, 3, 2


def _episode(ep_id: int, obs_dim: int = 1):
    obs = (ep_id * 100 + np.arange(L + 1, dtype=np.float32))[:, None].repeat(obs_dim, 1)
    act = np.full((L, M), ep_id, dtype=np.float32)
    rew = ep_id * 100 + np.arange(L, dtype=np.float32)
    return obs, act, rew


def test_sequences_stay_inside_one_episode():
    buf = ReplayBuffer((1,), M, L, capacity=5 * L, horizon=H)
    for e in range(4):
        buf.add_episode(*_episode(e))
    b = buf.sample(256, np.random.default_rng(0))
    assert b.obs.shape == (H + 1, 256, 1) and b.action.shape == (H, 256, M) and b.reward.shape == (H, 256, 1)
    o = b.obs[..., 0]
    # consecutive time steps of the same episode, starting no later than L - H
    assert torch.all(o[1:] - o[:-1] == 1)
    assert torch.all(o[0] % 100 <= L - H)
    assert torch.all(b.reward[:, :, 0] == o[:-1])  # reward r_t belongs to obs s_t
    assert torch.all(b.action[:, :, 0] == torch.div(o[:-1], 100, rounding_mode="floor"))
    assert b.weights.max() == 1 and (b.weights > 0).all()


def test_last_horizon_starts_have_zero_priority_and_new_episodes_max_priority():
    buf = ReplayBuffer((1,), M, L, capacity=5 * L, horizon=H)
    buf.add_episode(*_episode(0))
    assert np.all(buf._priority[0, L - H:] == 0) and np.all(buf._priority[0, : L - H] == 1)
    buf.update_priorities(np.array([2]), torch.tensor([7.0]))
    buf.add_episode(*_episode(1))
    assert np.allclose(buf._priority[1, : L - H], 7.0 + 1e-6)


def test_priority_update_steers_sampling_and_weights():
    buf = ReplayBuffer((1,), M, L, capacity=5 * L, horizon=H, alpha=1.0, beta=1.0)
    for e in range(3):
        buf.add_episode(*_episode(e))
    buf.update_priorities(np.arange(3 * L), torch.full((3 * L,), 1e-3))
    buf.update_priorities(np.array([L + 4]), torch.tensor([1e3]))
    counts = np.zeros(3 * L)
    rng = np.random.default_rng(1)
    for _ in range(50):
        b = buf.sample(1, rng)
        counts[b.idxs] += 1
        assert np.isclose(b.weights.item(), 1.0)
    assert counts[L + 4] >= 45
    b = buf.sample(8, rng)  # without replacement: the heavy index appears once, lightest weight
    i = list(b.idxs).index(L + 4)
    assert b.weights[i] == b.weights.min() and b.weights.max() == 1


def test_capacity_overwrites_oldest_episode():
    buf = ReplayBuffer((1,), M, L, capacity=2 * L, horizon=H)
    for e in range(3):
        buf.add_episode(*_episode(e))
    assert len(buf) == 2 * L
    ids = set(torch.div(buf.sample(64, np.random.default_rng(0)).obs[0, :, 0], 100,
                        rounding_mode="floor").tolist())
    assert ids == {1.0, 2.0}


def test_pixel_stacks_rebuilt_like_the_env_wrapper():
    k, h = 3, 4
    frames = np.random.default_rng(0).integers(0, 255, (L + 1, 3, h, h), dtype=np.uint8)
    # the wrapper's stacks: reset fills the stack with the first frame
    stacks = np.stack([np.concatenate([frames[max(t - j, 0)] for j in range(k - 1, -1, -1)])
                       for t in range(L + 1)])
    buf = ReplayBuffer((3 * k, h, h), M, L, capacity=L, horizon=H, pixels=True)
    buf.add_episode(stacks, np.zeros((L, M), np.float32), np.zeros(L, np.float32))
    assert buf._obs.shape[2] == 3  # only the newest frame is stored
    b = buf.sample(16, np.random.default_rng(0))
    t0 = b.idxs % L
    for j in range(16):
        for t in range(H + 1):
            assert np.array_equal(b.obs[t, j].numpy(), stacks[t0[j] + t].astype(np.float32))


def test_state_dict_round_trip(tmp_path):
    buf = ReplayBuffer((2,), M, L, capacity=3 * L, horizon=H)
    for e in range(2):
        buf.add_episode(*_episode(e, 2))
    buf.update_priorities(np.array([1, 3]), torch.tensor([5.0, 6.0]))
    buf.save(tmp_path / "b.npz")
    other = ReplayBuffer((2,), M, L, capacity=3 * L, horizon=H)
    other.load(tmp_path / "b.npz")
    a = buf.sample(8, np.random.default_rng(3))
    c = other.sample(8, np.random.default_rng(3))
    assert torch.equal(a.obs, c.obs) and np.array_equal(a.idxs, c.idxs)
    wrong = ReplayBuffer((2,), M, L, capacity=3 * L, horizon=H + 1)
    with pytest.raises(ValueError, match="layout"):
        wrong.load(tmp_path / "b.npz")


def test_bad_episode_shape_is_rejected():
    buf = ReplayBuffer((1,), M, L, capacity=L, horizon=H)
    obs, act, rew = _episode(0)
    with pytest.raises(ValueError, match="episode obs"):
        buf.add_episode(obs[:-1], act, rew)


def test_load_into_a_larger_buffer_keeps_newest_episodes_in_order(tmp_path):
    small = ReplayBuffer((1,), M, L, capacity=2 * L, horizon=H)
    for e in range(3):  # wraps: slot 0 holds episode 2
        small.add_episode(*_episode(e))
    small.save(tmp_path / "b.npz")
    big = ReplayBuffer((1,), M, L, capacity=4 * L, horizon=H)
    big.load(tmp_path / "b.npz")
    assert big.num_episodes == 2 and big._obs[0, 0, 0] == 100 and big._obs[1, 0, 0] == 200
    big.add_episode(*_episode(3))
    assert big._obs[2, 0, 0] == 300


def _pixel_buffer(device, episodes=3, k=3, h=4):
    rng = np.random.default_rng(1)
    buf = ReplayBuffer((3 * k, h, h), M, L, capacity=episodes * L, horizon=H, pixels=True, device=device)
    for _ in range(episodes):
        buf.add_episode(rng.integers(0, 255, (L + 1, 3 * k, h, h), dtype=np.uint8),
                        rng.standard_normal((L, M)).astype(np.float32),
                        rng.standard_normal(L).astype(np.float32))
    return buf


def test_storage_lives_on_the_buffer_device_and_batches_on_the_requested_one():
    # the frames stay uint8 where they are stored (a GPU in training: one gather kernel per batch)
    buf = _pixel_buffer("cpu")
    assert buf._obs.dtype == torch.uint8 and buf._obs.device.type == "cpu"
    b = buf.sample(8, np.random.default_rng(0), device="meta")
    # and cross to the batch's device as uint8 (the agent's augmentation casts them)
    assert b.obs.device.type == "meta" and b.obs.dtype == torch.uint8 and b.action.device.type == "meta"


def test_a_saved_buffer_loads_on_another_device_and_samples_the_same(tmp_path):
    """A checkpoint written by a GPU run resumes on a CPU machine (and back): the file is numpy."""
    buf = _pixel_buffer("cpu")
    buf.save(tmp_path / "b.npz")
    with np.load(tmp_path / "b.npz") as f:
        assert all(isinstance(f[k], np.ndarray) for k in f.files) and f["obs"].dtype == np.uint8
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    other = ReplayBuffer(buf.obs_shape, M, L, capacity=3 * L, horizon=H, pixels=True, device=dev)
    other.load(tmp_path / "b.npz")
    a, c = buf.sample(16, np.random.default_rng(5)), other.sample(16, np.random.default_rng(5))
    assert torch.equal(a.obs, c.obs.cpu()) and torch.equal(a.action, c.action.cpu())
    assert torch.equal(a.reward, c.reward.cpu()) and torch.equal(a.weights, c.weights.cpu())


def test_the_gpu_gather_path_samples_what_the_host_gather_samples():
    """A GPU buffer gathers with torch indexing, a CPU one with numpy: run both paths here."""
    for pixels in (True, False):
        buf = _pixel_buffer("cpu") if pixels else ReplayBuffer((2,), M, L, capacity=3 * L, horizon=H)
        if not pixels:
            for e in range(3):
                buf.add_episode(*_episode(e, 2))
        a = buf.sample(32, np.random.default_rng(4))
        buf._host_gather = False
        c = buf.sample(32, np.random.default_rng(4))
        assert torch.equal(a.obs, c.obs) and torch.equal(a.action, c.action)
        assert torch.equal(a.reward, c.reward)
        assert a.obs.dtype == c.obs.dtype == (torch.uint8 if pixels else torch.float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_buffer_samples_exactly_what_the_cpu_buffer_samples():
    a = _pixel_buffer("cpu").sample(32, np.random.default_rng(2), device="cuda")
    c = _pixel_buffer("cuda").sample(32, np.random.default_rng(2), device="cuda")
    assert torch.equal(a.obs, c.obs) and torch.equal(a.action, c.action) and torch.equal(a.reward, c.reward)
