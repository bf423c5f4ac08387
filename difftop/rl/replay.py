"""Episode replay buffer with prioritized sampling of sub-trajectories (TD-MPC's PER).

Why episode-shaped storage: TD-MPC learns from sequences ``s_t, a_t, r_t, ..., s_{t+H}`` that
must never cross an episode boundary. Storing whole fixed-length episodes (DMC episodes always
have ``episode_length`` agent steps) makes that a matter of giving the last ``H`` start indices
of each episode zero priority, as TD-MPC does, with no bookkeeping of "last observations".

Pixels: only the newest RGB frame of each observation is stored (the frame stack is rebuilt at
sampling time by index arithmetic, clamping at the first frame of the episode, exactly as the
environment wrapper fills its stack at reset), which cuts memory by the stack size.

Storage device: frames, actions and rewards live as torch tensors on ``device`` (TD-MPC keeps its
buffer on the GPU too). On a GPU this is what makes pixel training fast: a pixel minibatch is
(H+1) x B x 9 x 84 x 84 values (98 M for B=256, H=5); gathered and cast on the host (150-180 ms
per update on one core of our CPU) it left four H200 runs stuck in their first 5,000 updates for
7 min (results/rl/pixels/README.md). On the GPU it is one indexing kernel. Priorities stay in numpy
(small, and ``rng.choice`` draws from them).

Sampling follows TD-MPC: start indices drawn without replacement with probability
``p_i^alpha / sum p^alpha``; importance weights ``(N * P(i))^-beta`` normalised by their max;
new episodes enter at the current max priority; priorities are updated from the TD errors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["ReplayBuffer", "Batch"]


@dataclass
class Batch:
    """A minibatch of sub-trajectories, time first (TD-MPC's layout)."""

    obs: torch.Tensor  # (H+1, B, *obs_shape) float32; pixels: uint8 0..255 (RandomShift casts them)
    action: torch.Tensor  # (H, B, m)
    reward: torch.Tensor  # (H, B, 1)
    idxs: np.ndarray  # (B,) flat start indices (episode * L + t), for update_priorities
    weights: torch.Tensor  # (B,) importance weights, max 1


class ReplayBuffer:
    """Fixed-capacity buffer of whole episodes, sampled as prioritized sub-trajectories.

    Args:
        obs_shape: observation shape; for pixels ``(3 * frame_stack, h, w)`` uint8.
        action_dim: action dimension.
        episode_length: agent steps per episode (every stored episode has exactly this many).
        capacity: maximum number of transitions (rounded up to whole episodes; the oldest
            episodes are overwritten when full).
        horizon: sub-trajectory length H (actions per sample).
        pixels: store uint8 frames and rebuild stacks of ``obs_shape[0] // 3`` frames.
        alpha, beta: PER exponents (TD-MPC: 0.6, 0.4). ``alpha = 0`` is uniform sampling.
        device: where the stored episodes live and minibatches are assembled (``cpu`` or ``cuda``).
    """

    def __init__(self, obs_shape, action_dim: int, episode_length: int, capacity: int, horizon: int,
                 *, pixels: bool = False, alpha: float = 0.6, beta: float = 0.4, eps: float = 1e-6,
                 device: torch.device | str = "cpu"):
        if horizon >= episode_length:
            raise ValueError(f"horizon {horizon} must be < episode_length {episode_length}")
        self.obs_shape = tuple(int(s) for s in obs_shape)
        self.action_dim = int(action_dim)
        self.L = int(episode_length)
        self.horizon = int(horizon)
        self.pixels = bool(pixels)
        self.alpha, self.beta, self.eps = float(alpha), float(beta), float(eps)
        self.capacity_episodes = max(1, -(-int(capacity) // self.L))
        n = self.capacity_episodes
        self.device = torch.device(device)
        # gather with numpy on host storage (1.3-1.6x faster than torch indexing on our CPU), with one
        # torch indexing kernel on a GPU
        self._host_gather = self.device.type == "cpu"
        # torch.empty: on the CPU a large buffer is only backed by memory as episodes arrive; slots
        # are read only once written (sampling draws from the stored episodes alone)
        if self.pixels:
            c, h, w = self.obs_shape
            if c % 3:
                raise ValueError(f"pixel observations must stack RGB frames, got {c} channels")
            self.frame_stack = c // 3
            self._obs = torch.empty((n, self.L + 1, 3, h, w), dtype=torch.uint8, device=self.device)
        else:
            self.frame_stack = 1
            self._obs = torch.empty((n, self.L + 1, *self.obs_shape), dtype=torch.float32, device=self.device)
        self._action = torch.zeros((n, self.L, self.action_dim), dtype=torch.float32, device=self.device)
        self._reward = torch.zeros((n, self.L), dtype=torch.float32, device=self.device)
        self._priority = np.zeros((n, self.L), dtype=np.float64)
        self.num_episodes = 0  # episodes added so far (the write slot is num_episodes % n)

    # ------------------------------------------------------------------ filling
    def __len__(self) -> int:
        """Transitions currently stored."""
        return min(self.num_episodes, self.capacity_episodes) * self.L

    @property
    def num_stored(self) -> int:
        return min(self.num_episodes, self.capacity_episodes)

    def add_episode(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray) -> None:
        """Store one episode: ``obs`` (L+1, *obs_shape), ``action`` (L, m), ``reward`` (L,)."""
        obs, action, reward = np.asarray(obs), np.asarray(action), np.asarray(reward)
        if obs.shape != (self.L + 1, *self.obs_shape):
            raise ValueError(f"episode obs must be {(self.L + 1, *self.obs_shape)}, got {obs.shape}")
        if action.shape != (self.L, self.action_dim) or reward.shape != (self.L,):
            raise ValueError(f"episode action/reward must be {(self.L, self.action_dim)}/{(self.L,)}, "
                             f"got {action.shape}/{reward.shape}")
        slot = self.num_episodes % self.capacity_episodes
        max_p = self._priority[: self.num_stored].max() if self.num_stored else 0.0
        max_p = max_p if max_p > 0 else 1.0
        self._obs[slot] = self._tensor(obs[:, -3:] if self.pixels else obs, self._obs.dtype)
        self._action[slot] = self._tensor(action, torch.float32)
        self._reward[slot] = self._tensor(reward, torch.float32)
        self._priority[slot] = max_p
        self._priority[slot, self.L - self.horizon:] = 0.0  # no sequence may cross the episode end
        self.num_episodes += 1

    def _tensor(self, x: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).to(self.device, dtype)

    # ----------------------------------------------------------------- sampling
    def _gather(self, store: torch.Tensor, idx: tuple[np.ndarray, ...]) -> torch.Tensor:
        """``store[idx]`` for numpy index arrays, on the storage device."""
        if self._host_gather:
            return torch.from_numpy(np.ascontiguousarray(store.numpy()[idx]))
        return store[tuple(torch.from_numpy(np.ascontiguousarray(i)).to(self.device) for i in idx)]

    def _stack(self, ep: np.ndarray, t: np.ndarray) -> torch.Tensor:
        """Observations at (episode, time) index arrays of equal shape -> (*shape, *obs_shape), in the
        stored dtype (pixels: uint8)."""
        if not self.pixels:
            return self._gather(self._obs, (ep, t))
        k = self.frame_stack
        ts = np.clip(t[..., None] + np.arange(1 - k, 1), 0, None)  # (..., k)
        frames = self._gather(self._obs, (ep[..., None], ts))  # (..., k, 3, h, w)
        return frames.reshape(*t.shape, *self.obs_shape)

    def sample(self, batch_size: int, rng: np.random.Generator, horizon: int | None = None,
               device: torch.device | str = "cpu") -> Batch:
        """Draw ``batch_size`` prioritized sub-trajectories of ``horizon`` (<= the buffer's) steps."""
        H = self.horizon if horizon is None else int(horizon)
        if not 1 <= H <= self.horizon:
            raise ValueError(f"horizon must be in [1, {self.horizon}], got {H}")
        n = self.num_stored
        if n == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        p = self._priority[:n].reshape(-1)
        probs = p ** self.alpha if self.alpha != 1.0 else p.copy()
        probs /= probs.sum()
        nonzero = int((probs > 0).sum())
        idxs = rng.choice(probs.size, size=batch_size, replace=batch_size > nonzero, p=probs)
        weights = (probs.size * probs[idxs]) ** (-self.beta)
        weights /= weights.max()
        ep, t0 = np.divmod(idxs, self.L)
        t = t0[None, :] + np.arange(H + 1)[:, None]  # (H+1, B)
        epb = np.broadcast_to(ep, t.shape)
        # the stored dtype crosses devices: float32 states; uint8 pixels (a quarter of the float32 bytes),
        # which the agent's augmentation casts
        obs = self._stack(epb, t).to(device)
        action = self._gather(self._action, (epb[:-1], t[:-1])).to(device)
        reward = self._gather(self._reward, (epb[:-1], t[:-1])).to(device).unsqueeze(-1)
        return Batch(obs=obs, action=action, reward=reward, idxs=idxs,
                     weights=torch.as_tensor(weights, dtype=torch.float32, device=device))

    def update_priorities(self, idxs: np.ndarray, priorities) -> None:
        """Set the priorities of sampled start indices (e.g. from TD errors)."""
        pr = torch.as_tensor(priorities).detach().reshape(-1).cpu().double().numpy()
        pr = np.where(np.isfinite(pr), pr, self._priority.max() or 1.0)
        idxs = np.asarray(idxs)
        valid = idxs % self.L < self.L - self.horizon  # the episode-end starts stay unsampleable
        flat = self._priority.reshape(-1)
        flat[idxs[valid]] = (pr + self.eps)[valid]

    # -------------------------------------------------------------- persistence
    def state_dict(self) -> dict:
        """Arrays of the stored episodes, in slot order, plus counters (for checkpoints)."""
        n = self.num_stored
        return {"obs": self._obs[:n].cpu().numpy(), "action": self._action[:n].cpu().numpy(),
                "reward": self._reward[:n].cpu().numpy(),
                "priority": self._priority[:n], "num_episodes": np.int64(self.num_episodes),
                "meta": np.asarray([self.L, self.horizon, self.capacity_episodes, int(self.pixels)])}

    def load_state_dict(self, state: dict) -> None:
        """Restore a saved buffer. With the same capacity the slots are restored exactly (a resumed
        run samples what the uninterrupted one would); a different capacity (a run extended with
        more ``steps``) keeps the newest episodes in chronological order."""
        L, hor, cap, pix = (int(v) for v in np.asarray(state["meta"]))
        if (L, hor, pix) != (self.L, self.horizon, int(self.pixels)):
            raise ValueError(f"replay buffer layout {(L, hor, pix)} (episode length, horizon, pixels) "
                             f"does not match this run's {(self.L, self.horizon, int(self.pixels))}")
        if tuple(state["obs"].shape[1:]) != tuple(self._obs.shape[1:]):
            raise ValueError(f"replay obs shape {tuple(state['obs'].shape[1:])} "
                             f"!= {tuple(self._obs.shape[1:])}")
        n, total = len(state["action"]), int(state["num_episodes"])
        order = np.arange(n)
        if cap != self.capacity_episodes:
            order = (total - n + np.arange(n)) % cap  # oldest first
            order = order[max(0, n - self.capacity_episodes):]
            total = len(order)
        k = len(order)
        self._obs[:k] = self._tensor(np.asarray(state["obs"])[order], self._obs.dtype)
        self._action[:k] = self._tensor(np.asarray(state["action"])[order], torch.float32)
        self._reward[:k] = self._tensor(np.asarray(state["reward"])[order], torch.float32)
        self._priority[:k] = state["priority"][order]
        self.num_episodes = total

    def save(self, path) -> None:
        np.savez(path, **self.state_dict())

    def load(self, path) -> None:
        with np.load(path) as f:
            self.load_state_dict({k: f[k] for k in f.files})
