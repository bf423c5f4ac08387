"""Fixed-data paired test: does the PG loss through the solve move the model toward better control?

Issue 31. Full runs compare DiffTOP with its no-backward twin through everything that differs between two
training runs (the data each collects, exploration, the chaos of RL); this probe removes all of it. From
one run's checkpoint (weights and TD optimizer state) and its replay buffer, it makes two copies of the
agent and applies the SAME ``--updates`` minibatches to both (drawn once per update from the buffer with
its priorities frozen, and the same torch seed for each update's noise):

- arm A: the model losses only (TD-MPC's losses, Q_s's TD loss, pi's update): what ``difftop_noback`` does;
- arm B: the same update, plus the PG loss ``-c0 min Q_s(s, a*_0(theta))`` through the solve, as
  ``agent=difftop`` applies it. ``--pg-mode online`` (its default): before the update of every
  ``--pg-every``-th minibatch, one step of the separate PG optimizer (a fresh Adam, ``pg_lr``, clipped at
  ``pg_grad_clip_norm``) on the gradient over the minibatch's first ``--pg-states`` states (their mean,
  ``pg_reduce=sum``: their sum). Online training takes one such step per episode over its L acting states
  (``--pg-every L --pg-states L`` gives that ratio; the solve's warm start here is pi's mean, not a noisy
  rollout). ``--pg-mode batched``: the PG loss on the first ``pg_batch_size`` states added to the update's
  TD gradient (``pg_mode=batched``).

This is repeated for ``--seeds`` K draws of the minibatch sequence. Both agents of a seed then act with the
solve (no exploration) on the same ``--episodes`` E evaluation episodes (env seeds ``--eval-seed`` + j, the
same for every seed and arm), in lockstep. Reported per seed: the return of A and B and B - A; then the
mean difference with a 95% percentile bootstrap interval over seeds. The objective-mismatch view, per arm:
the mean objective J of the executed plans (the model's predicted discounted value) against the realised
discounted return-to-go from the same states (first half of each episode, where the episode's end cuts
little off it). ``start`` is the checkpoint itself on the same episodes.

``--set key=value`` changes the run's config for both arms (e.g. ``trajopt.bounds=tanh``; ``c0`` and
``pg_null`` reach only arm B's PG loss). ``--set c0=0`` is a control: B's PG path runs, its steps are zero,
and B must equal A exactly. Works from difftop and difftop_noback state runs (``variant=official`` runs
too: their settings are in the run's config).

    .venv/bin/python -m difftop.diagnostics.fixed_data_paired runs/mech/reacher-easy/difftop_noback/seed1 \
        --updates 200 --seeds 5 --episodes 10 --set trajopt.bounds=tanh --out results/rl/fixed_data/reacher
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from omegaconf import OmegaConf

from difftop.diagnostics._runs import buffer_file
from difftop.diagnostics._stats import bootstrap_ci
from difftop.errors import UserError
from difftop.rl.tdmpc import Agent, clipped_step, upgrade_state
from difftop.utils.checkpoint import CheckpointError, load_checkpoint
from difftop.utils.machine import cpu_name

__all__ = ["load_run", "pg_step", "run_arms", "evaluate_solve", "main"]

PG_MODES = ("online", "batched")
FORBIDDEN = ("variant", "agent", "pg_mode", "obs", "task")  # fixed by the run (or by the arm)


class _Preset:
    """A stand-in for the replay buffer inside :meth:`Agent.update`: it hands out the minibatch drawn for
    this update (the same object to both arms) and keeps the run's priorities frozen."""

    def __init__(self, horizon: int):
        self.horizon = horizon
        self.batch = None

    def sample(self, *args, **kwargs):
        return self.batch

    def update_priorities(self, idxs, priorities) -> None:
        pass


def _override(cfg, sets: list[str]):
    """The run's config with ``key=value`` items (YAML values) applied; keys must exist in the run's config
    or in today's rl.yaml (keys added since the run was made)."""
    from difftop.cli import CONFIG_DIR

    known = OmegaConf.load(CONFIG_DIR / "rl.yaml")
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set takes key=value, got {item!r}")
        if key.split(".")[0] in FORBIDDEN:
            raise UserError(f"--set {key}: fixed by the run (use a run made with the {key} you want)")
        if OmegaConf.select(cfg, key, default="<absent>") == "<absent>" and \
                OmegaConf.select(known, key, default="<absent>") == "<absent>":
            raise UserError(f"--set {key}: no such key in the run's config or in rl.yaml")
        OmegaConf.update(cfg, key, yaml.safe_load(value), force_add=True)
    return cfg


def load_run(run: str | Path, sets: list[str] = ()):
    """(run config with ``sets`` applied, checkpoint dict, replay buffer) of a state-based DiffTOP run."""
    from difftop.rl.replay import ReplayBuffer

    try:
        state = load_checkpoint(run, "rl")
    except CheckpointError as e:
        raise UserError(str(e)) from None
    cfg = OmegaConf.create(state["config"])
    if cfg.agent not in ("difftop", "difftop_noback") or cfg.obs != "state":
        raise UserError(f"{run}: needs a state-based difftop or difftop_noback run, got {cfg.agent} "
                        f"from {cfg.obs}")
    cfg = _override(cfg, list(sets))
    cfg.device = "cpu"
    path = buffer_file(run)
    if not path.is_file():
        raise UserError(f"{run}: no replay buffer (buffer.npz); the run was made with save_buffer=false")
    with np.load(path) as f:
        saved = {k: f[k] for k in f.files}
    L, horizon, cap, pixels = (int(v) for v in saved["meta"])
    buffer = ReplayBuffer(saved["obs"].shape[2:], saved["action"].shape[-1], L, cap * L, horizon,
                          pixels=bool(pixels), alpha=cfg.per_alpha, beta=cfg.per_beta)
    buffer.load_state_dict(saved)
    return cfg, state, buffer


def _arm(cfg, state: dict, buffer, pg_mode: str) -> Agent:
    """One copy of the run's agent: its weights and TD/pi optimizer states; a fresh PG optimizer (a
    noback run never stepped one, and the PG steps measured here must not carry an earlier run's
    momentum). ``pg_mode``: none (arm A) or online / batched (arm B)."""
    from difftop.rl.difftop_agent import make_agent

    c = OmegaConf.create(OmegaConf.to_container(cfg))
    c.agent, c.pg_mode = ("difftop_noback", "none") if pg_mode == "none" else ("difftop", pg_mode)
    try:
        agent = make_agent(c, buffer.obs_shape, buffer.action_dim, "cpu")
    except ValueError as e:
        raise UserError(f"agent: {e}") from None
    saved = upgrade_state(state["agent"])
    for key, module in agent.modules().items():
        if key in saved["modules"]:
            module.load_state_dict(saved["modules"][key])
        elif key != "null_critic":  # pg_null's frozen random Q_s is built from its own seed
            raise UserError(f"the checkpoint has no {key!r} weights")
    for key, optim in agent.optimizers().items():
        if key != "pg_optim" and key in saved.get("optimizers", {}):
            # a copy: Adam keeps the loaded moment tensors themselves, which two arms would then share
            optim.load_state_dict(copy.deepcopy(saved["optimizers"][key]))
    return agent


def pg_step(agent: Agent, obs: torch.Tensor, step: int) -> float:
    """One step of the PG optimizer on ``-c0 min Q_s(s, a*_0)`` over ``obs`` (mean, or sum under
    ``pg_reduce=sum``), as the online scheme's step at an episode's end; returns the gradient's norm."""
    actor = agent.actor
    with torch.enable_grad():
        a = actor.solve(agent.model.h(obs), step, explore=False, record=False)[:, 0]
        loss = actor._pg_loss(obs, a)
        loss = loss.sum() if actor.pg_reduce == "sum" else loss.mean()
        grads = torch.autograd.grad(loss, actor.pg_params, allow_unused=True)
    for p, g in zip(actor.pg_params, grads):
        p.grad = torch.zeros_like(p) if g is None else g
    norm, ok = clipped_step(actor.pg_optim, actor.pg_params, agent.cfg.pg_grad_clip_norm)
    actor.skipped_steps += not ok
    return norm


def run_arms(cfg, state: dict, buffer, *, updates: int, seed: int, pg_mode: str = "online",
             pg_every: int = 1, pg_states: int | None = None) -> tuple[Agent, Agent, dict]:
    """(arm A, arm B, B's PG metrics) after ``updates`` shared minibatches drawn with ``seed``."""
    a, b = _arm(cfg, state, buffer, "none"), _arm(cfg, state, buffer, pg_mode)
    rng = np.random.default_rng([int(seed), 31])
    H = min(int(cfg.horizon), max(1, buffer.horizon))
    n = int(pg_states or cfg.pg_batch_size)
    step0 = int(state["agent_step"])
    preset, norms = _Preset(buffer.horizon), []
    for i in range(updates):
        preset.batch = buffer.sample(int(cfg.batch_size), rng, horizon=H)
        if pg_mode == "online" and i % pg_every == 0:
            with torch.random.fork_rng(devices=[]):
                norms.append(pg_step(b, preset.batch.obs[0, :n], step0 + i))
        for agent in (a, b):
            torch.manual_seed(int(seed) * 1_000_003 + i)  # the update's own noise (pi's targets), both arms
            agent.update(preset, step0 + i)
    if pg_mode == "batched":  # the PG loss was part of every update; its gradient is inside the TD step's
        return a, b, {"pg_steps": updates, "pg_grad_norm": float("nan")}
    pg = {"pg_steps": len(norms), "pg_grad_norm": float(np.mean(norms)) if norms else float("nan")}
    return a, b, pg


class _RecordJ:
    """Wraps the actor's trajopt layer during evaluation, keeping each solve's final objective J (B,)."""

    def __init__(self, layer):
        self.layer, self.values = layer, []

    def __call__(self, objective, init):
        actions, info = self.layer(objective, init)
        self.values.append(info.objective.detach().double().cpu().numpy())
        return actions, info


def evaluate_solve(agent: Agent, envs: list, episodes: int, step: int, seed_base: int) -> dict:
    """Episodes acted by the solve (no exploration), ``len(envs)`` at a time in lockstep: returns (E,),
    the mean J of the executed plans and the mean J - realised discounted return-to-go, over the first
    half of each episode."""
    actor, gamma = agent.actor, float(agent.cfg.discount)
    returns, values, gaps = [], [], []
    base_layer = actor.trajopt
    try:
        for first in range(0, episodes, len(envs)):
            group = envs[: min(len(envs), episodes - first)]
            obs = [env.reset(seed=seed_base + first + i)[0] for i, env in enumerate(group)]
            rewards, Js, done = [[] for _ in group], [[] for _ in group], [False] * len(group)
            while not all(done):
                actor.trajopt = rec = _RecordJ(base_layer)
                with torch.no_grad():
                    plan = actor.solve(agent.model.h(torch.as_tensor(np.stack(obs))), step, explore=False,
                                       record=False)
                act = Agent._finite(plan[:, 0])
                for i, env in enumerate(group):
                    if done[i]:
                        continue
                    obs[i], r, terminated, truncated, _ = env.step(act[i])
                    rewards[i].append(float(r))
                    Js[i].append(float(rec.values[-1][i]))
                    done[i] = terminated or truncated
            for r, J in zip(rewards, Js):
                r, J = np.asarray(r), np.asarray(J)
                G = np.zeros_like(r)  # discounted return-to-go, truncated at the episode's end
                acc = 0.0
                for t in range(len(r) - 1, -1, -1):
                    acc = r[t] + gamma * acc
                    G[t] = acc
                half = max(1, len(r) // 2)
                returns.append(r.sum())
                values.append(J.mean())
                gaps.append((J[:half] - G[:half]).mean())
    finally:
        actor.trajopt = base_layer
    return {"returns": np.asarray(returns), "J": float(np.mean(values)), "gap": float(np.mean(gaps))}


def _fmt(x: float) -> str:
    return f"{x:+.4g}" if x else "0"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a state-based difftop / difftop_noback run (checkpoint, buffer.npz)")
    ap.add_argument("--updates", type=int, default=20, help="minibatches applied to both arms")
    ap.add_argument("--seeds", type=int, default=5, help="draws of the minibatch sequence (K)")
    ap.add_argument("--episodes", type=int, default=10, help="evaluation episodes per arm (E)")
    ap.add_argument("--eval-seed", type=int, default=30_000, help="env seed of the first evaluation episode")
    ap.add_argument("--pg-mode", choices=PG_MODES, default="online")
    ap.add_argument("--pg-every", type=int, default=1, help="online: a PG step every this many minibatches")
    ap.add_argument("--pg-states", type=int, default=None, help="online: states per PG step (pg_batch_size)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="sets",
                    help="change the run's config for both arms, e.g. trajopt.bounds=tanh, c0=0")
    ap.add_argument("--out", type=Path, help="write <out>.csv (per seed) and <out>.md (the table)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    try:
        for key in ("updates", "seeds", "episodes", "pg_every"):
            if getattr(args, key) < 1:
                raise UserError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
        text, rows = report(args, _partial(args))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out.with_suffix(".csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), restval="")
            w.writeheader()
            w.writerows(rows)
        args.out.with_suffix(".md").write_text(text + "\n")
        args.out.with_suffix(".partial.jsonl").unlink(missing_ok=True)
    return 0


class _Partial:
    """Finished seeds of an interrupted probe (``<out>.partial.jsonl``, one JSON row per line), so that a
    rerun with the same arguments skips them: a trainer-dose row takes over an hour of 2-core CPU per seed,
    and the seeds are independent and deterministic (a rerun reproduced its first seeds exactly). Rows of
    other arguments are ignored (the file starts over)."""

    def __init__(self, path: Path | None, key: dict):
        self.path, self.key, self.rows = path, key, {}
        if path is not None and path.is_file():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut by the interruption
                    continue
                if rec.get("key") == key:
                    self.rows[str(rec["row"]["seed"])] = rec["row"]

    def get(self, seed) -> dict | None:
        return self.rows.get(str(seed))

    def add(self, row: dict) -> None:
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps({"key": self.key, "row": row}, default=float) + "\n")


def _partial(args) -> _Partial:
    keys = ("run", "updates", "seeds", "episodes", "eval_seed", "pg_mode", "pg_every", "pg_states", "sets")
    key = {k: str(getattr(args, k)) for k in keys}
    return _Partial(args.out.with_suffix(".partial.jsonl") if args.out else None, key)


def report(args, partial: _Partial | None = None) -> tuple[str, list[dict]]:
    """(the markdown table and summary, the per-seed rows) of one probe run; seeds found in ``partial``
    (an interrupted run's) are not run again."""
    partial = partial or _Partial(None, {})
    from difftop.rl.trainer import MAX_EVAL_ENVS, build

    cfg, state, buffer = load_run(args.run, args.sets)
    step = int(state["agent_step"])
    env, evals, _ = build(cfg, eval_episodes=min(args.episodes, MAX_EVAL_ENVS))  # the run's own env settings
    env.close()
    t0 = time.perf_counter()
    try:
        start = partial.get("start")
        if start is None:
            ref = evaluate_solve(_arm(cfg, state, buffer, "none"), evals, args.episodes, step, args.eval_seed)
            start = {"seed": "start", "return_A": float(ref["returns"].mean()),
                     "return_B": float(ref["returns"].mean()), "diff": 0.0, "J_A": ref["J"], "J_B": ref["J"],
                     "gap_A": ref["gap"], "gap_B": ref["gap"], "pg_steps": 0, "pg_grad_norm": float("nan"),
                     "cpu": cpu_name()}
            partial.add(start)
        rows = [start]
        for k in range(args.seeds):
            done = partial.get(k)
            if done is not None:
                rows.append(done)
                print(f"seed {k + 1}/{args.seeds}: kept from an interrupted run", file=sys.stderr, flush=True)
                continue
            a, b, pg = run_arms(cfg, state, buffer, updates=args.updates, seed=k, pg_mode=args.pg_mode,
                                pg_every=args.pg_every, pg_states=args.pg_states)
            ea = evaluate_solve(a, evals, args.episodes, step + args.updates, args.eval_seed)
            eb = evaluate_solve(b, evals, args.episodes, step + args.updates, args.eval_seed)
            rows.append({"seed": k, "return_A": float(ea["returns"].mean()),
                         "return_B": float(eb["returns"].mean()),
                         "diff": float((eb["returns"] - ea["returns"]).mean()), "J_A": ea["J"],
                         "J_B": eb["J"], "gap_A": ea["gap"], "gap_B": eb["gap"], **pg, "cpu": cpu_name()})
            partial.add(rows[-1])
            # a long probe (minutes per seed): one line per finished seed, so a log shows how far it got
            print(f"seed {k + 1}/{args.seeds}: return A {rows[-1]['return_A']:.1f}, "
                  f"B {rows[-1]['return_B']:.1f} ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr, flush=True)
    finally:
        for e in evals:
            e.close()
    d = np.array([r["diff"] for r in rows[1:]])
    lo, hi = bootstrap_ci(d)
    lines = [f"{args.run}: {cfg.task}, {step * int(cfg.action_repeat)} env steps, {args.updates} minibatches "
             f"of {cfg.batch_size}, PG {args.pg_mode} (c0 {cfg.c0}, trajopt {cfg.trajopt.solver}/"
             f"{cfg.trajopt.get('bounds', 'project')}), {args.episodes} eval episodes from env seed "
             f"{args.eval_seed}; {time.perf_counter() - t0:.0f} s",
             "", "| seed | return A (model losses) | return B (+ PG) | B - A | J A | J B | J - G A | J - G B "
             "| PG steps | PG grad norm | CPU |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    # each row's CPU: a row resumed across machines mixes them, and the same seed's arm A differed by 78
    # between two (results/rl/mechanism.md); "?": kept from a partial file written before it was recorded
    for r in rows:
        lines.append(f"| {r['seed']} | {r['return_A']:.2f} | {r['return_B']:.2f} | {_fmt(r['diff'])} | "
                     f"{r['J_A']:.3f} | {r['J_B']:.3f} | {r['gap_A']:+.3f} | {r['gap_B']:+.3f} | "
                     f"{r['pg_steps']} | {r['pg_grad_norm']:.3g} | {r.get('cpu', '?')} |")
    lines += ["", f"B - A over {len(d)} seeds: mean {_fmt(d.mean())}, 95% bootstrap CI [{_fmt(lo)}, "
              f"{_fmt(hi)}], B > A in {int((d > 0).sum())}, B = A in {int((d == 0).sum())}"]
    return "\n".join(lines), rows


if __name__ == "__main__":
    raise SystemExit(main())
