"""`difftop bench trajopt`: time solve+backward of every solver x backward setting.

All rows run in one process on the same problem (TD-MPC sizes, see bench/problem.py) so
the ratios between rows hold even on a loaded machine; the timed runs are interleaved (round
r times run r of every row) so that a load that comes and goes hits every row alike, and both
wall-clock and process CPU time are reported (CPU time ignores time-slicing by other jobs).
Each timed run covers what an agent does per acting step: encode, warm start from pi, solve,
and (with a backward) the backward pass of a loss on the first action into the encoder,
dynamics, reward and Q.
"""

from __future__ import annotations

import csv
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from difftop.bench.problem import PlanningProblem, official_problem
from difftop.trajopt import TrajOpt
from difftop.utils.machine import cpu_name

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _time_interleaved(fns: dict, runs: int, warmup: int, max_seconds: float) -> tuple[dict, dict, dict]:
    """Warm every row up, then `runs` rounds of one timed run per row; a row whose timed runs
    have taken max_seconds in all stops after at least 3. Returns wall and CPU seconds per row,
    and each row's last output."""
    out = {}
    for name, fn in fns.items():
        for _ in range(max(warmup, 1)):
            out[name] = fn()
    wall: dict = {name: [] for name in fns}
    cpu: dict = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            if sum(wall[name]) > max_seconds and len(wall[name]) >= 3:
                continue
            t, c = time.perf_counter(), time.process_time()
            out[name] = fn()
            cpu[name].append(time.process_time() - c)
            wall[name].append(time.perf_counter() - t)
    return wall, cpu, out


def _solve_fn(P: PlanningProblem, layer: TrajOpt, with_backward: bool, w: torch.Tensor):
    model = P.model

    def run() -> dict:
        model.zero_grad(set_to_none=True)
        if with_backward:
            z0 = model.h(P.obs)
        else:
            with torch.no_grad():
                z0 = model.h(P.obs)
        init = P.policy_init(z0)
        ctx = torch.enable_grad() if with_backward else torch.no_grad()
        with ctx:
            actions, info = layer(P.objective(z0), init)
            if with_backward:
                (actions[:, 0] * w).sum().backward()
        return {"info": info, "actions": actions.detach(), "z0": z0.detach(), "init": init}

    return run


def _objective_at(P: PlanningProblem, z0: torch.Tensor, actions: torch.Tensor) -> float:
    with torch.no_grad():
        return P.objective(z0)(actions.clamp(-1, 1)).mean().item()


def _row(name, solver, backward, options, B, wall, cpu, out, P) -> dict:
    row = {"row": name, "solver": solver, "backward": backward, "options": options, "batch": B,
           "n": len(wall),
           "median_ms": 1e3 * statistics.median(wall), "min_ms": 1e3 * min(wall),
           "cpu_ms": 1e3 * statistics.median(cpu), "J_init": float("nan"), "J": float("nan"),
           "iters": float("nan"), "converged": float("nan"), "flagged": float("nan")}
    info = out.get("info")
    if info is not None:
        row.update(J=_objective_at(P, out["z0"], out["actions"]),
                   J_init=_objective_at(P, out["z0"], out["init"]),
                   iters=info.iterations.double().mean().item(),
                   converged=info.converged.double().mean().item(),
                   flagged=(info.status != 0).double().mean().item())
    return row


def _check(cfg: DictConfig) -> None:
    """Bad settings fail here, in one line, before anything is timed."""
    from difftop.errors import UserError

    for r in cfg.rows:
        if not OmegaConf.is_dict(r) or not {"name", "solver", "backward", "batches"} <= set(r):
            raise UserError("bench trajopt: every entry of rows is {name, solver, backward, batches, "
                            f"options}}, got {r!r} (to run some rows only: only=[name,...])")
    names = [r.name for r in cfg.rows] + ["theseus-official", "mppi-tdmpc"]
    unknown = [n for n in cfg.get("only") or [] if n not in names]
    if unknown:
        raise UserError(f"bench trajopt: unknown rows in only: {unknown}; choose from: {', '.join(names)}")
    bad = [b for b in cfg.batch_sizes if not isinstance(b, int) or isinstance(b, bool) or b < 1]
    if bad or not cfg.batch_sizes:
        raise UserError(f"bench trajopt: batch_sizes must be positive integers, got {list(cfg.batch_sizes)}")
    if cfg.dtype not in DTYPES:
        raise UserError(f"bench trajopt: dtype must be one of {', '.join(DTYPES)}, got {cfg.dtype!r}")
    if cfg.reference not in names:
        raise UserError(f"bench trajopt: reference {cfg.reference!r} is not a row; "
                        f"choose from: {', '.join(names)}")


def main(cfg: DictConfig) -> int:
    _check(cfg)
    only = set(cfg.get("only") or [])

    def wanted(name: str) -> bool:
        return not only or name in only

    torch.set_num_threads(int(cfg.threads))
    dtype = DTYPES[cfg.dtype]
    pc = cfg.problem
    results: list[dict] = []
    for B in cfg.batch_sizes:
        P = official_problem(int(B), obs_dim=pc.obs_dim, latent_dim=pc.latent_dim, mlp_dim=pc.mlp_dim,
                             horizon=pc.horizon, action_dim=pc.action_dim, gamma=pc.gamma, q_tau=pc.q_tau,
                             head_gain=pc.head_gain, seed=int(cfg.seed), dtype=dtype,
                             batch_rewards=bool(pc.get("batch_rewards", False)))
        w = torch.randn(int(B), pc.action_dim, generator=torch.Generator().manual_seed(1)).to(dtype)
        todo = [(r.name, r.solver, r.backward, dict(r.get("options", {}))) for r in cfg.rows
                if int(B) in r.batches and wanted(r.name)]
        if cfg.theseus.enabled and int(B) in cfg.theseus.batches and wanted("theseus-official"):
            opts = {"max_iters": cfg.theseus.max_iters, "step_size": cfg.theseus.step_size,
                    "damping": cfg.theseus.damping, "backward_iters": cfg.theseus.backward_iters}
            todo.append(("theseus-official", "theseus", "truncated", opts))
        fns, meta = {}, {}
        for name, solver, backward, opts in todo:
            try:
                layer = TrajOpt(solver=solver, backward=backward, **opts)
            except ImportError as e:
                print(f"skipping {name}: {str(e).splitlines()[0]}")
                continue
            fns[name] = _solve_fn(P, layer, backward != "none", w)
            meta[name] = (solver, backward, " ".join(f"{k}={v}" for k, v in opts.items()))
        if cfg.mppi.enabled and int(B) == 1 and wanted("mppi-tdmpc"):
            fns["mppi-tdmpc"] = _mppi_fn(cfg, P)
            m = cfg.mppi
            meta["mppi-tdmpc"] = ("mppi", "none", f"iterations={m.iterations} num_samples={m.num_samples} "
                                                  f"num_elites={m.num_elites} mixture_coef={m.mixture_coef}")
        print(f"B={B}: {len(fns)} rows, {cfg.runs} interleaved rounds", flush=True)
        wall, cpu, out = _time_interleaved(fns, int(cfg.runs), int(cfg.warmup), float(cfg.max_row_seconds))
        for name in fns:
            row = _row(name, *meta[name], int(B), wall[name], cpu[name], out[name], P)
            results.append(row)
            print(f"B={B:<4d} {name:24s} {row['median_ms']:10.1f} ms  cpu {row['cpu_ms']:9.1f} ms  "
                  f"(n={row['n']})  J {row['J']:.4f} (init {row['J_init']:.4f})  iters {row['iters']:.1f}  "
                  f"converged {row['converged']:.2f}", flush=True)
    _add_theseus_ratio(results)
    ratios = _ratios(results, cfg.reference)
    _save(cfg, results, ratios)
    return 0


def _mppi_fn(cfg: DictConfig, P: PlanningProblem):
    from difftop.rl.mppi import MPPIPlanner

    m = cfg.mppi
    planner = MPPIPlanner(P.model, horizon=P.horizon, iterations=m.iterations, num_samples=m.num_samples,
                          num_elites=m.num_elites, mixture_coef=m.mixture_coef, discount=P.gamma)

    def run() -> dict:
        with torch.no_grad():
            z0 = P.model.h(P.obs)
            a = planner.plan(z0, t0=True, eval_mode=False, horizon=P.horizon, std=0.05)
        return {"a": a}

    return run


def _add_theseus_ratio(results: list[dict]) -> None:
    """Each row's median wall and CPU time over the Theseus row's, at the same batch size."""
    base = {r["batch"]: r for r in results if r["row"] == "theseus-official"}
    for r in results:
        b = base.get(r["batch"])
        r["vs_theseus"] = r["median_ms"] / b["median_ms"] if b else float("nan")
        r["vs_theseus_cpu"] = r["cpu_ms"] / b["cpu_ms"] if b else float("nan")


def _ratios(results: list[dict], reference: str) -> list[dict]:
    out = []
    for B in sorted({r["batch"] for r in results}):
        by = {r["row"]: r for r in results if r["batch"] == B}
        ref = by.get(reference)
        if ref is None:
            continue
        for base in ("theseus-official", "mppi-tdmpc"):
            if base in by:
                b = by[base]
                out.append({"batch": B, "row": reference, "vs": base,
                            "time_ratio": ref["median_ms"] / b["median_ms"],
                            "cpu_ratio": ref["cpu_ms"] / b["cpu_ms"],
                            "J": ref["J"], "J_vs": b["J"],
                            "J_not_worse": bool(b["J"] != b["J"] or ref["J"] >= b["J"] - 1e-6)})
    return out


def _save(cfg: DictConfig, results: list[dict], ratios: list[dict]) -> None:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"trajopt{cfg.tag}"
    keys = list(results[0].keys()) if results else []
    with open(f"{stem}.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=keys)
        wr.writeheader()
        wr.writerows(results)
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(),
           "python": platform.python_version(),
           "machine": platform.machine(), "processor": cpu_name(), "date": time.strftime("%Y-%m-%d %H:%M")}
    lines = [f"# difftop bench trajopt{cfg.tag}", "",
             f"{env['date']}, torch {env['torch']}, {env['threads']} thread(s), {env['processor']}, "
             f"dtype {cfg.dtype}, median of n timed runs after {cfg.warmup} warm-up runs. "
             f"Problem: latent {cfg.problem.latent_dim}, MLP {cfg.problem.mlp_dim}, horizon "
             f"{cfg.problem.horizon}, action dim {cfg.problem.action_dim}, q_tau {cfg.problem.q_tau}. "
             "Time = encode + pi warm start + solve + backward of a loss on the first action. "
             "Timed runs interleaved across rows; cpu = process CPU time; x Theseus = median wall time "
             "over the theseus-official row's at the same batch.", "",
             "| batch | row | solver | backward | options | n | median ms | cpu ms | x Theseus | J init "
             "| J final | iters | converged |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['batch']} | {r['row']} | {r['solver']} | {r['backward']} | {r['options']} | "
                     f"{r['n']} | "
                     f"{r['median_ms']:.1f} | {r['cpu_ms']:.1f} | {r['vs_theseus']:.3f} | "
                     f"{r['J_init']:.4f} | {r['J']:.4f} | {r['iters']:.1f} | {r['converged']:.2f} |")
    if ratios:
        lines += ["", "| batch | row | vs | time ratio | cpu ratio | J row | J vs | J not worse |",
                  "|---|---|---|---|---|---|---|---|"]
        for q in ratios:
            lines.append(f"| {q['batch']} | {q['row']} | {q['vs']} | {q['time_ratio']:.3f} | "
                         f"{q['cpu_ratio']:.3f} | {q['J']:.4f} | {q['J_vs']:.4f} | {q['J_not_worse']} |")
    Path(f"{stem}.md").write_text("\n".join(lines) + "\n")
    config = OmegaConf.to_container(cfg, resolve=True)
    Path(f"{stem}.json").write_text(json.dumps({"env": env, "config": config,
                                                "results": results, "ratios": ratios}, indent=1))
    print("\n".join(lines))
    print(f"\nsaved {stem}.md, .csv, .json")
