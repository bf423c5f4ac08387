"""`difftop bench rl`: training env-steps/s of each agent, all in one process.

One agent step of training is one action (MPPI for TD-MPC, the trajectory optimization for
DiffTOP, with the online policy-gradient backward when ``pg_mode=online``) plus one gradient
update on a replay batch, after learning has started (horizon schedule at its end). Each agent
starts from the same replay buffer of random episodes of the real environment; rows alternate
agent by agent in rounds, so a machine whose load changes affects every row alike. The ratio
column is env-steps/s relative to TD-MPC (issue 4's target for DiffTOP: >= 0.7).
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from difftop.errors import UserError
from difftop.rl.difftop_agent import make_agent
from difftop.rl.replay import ReplayBuffer
from difftop.rl.trainer import resolve_config
from difftop.utils.machine import cpu_name

ROWS = {  # row name -> agent overrides
    "tdmpc": {"agent": "tdmpc"},
    "difftop (online PG)": {"agent": "difftop", "pg_mode": "online"},
    "difftop (batched PG)": {"agent": "difftop", "pg_mode": "batched"},
    "difftop (online PG, qs_horizon=1)": {"agent": "difftop", "pg_mode": "online", "qs_horizon": 1},
    "difftop (online PG, qs_horizon=all)": {"agent": "difftop", "pg_mode": "online", "qs_horizon": None},
    "difftop_noback": {"agent": "difftop_noback"},
    # the release's DiffTOP (configs/variant/official.yaml, its per-task LM settings) after its MPPI warm-up
    "difftop (official)": {"agent": "difftop", "variant": "official"},
}


def preset_config(rl_preset: str) -> DictConfig:
    """rl.yaml with an rl preset merged in, without Hydra (unresolved: pass it to ``resolve_config``)."""
    configs = Path(__file__).resolve().parents[1] / "configs"
    base = OmegaConf.load(configs / "rl.yaml")
    base.pop("defaults")
    if rl_preset == "paper":  # rl.yaml's own values
        return base
    path = configs / "preset" / f"{rl_preset}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise UserError(f"unknown rl_preset {rl_preset!r}; choose one of: {', '.join(names)}")
    return OmegaConf.merge(base, OmegaConf.load(path))


def _variant(name: str) -> DictConfig:
    """configs/variant/<name>.yaml (a Hydra group packaged at the top level) as a plain config."""
    return OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "variant" / f"{name}.yaml")


def main(cfg: DictConfig) -> dict:
    unknown = [r for r in cfg.rows if r not in ROWS]
    if unknown:
        raise UserError(f"unknown bench rl rows {unknown}; choose from: {', '.join(ROWS)}")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    from difftop.envs import make_env

    base = OmegaConf.merge(preset_config(cfg.rl_preset), {"task": cfg.task, "obs": cfg.obs, "seed": cfg.seed,
                                  "device": cfg.get("device", "cpu")},
                           OmegaConf.from_dotlist(list(cfg.overrides)))
    rcfg = resolve_config(base)
    env = make_env(rcfg.task, rcfg.obs, seed=cfg.seed, action_repeat=rcfg.action_repeat,
                   episode_length=rcfg.episode_length)
    L = rcfg.episode_length // rcfg.action_repeat
    obs_shape, m = env.observation_space.shape, env.action_space.shape[0]
    rng = np.random.default_rng(cfg.seed)
    buffer = ReplayBuffer(obs_shape, m, L, cfg.buffer_episodes * L, rcfg.horizon, pixels=rcfg.obs == "pixels",
                          device=rcfg.buffer_device)
    observations = []
    for ep in range(cfg.buffer_episodes):
        o, _ = env.reset(seed=ep)
        obs = [o]
        acts = rng.uniform(-1, 1, (L, m)).astype(np.float32)
        rews = np.zeros(L, np.float32)
        for t in range(L):
            o, rews[t], *_ = env.step(acts[t])
            obs.append(o)
        buffer.add_episode(np.stack(obs), acts, rews)
        observations.extend(obs)
    rows = [r for r in ROWS if r in cfg.rows] if cfg.rows else list(ROWS)
    agents = {}
    for name in rows:
        torch.manual_seed(cfg.seed)
        row = OmegaConf.create(ROWS[name])
        if row.get("variant") == "official":  # what `variant=official` composes (the task's action repeat
            # stays the buffer's), with the command line's overrides on top
            row = OmegaConf.merge(_variant("official"), row, OmegaConf.from_dotlist(list(cfg.overrides)))
            row.action_repeat = rcfg.action_repeat
        agents[name] = make_agent(resolve_config(OmegaConf.merge(rcfg, row)), obs_shape, m, rcfg.device)
    step = 10**6  # schedules at their end values: full horizon
    times: dict[str, list[float]] = {r: [] for r in rows}
    for rnd in range(cfg.warmup + cfg.rounds):
        for name, agent in agents.items():
            o = observations[(rnd * 7) % len(observations)]
            t0 = time.perf_counter()
            for i in range(cfg.steps_per_round):
                agent.act(o, step=step, t0=i == 0)
                agent.update(buffer, step + i)
            agent.end_episode()
            dt = (time.perf_counter() - t0) / cfg.steps_per_round
            if rnd >= cfg.warmup:
                times[name].append(dt)
        print(f"round {rnd + 1}/{cfg.warmup + cfg.rounds}: "
              + ", ".join(f"{n} {1e3 * times[n][-1]:.0f} ms" for n in rows if times[n]), flush=True)
    ref = statistics.median(times["tdmpc"]) if "tdmpc" in times else None
    table = []
    for name in rows:
        med = statistics.median(times[name])
        table.append({"row": name, "ms_per_agent_step": 1e3 * med,
                      "env_steps_per_s": rcfg.action_repeat / med,
                      "ratio_vs_tdmpc": (ref / med) if ref else float("nan"), "n": len(times[name])})
    header = (f"# bench rl: {rcfg.task} ({rcfg.obs}), rl_preset={cfg.rl_preset}, batch {rcfg.batch_size}, "
              f"mlp {rcfg.mlp_dim}, action repeat {rcfg.action_repeat}, threads {torch.get_num_threads()}, "
              f"{cpu_name()}"
              + (f", {torch.cuda.get_device_name(rcfg.device)}" if rcfg.device.startswith("cuda") else ""))
    lines = [header, "", "| agent | ms / agent step | env steps / s | ratio vs TD-MPC |", "|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['row']} | {r['ms_per_agent_step']:.0f} | {r['env_steps_per_s']:.1f} | "
                     f"{r['ratio_vs_tdmpc']:.2f}x |")
    text = "\n".join(lines)
    print("\n" + text)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"rl{cfg.tag}"
    Path(f"{stem}.md").write_text(text + "\n")
    with open(f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    Path(f"{stem}.json").write_text(json.dumps({"config": OmegaConf.to_container(cfg), "rows": table,
                                                "times_s": times}, indent=2))
    print(f"saved {stem}.md, .csv, .json")
    return {"rows": table}
