"""`difftop bench il`: training steps/s of each imitation policy (images by default, or point clouds or
states: ``obs=``), in one process.

A step is what ``difftop il`` does per gradient step: draw a batch of windows, compute the policy's
loss, backward, clip, AdamW. Residual and DiffTOP (``init=base``) train on a frozen base whose actions
are cached once for every window (``base_cache``), so their steps never run the base; the cache's
one-off cost is reported per window. Each step is split into where its time goes: data (window
gather), normalise (the observation normaliser; uint8 images skip it), crop (random-crop
augmentation, on uint8), conv (the image encoders' forward with the cropped frames' uint8 -> float
conversion, crop excluded), points (the point-cloud encoders' forward, on the clouds that
``encoder.num_points`` keeps), solve (DiffTOP's trajectory-optimization forward), other forward, backward
(conv, points and solve backward included), optimizer. Times are process CPU time
(with ``threads=1`` it ignores time-slicing by other jobs of a shared machine) beside wall-clock
steps/s; policies alternate round by round so that a load that comes and goes hits every row alike.

The data are the task's own observations (``episodes`` random-action episodes, rendered here, so
the bench needs no demonstrations) or any dataset given as ``data=``.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from difftop.errors import UserError
from difftop.utils.machine import cpu_name

PARTS = ("data", "normalise", "crop", "conv", "points", "solve", "other_forward", "backward", "optimizer")
BASED = ("residual", "difftop")  # policies trained on a frozen base here


def il_config(il_preset: str) -> DictConfig:
    """il.yaml with every il_policy section and an il preset merged in, without Hydra (unresolved)."""
    configs = Path(__file__).resolve().parents[1] / "configs"
    cfg = OmegaConf.load(configs / "il.yaml")
    cfg.pop("defaults")
    cfg.policies = {p.stem: OmegaConf.load(p) for p in sorted((configs / "il_policy").glob("*.yaml"))}
    path = configs / "il_preset" / f"{il_preset}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise UserError(f"unknown il_preset {il_preset!r}; choose one of: {', '.join(names)}")
    return OmegaConf.merge(cfg, OmegaConf.load(path))


def random_episodes(task: Any, obs: str, episodes: int, steps: int, image_size: int, seed: int):
    """(EpisodeData of random-action episodes of ``task``, seconds per env step incl. rendering)."""
    from difftop.data import EpisodeData

    keys = list(task.keys(obs))
    env = task.make_env(obs, steps, image_size)
    env.action_space.seed(seed)
    eps, t_env, n_env = [], 0.0, 0
    try:
        for e in range(episodes):
            o, _ = env.reset(seed=seed + e)
            rec: dict[str, list] = {k: [] for k in [*keys, "action"]}
            for _ in range(steps):
                cur = task.env_obs(o, obs)
                a = np.asarray(env.action_space.sample(), dtype=np.float32)
                for k in keys:
                    rec[k].append(cur[k])
                rec["action"].append(a)
                t0 = time.perf_counter()
                o, _, terminated, truncated, _ = env.step(a)
                t_env, n_env = t_env + time.perf_counter() - t0, n_env + 1
                if terminated or truncated:
                    break
            eps.append({k: np.stack(v) for k, v in rec.items()})
    finally:
        env.close()
    return EpisodeData.from_episodes(eps), t_env / max(n_env, 1)


class _Timers:
    """CPU time inside the policy's image and point encoders, the image crops, its normaliser and solve."""

    def __init__(self, policy: torch.nn.Module):
        from difftop.il.policies import BASE_ARGS
        from difftop.nn.encoders import ConvEncoder, ObsEncoder

        self.acc: dict[str, float] = defaultdict(float)
        self._t0: dict[int, float] = {}
        frozen = tuple(f"{a}." for a in BASE_ARGS)
        for name, mod in policy.named_modules():
            if name.startswith(frozen):
                continue
            if isinstance(mod, ConvEncoder):
                self._hook(mod, "conv")
                mod._crop = self._timed(mod._crop, "crop")  # an instance attribute shadows the method
            elif isinstance(mod, ObsEncoder):
                for enc in mod.points.values():
                    self._hook(enc, "points")
            elif name in ("normalizer", "trajopt"):
                self._hook(mod, "normalise" if name == "normalizer" else "solve")

    def _hook(self, mod: torch.nn.Module, part: str) -> None:
        def begin(m, args):
            self._t0[id(m)] = time.process_time()

        def end(m, args, out):
            self.acc[part] += time.process_time() - self._t0.pop(id(m))

        mod.register_forward_pre_hook(begin)
        mod.register_forward_hook(end)

    def _timed(self, fn, part: str):
        def timed(x):
            t0 = time.process_time()
            out = fn(x)
            self.acc[part] += time.process_time() - t0
            return out

        return timed

    def take(self) -> dict[str, float]:
        out = dict(self.acc)
        out["conv"] = out.get("conv", 0.0) - out.get("crop", 0.0)  # the crop runs inside the encoder
        self.acc.clear()
        return out


class _Row:
    """One policy built as ``difftop il`` builds it, with its data, optimiser and timers."""

    def __init__(self, name: str, cfg: DictConfig, data: Any, keys: list[str], seed: int):
        from difftop.data import SequenceDataset
        from difftop.il.policies import build_policy
        from difftop.il.train import base_action_cache, fit_normalizer, resolve_config

        shapes = {k: tuple(int(s) for s in data[k].shape[1:]) for k in keys}
        m = int(data["action"].shape[1])
        base = None
        if name in BASED:
            bcfg = resolve_config(OmegaConf.merge(cfg, {"policy": cfg.base_policy, "base": None}))
            torch.manual_seed(seed)
            base, _ = build_policy(cfg.base_policy, shapes, m, OmegaConf.to_container(bcfg.policy_params),
                                   None)
        based = {"policy": name, "base": "bench" if base is not None else None}
        self.cfg = rcfg = resolve_config(OmegaConf.merge(cfg, based))
        torch.manual_seed(seed)
        self.policy, _ = build_policy(name, shapes, m, OmegaConf.to_container(rcfg.policy_params), base)
        meta = self.policy.shape_meta
        self.ds = SequenceDataset(data, keys, "action", horizon=meta.horizon, obs_horizon=meta.obs_horizon,
                                  n_action_steps=meta.n_action_steps)
        norm = fit_normalizer(data, self.ds.steps(), keys)
        if base is not None:
            base.set_normalizer(norm)
        self.policy.set_normalizer(norm)
        self.policy.train()
        t0 = time.process_time()
        self.cache = base_action_cache(self.policy, self.ds, "cpu", seed) if base is not None else None
        self.cache_ms = 1e3 * (time.process_time() - t0) / len(self.ds) if self.cache is not None else None
        self.params = [p for p in self.policy.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=float(rcfg.lr), weight_decay=float(rcfg.weight_decay))
        self.timers = _Timers(self.policy)
        self.rng = np.random.default_rng(seed)
        self.metrics: dict[str, list[float]] = defaultdict(list)

    def step(self) -> tuple[dict[str, float], float]:
        """One training step: (CPU seconds per part, wall seconds)."""
        w0, c0 = time.perf_counter(), time.process_time()
        idx = self.rng.integers(0, len(self.ds), size=int(self.cfg.batch_size))
        batch = self.ds.get_batch(idx)
        if self.cache is not None:
            batch["base_action"] = self.cache[idx]
        c1 = time.process_time()
        loss, metrics = self.policy.compute_loss(batch)
        c2 = time.process_time()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        c3 = time.process_time()
        clip = float(self.cfg.grad_clip) if self.cfg.grad_clip else float("inf")
        torch.nn.utils.clip_grad_norm_(self.params, clip)
        self.opt.step()
        c4 = time.process_time()
        parts = self.timers.take()
        inside = sum(parts.get(k, 0.0) for k in ("normalise", "crop", "conv", "points", "solve"))
        parts.update(data=c1 - c0, other_forward=c2 - c1 - inside, backward=c3 - c2, optimizer=c4 - c3)
        for k, v in metrics.items():
            self.metrics[k].append(float(v))
        return parts, time.perf_counter() - w0


def _table(rows: list[dict], header: str, notes: list[str]) -> str:
    cols = "| policy | ms / step (CPU) | steps / s (CPU) | steps / s (wall) | vs base | " + \
        " | ".join(f"{p.replace('_', ' ')} ms" for p in PARTS) + " |"
    lines = [header, "", cols, "|" + "---|" * (5 + len(PARTS))]
    for r in rows:
        ratio = f"{r['ratio_vs_base']:.2f}x" if r["ratio_vs_base"] is not None else "-"
        lines.append(f"| {r['policy']} | {r['ms_per_step']:.0f} | {r['steps_per_s']:.2f} | "
                     f"{r['steps_per_s_wall']:.2f} | {ratio} | "
                     + " | ".join(f"{r['parts_ms'][p]:.0f}" for p in PARTS) + " |")
    return "\n".join([*lines, "", *notes])


def main(cfg: DictConfig) -> dict:
    from difftop.data import load_dataset
    from difftop.il.policies import POLICIES
    from difftop.tasks import get_task

    unknown = [p for p in [*cfg.policies, cfg.base] if p not in POLICIES]
    if unknown:
        raise UserError(f"unknown policies {unknown}; choose from: {', '.join(POLICIES)}")
    if cfg.base in BASED:
        raise UserError(f"base must be a policy that trains alone, not {cfg.base}")
    for key in ("steps_per_round", "rounds", "episodes", "episode_steps", "image_size"):
        if int(cfg[key]) < 1:
            raise UserError(f"{key} must be >= 1, got {cfg[key]}")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    task = get_task(str(cfg.task))
    keys = list(task.keys(str(cfg.obs)))
    load0 = os.getloadavg()[0]
    if cfg.data:
        data, env_s = load_dataset(cfg.data), None
        task.derive(data, str(cfg.obs))
    else:
        data, env_s = random_episodes(task, str(cfg.obs), int(cfg.episodes), int(cfg.episode_steps),
                                      int(cfg.image_size), int(cfg.seed))
    run = {"task": cfg.task, "obs": cfg.obs, "data": str(cfg.data or "<bench>"), "device": "cpu",
           "seed": cfg.seed}
    # a dot-list merge adds missing keys by itself: Hydra's `+key=` (as `difftop il` needs) means `key=` here
    dots = [str(o)[1:] if str(o).startswith("+") else str(o) for o in cfg.overrides]
    base = OmegaConf.merge(il_config(str(cfg.il_preset)), run, OmegaConf.from_dotlist(dots))
    base.base_policy = str(cfg.base)
    names = list(dict.fromkeys(cfg.policies))
    rows = {}
    for name in names:
        rows[name] = _Row(name, base, data, keys, int(cfg.seed))
        print(f"built {name}", flush=True)
    parts: dict[str, list[dict]] = {n: [] for n in names}
    wall: dict[str, list[float]] = {n: [] for n in names}
    for rnd in range(int(cfg.warmup) + int(cfg.rounds)):
        for name, row in rows.items():
            for _ in range(int(cfg.steps_per_round)):
                p, w = row.step()
                if rnd >= int(cfg.warmup):
                    parts[name].append(p)
                    wall[name].append(w)
        done = rnd >= int(cfg.warmup)
        print(f"round {rnd + 1}/{int(cfg.warmup) + int(cfg.rounds)}"
              + (": " + ", ".join(f"{n} {1e3 * sum(parts[n][-1].values()):.0f} ms" for n in names)
                 if done else " (warm-up)"), flush=True)
    table = []
    for name in names:
        per = {k: 1e3 * statistics.median(p.get(k, 0.0) for p in parts[name]) for k in PARTS}
        total = 1e3 * statistics.median(sum(p.values()) for p in parts[name])
        table.append({"policy": name, "ms_per_step": total, "steps_per_s": 1e3 / total,
                      "steps_per_s_wall": 1.0 / statistics.median(wall[name]), "parts_ms": per,
                      "ratio_vs_base": None, "n": len(parts[name]),
                      "base_cache_ms_per_window": rows[name].cache_ms,
                      "solve_iters": statistics.mean(rows[name].metrics["solve_iters"])
                      if rows[name].metrics.get("solve_iters") else None})
    by_name = {r["policy"]: r for r in table}
    for r in table:
        if r["policy"] in BASED and cfg.base in by_name:
            r["ratio_vs_base"] = by_name[cfg.base]["ms_per_step"] / r["ms_per_step"]
    any_row = next(iter(rows.values()))
    big = {k: tuple(data[k].shape[1:]) for k in keys if data[k].ndim >= 3}  # images and point clouds
    header = (f"# bench il: {cfg.task} ({cfg.obs}, {big or 'no images or point clouds'}), "
              f"il_preset={cfg.il_preset}, "
              f"batch {any_row.cfg.batch_size}, threads {torch.get_num_threads()}, "
              f"{cpu_name()}, load average {load0:.1f} -> "
              f"{os.getloadavg()[0]:.1f}")
    notes = [f"Medians of {table[0]['n']} steps per policy after {cfg.warmup} warm-up round(s); parts are "
             f"process CPU time. `vs base`: steps/s relative to the base's ({cfg.base}) own training."]
    for r in table:
        if r["base_cache_ms_per_window"] is not None:
            notes.append(f"- {r['policy']}: base_cache (the base's actions for every window, once) "
                         f"{r['base_cache_ms_per_window']:.1f} ms CPU per window")
        if r["solve_iters"] is not None:
            notes.append(f"- {r['policy']}: {r['solve_iters']:.1f} solver iterations per sample on average")
    for name in names:  # what each row's encoder was built with (il_policy + preset + overrides)
        enc = OmegaConf.to_container(rows[name].cfg.policy_params).get("encoder") or {}
        if any(data[k].ndim == 3 for k in keys):
            notes.append(f"- {name}: encoder {enc}")
    if env_s is not None:
        notes.append(f"- data: {cfg.episodes} random-action episodes; env step with its "
                     f"{cfg.image_size}x{cfg.image_size} render {1e3 * env_s:.1f} ms (wall)")
    if list(cfg.overrides):
        notes.append(f"- overrides: {' '.join(cfg.overrides)}")
    text = _table(table, header, notes)
    print("\n" + text)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"il_{cfg.obs}{cfg.tag}"
    Path(f"{stem}.md").write_text(text + "\n")
    with open(f"{stem}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["policy", "ms_per_step", "steps_per_s", "steps_per_s_wall", "ratio_vs_base", *PARTS])
        for r in table:
            w.writerow([r["policy"], r["ms_per_step"], r["steps_per_s"], r["steps_per_s_wall"],
                        r["ratio_vs_base"], *(r["parts_ms"][p] for p in PARTS)])
    Path(f"{stem}.json").write_text(json.dumps({"config": OmegaConf.to_container(cfg), "rows": table,
                                                "parts_s": parts, "wall_s": wall}, indent=2))
    print(f"saved {stem}.md, .csv, .json")
    return {"rows": table}
