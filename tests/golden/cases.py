"""Short fixed-seed runs whose logged numbers and actions are frozen as golden files.

Why: the run engine, the registries and the checkpoint format were rebuilt under these runs; a
change that alters what a run computes (not how fast) shows up here as a differing number. The
files were recorded before the refactor with ``python -m tests.golden.record`` and are re-recorded
only when a change of results is intended (say so in the commit).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

#: columns that measure time, not results
TIMING = {"wall_time", "collect_s", "update_s", "env_steps_per_s", "steps_per_s", "solve_ms"}

RL_TINY = ["mlp_dim=32", "enc_dim=16", "latent_dim=8", "num_channels=4", "num_samples=16", "num_elites=4",
           "iterations=2", "batch_size=16", "pg_batch_size=4", "seed_steps=25", "horizon=3",
           "episode_length=200", "eval_episodes=1", "threads=1", "progress=false", "trajopt.max_iters=5",
           "render_size=32", "steps=400", "eval_every=200", "video=false", "tensorboard=false",
           "task=cartpole-swingup", "seed=3"]
IL_FAST = ["steps=6", "batch_size=8", "log_every=2", "val_every=3", "val_batches=1", "eval_every=0",
           "eval_episodes=2", "max_steps=6", "eval_batch=2", "threads=1", "progress=false",
           "tensorboard=false", "video=false", "seed=2"]
IL_SMALL = {
    "difftop": [f"policies.difftop.{k}" for k in ("mlp_hidden=16", "enc_hidden=16", "fuse_hidden=16",
                                                  "latent_dim=8", "posterior_dim=4", "max_iters=20")],
    "bc": ["policies.bc.hidden=[16,16]"],
    "bc_rnn": ["policies.bc_rnn.rnn_hidden=16", "policies.bc_rnn.obs_horizon=4", "policies.bc_rnn.horizon=4",
               "policies.bc_rnn.rnn_horizon=4"],
    "diffusion": ["policies.diffusion.down_dims=[16,32]", "policies.diffusion.step_embed_dim=8",
                  "policies.diffusion.num_inference_steps=3", "policies.diffusion.horizon=8",
                  "policies.diffusion.n_action_steps=4"],
    "ibc": ["policies.ibc.hidden=[16,16]", "policies.ibc.n_negatives=8", "policies.ibc.dfo_samples=32",
            "policies.ibc.dfo_iters=2"],
    "residual": ["policies.residual.hidden=[16,16]"],
}

#: name -> (command words and overrides, which base run it needs or None)
RL_CASES = {
    "rl-tdmpc-state": ["agent=tdmpc", "obs=state"],
    "rl-difftop-state": ["agent=difftop", "obs=state", "pg_mode=online"],
    "rl-difftop-batched-state": ["agent=difftop", "obs=state", "pg_mode=batched"],
    "rl-noback-state": ["agent=difftop_noback", "obs=state"],
    "rl-tdmpc-pixels": ["agent=tdmpc", "obs=pixels", "image_size=64"],
    "rl-difftop-pixels": ["agent=difftop", "obs=pixels", "image_size=64"],
}
IL_CASES = {f"il-{p}": p for p in ("bc", "bc_rnn", "diffusion", "ibc", "residual", "difftop")}


def il_data(path: Path) -> Path:
    """8 episodes of 14 steps of Push-T-like states and actions (deterministic)."""
    from difftop.data import EpisodeData, save_zarr

    rng = np.random.default_rng(0)
    eps = []
    for _ in range(8):
        s = rng.uniform(50, 460, (14, 5)).astype(np.float32)
        s[:, 4] = rng.uniform(0, 2 * np.pi, 14)
        eps.append({"state": s, "action": (s[:, :2] + rng.normal(0, 10, (14, 2))).astype(np.float32)})
    save_zarr(EpisodeData.from_episodes(eps), path)
    return path


def rl_args(name: str, out: Path) -> list[str]:
    return ["rl", *RL_TINY, *RL_CASES[name], f"out_dir={out}"]


def il_args(name: str, out: Path, data: Path, base: Path | None) -> list[str]:
    policy = IL_CASES[name]
    extra = []
    if policy in ("residual", "difftop"):
        extra = [f"base={base}"] + (["init=base"] if policy == "difftop" else [])
    return ["il", f"policy={policy}", f"data={data}", f"out_dir={out}", *IL_FAST, *IL_SMALL[policy], *extra]


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


def snapshot(out: Path, kind: str) -> dict:
    """What a run computed: its CSV rows without timing columns, and actions (RL: the actions it
    collected; IL: its policy's actions on the first training windows)."""
    snap = {name: _rows(out / f"{name}.csv") for name in ("train", "eval", "val")}
    if kind == "rl":
        buf = out / "checkpoint" / "buffer.npz"
        with np.load(buf if buf.exists() else out / "buffer.npz") as z:
            key = next(k for k in ("action", "actions", "act") if k in z.files)
            snap["actions"] = np.round(np.asarray(z[key], dtype=np.float64).reshape(-1)[:400], 6).tolist()
    else:
        snap["actions"] = il_actions(out)
    return snap


def il_actions(out: Path) -> list[float]:
    import torch

    from difftop.il.train import load_policy

    policy, _ = load_policy(out)
    policy.eval()
    meta = policy.shape_meta
    rng = np.random.default_rng(5)
    obs = {}
    for key, shape in meta.obs.items():
        obs[key] = torch.as_tensor(rng.uniform(50, 460, (4, meta.obs_horizon, *shape)).astype(np.float32))
    torch.manual_seed(0)
    with torch.no_grad():
        act = policy.predict_action_stateless(obs)
    return np.round(act.double().numpy().reshape(-1), 4).tolist()


def compare(got: dict, want: dict, rtol: float = 1e-4, atol: float = 1e-5) -> list[str]:
    """Differences between two snapshots, as readable lines (empty: equal)."""
    diffs = []
    for part in sorted(set(got) | set(want)):
        a, b = got.get(part), want.get(part)
        if part == "actions":
            a, b = np.asarray(a or []), np.asarray(b or [])
            if a.shape != b.shape or not np.allclose(a, b, rtol=rtol, atol=atol):
                diffs.append(f"actions differ (max |diff| "
                             f"{np.abs(a - b).max() if a.shape == b.shape else 'shape'})")
            continue
        if len(a or []) != len(b or []):
            diffs.append(f"{part}.csv: {len(a or [])} rows, golden {len(b or [])}")
            continue
        for i, (ra, rb) in enumerate(zip(a, b)):
            for key in sorted(set(ra) | set(rb)):
                va, vb = ra.get(key), rb.get(key)
                if va == vb:
                    continue
                try:
                    fa, fb = float(va), float(vb)
                except (TypeError, ValueError):
                    diffs.append(f"{part}.csv row {i} {key}: {va!r} vs golden {vb!r}")
                    continue
                if not (np.isclose(fa, fb, rtol=rtol, atol=atol) or (np.isnan(fa) and np.isnan(fb))):
                    diffs.append(f"{part}.csv row {i} {key}: {va} vs golden {vb}")
    return diffs


def golden_path(name: str) -> Path:
    return HERE / f"{name}.json"


def load_golden(name: str) -> dict:
    return json.loads(golden_path(name).read_text())
