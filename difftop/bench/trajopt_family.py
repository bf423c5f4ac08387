"""`difftop bench trajopt-family`: the layer with its defaults against Theseus on a family of problems.

Per problem and batch size (all rows of one problem in one process, timed runs interleaved, threads as
configured, median of `runs`, wall and CPU time):

* `theseus`: the official configuration (LM on 1000 - J, 50 iterations, truncated backward);
  its final objective J_ref is the reference.
* `defaults`: `TrajOpt()` as a user gets it (solve + implicit backward).
* `reach`: the layer with max_iters = k*, the first iteration count whose objective is >= J_ref
  (found on an untimed trace of the solve, the stopping rules off): the time to reach Theseus'
  objective.
* `zero`: max_iters=0 (encode, warm start, one evaluation, backward): the fixed cost; with the
  `defaults` row it gives the cost of an iteration, hence the objective difftop reaches in Theseus'
  time (`J_eq`, read off the trace).
* any `rows` of the config (candidate settings, e.g. stopping rules).

Objectives are means over the batch of J at the returned actions clamped to the box (Theseus scores
the clamp). `tune=true` also replays stopping rules (ftol x window) on the untimed traces, with the
time model zero + iterations x per-iteration cost, to choose a rule on the tuning split.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from difftop.bench.family import INITS, FamilyProblem, Spec, build, draw, trained_specs
from difftop.bench.trajopt import _time_interleaved
from difftop.trajopt import TrajOpt
from difftop.trajopt.box import Box
from difftop.trajopt.evaluate import Problem
from difftop.trajopt.solvers import run_solver
from difftop.utils.machine import cpu_name

#: J "not worse" than the reference when within this fraction of max(1, |J_ref|) (float32 rounding of J)
J_SLACK = 1e-5


def _check(cfg: DictConfig) -> None:
    from difftop.errors import UserError

    if cfg.split not in cfg.splits:
        raise UserError(f"bench trajopt-family: split must be one of {', '.join(cfg.splits)}, "
                        f"got {cfg.split!r}")
    bad = [b for b in cfg.batch_sizes if not isinstance(b, int) or isinstance(b, bool) or b < 1]
    if bad or not cfg.batch_sizes:
        raise UserError("bench trajopt-family: batch_sizes must be positive integers, "
                        f"got {list(cfg.batch_sizes)}")
    for key in ("runs", "problems", "large_problems"):
        v = cfg[key]
        if not isinstance(v, int) or isinstance(v, bool) or v < (1 if key != "large_problems" else 0):
            raise UserError(f"bench trajopt-family: {key} must be a positive integer, got {v!r}")
    sp = cfg.splits[cfg.split]
    if any(i not in INITS for i in sp.inits):
        raise UserError(f"bench trajopt-family: inits must be among {', '.join(INITS)}, got {list(sp.inits)}")


def specs(cfg: DictConfig) -> list[Spec]:
    """The split's drawn problems, then its trained ones (`trained`: problem files)."""
    sp = cfg.splits[cfg.split]
    drawn = draw(cfg.split, int(cfg.problems), seed=int(sp.seed), horizons=tuple(sp.horizons),
                 action_dims=tuple(sp.action_dims), head_gains=list(sp.head_gains), q_taus=list(sp.q_taus),
                 inits=list(sp.inits))
    return drawn + trained_specs(cfg.split, list(sp.get("trained") or []), int(sp.seed))


def _run_fn(P: FamilyProblem, layer: TrajOpt, w: torch.Tensor):
    """One acting step with a policy-gradient-like loss: encode, warm start, solve, backward."""

    def run() -> dict:
        P.model.zero_grad(set_to_none=True)
        z0 = P.model.h(P.obs)
        init = P.init(z0)
        actions, info = layer(P.objective(z0), init)
        (actions[:, 0] * w).sum().backward()
        return {"actions": actions.detach(), "z0": z0.detach(), "info": info}

    return run


def objective_at(P: FamilyProblem, z0: torch.Tensor, actions: torch.Tensor) -> float:
    with torch.no_grad():
        return P.objective(z0)(actions.clamp(-1, 1)).double().mean().item()


def trace(P: FamilyProblem, layer: TrajOpt, max_iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(K+1, B) objective and projected-gradient inf-norm of each sample at the start and after each
    iteration of the layer's solver, stopping rules off (ftol 0), no backward; rows after the solve
    stopped repeat the last one."""
    with torch.no_grad():
        z0 = P.model.h(P.obs)
        init = P.init(z0)
        B = init.shape[0]
        prob = Problem(P.objective(z0), init.shape)
        box = Box(layer.low, layer.high, init.shape, init.dtype, init.device)
        rows: list = []
        run_solver(layer.solver, prob, box, init.reshape(B, -1), max_iters=max_iters, tol=layer.tol,
                   trace=rows)
    pgn = rows.pop()
    out = []
    for t in (torch.stack(rows), torch.stack(pgn)):
        t = t.double()
        if t.shape[0] < max_iters + 1:
            t = torch.cat([t, t[-1:].expand(max_iters + 1 - t.shape[0], B)])
        out.append(t)
    return out[0], out[1]


def first_reaching(curve: torch.Tensor, target: float) -> int | None:
    """The first index k with curve[k] >= target - slack, or None."""
    ok = curve >= target - J_SLACK * max(1.0, abs(target))
    idx = torch.nonzero(ok)
    return int(idx[0]) if len(idx) else None


def simulate_rule(J: torch.Tensor, pgn: torch.Tensor, ftol: float, window: int, grad: float,
                  start: int = 4) -> torch.Tensor:
    """(B,) iteration at which each sample stops under the improvement rule of solvers.base.run_solver:
    after an iteration k >= window that moved, stop when J_k - J_{k-window} <= ftol * max(1, |J_{k-window}|)
    and (grad > 0) pgn_k > grad * pgn_{k-window}, for k - window >= start (the solver's warmup_iters:
    lbfgs' sign_iters); a sample whose trace stops changing (converged or stalled) stops at its last
    change. J, pgn: (K+1, B) from trace()."""
    K, B = J.shape[0] - 1, J.shape[1]
    moved = J[1:] != J[:-1]  # (K, B)
    last = torch.where(moved.any(0), K - moved.flip(0).int().argmax(0), torch.zeros(B, dtype=torch.long))
    stop = last.clone()
    if ftol <= 0:
        return stop
    for k in range(window + start, K + 1):
        ref = J[k - window]
        hit = moved[k - 1] & (J[k] - ref <= ftol * ref.abs().clamp(min=1.0)) & (stop > k)
        if grad > 0:
            hit = hit & (pgn[k] > grad * pgn[k - window])
        stop = torch.where(hit, torch.full_like(stop, k), stop)
    return stop


def main(cfg: DictConfig) -> int:
    _check(cfg)
    torch.set_num_threads(int(cfg.threads))
    dtype = torch.float32
    family = specs(cfg)
    results = []
    traces = {}
    for B in cfg.batch_sizes:
        drawn = [s for s in family if not s.checkpoint]
        # every trained problem runs at every batch size: they are few and the ones nearest a user's
        trained = [s for s in family if s.checkpoint]
        todo = family if int(B) == 1 else drawn[: int(cfg.large_problems)] + trained
        for spec in todo:
            results.append(_one(cfg, spec, int(B), dtype, traces))
    tuned = _tune(cfg, results, traces) if cfg.tune else []
    for r in results:  # the traces, for replays of other rules without re-running the solves
        J, pgn = traces[(r["problem"], r["batch"])]
        r["trace_J"], r["trace_pgn"] = J.tolist(), pgn.tolist()
    _save(cfg, family, results, tuned)
    return 0


def _one(cfg: DictConfig, spec: Spec, B: int, dtype, traces: dict) -> dict:
    P = build(spec, B, latent_dim=int(cfg.latent_dim), mlp_dim=int(cfg.mlp_dim), dtype=dtype)
    w = torch.randn(B, spec.action_dim, generator=torch.Generator().manual_seed(1)).to(dtype)
    th = cfg.theseus
    layers = {"theseus": TrajOpt(solver="theseus", backward="truncated", max_iters=th.max_iters,
                                 step_size=th.step_size, damping=th.damping,
                                 backward_iters=th.backward_iters),
              "defaults": TrajOpt(), "zero": TrajOpt(max_iters=0)}
    J_tr, pgn_tr = trace(P, TrajOpt(ftol=0.0), int(cfg.trace_iters))
    traces[(spec.name, B)] = (J_tr, pgn_tr)
    z0 = P.model.h(P.obs).detach()
    th_out = _run_fn(P, layers["theseus"], w)()
    J_ref = objective_at(P, z0, th_out["actions"])
    curve = J_tr.mean(1)
    k_star = first_reaching(curve, J_ref)
    if k_star is not None:
        layers["reach"] = TrajOpt(max_iters=k_star, ftol=0.0)
    for r in cfg.rows:
        layers[r.name] = TrajOpt(**dict(r.options))
    fns = {name: _run_fn(P, layer, w) for name, layer in layers.items()}
    wall, cpu, out = _time_interleaved(fns, int(cfg.runs), int(cfg.warmup), float(cfg.max_row_seconds))
    ms = {n: 1e3 * statistics.median(wall[n]) for n in fns}
    cpu_ms = {n: 1e3 * statistics.median(cpu[n]) for n in fns}
    J = {n: objective_at(P, out[n]["z0"], out[n]["actions"]) for n in fns}
    iters = {n: float(out[n]["info"].iterations.double().max()) for n in fns}
    per_iter = (ms["defaults"] - ms["zero"]) / iters["defaults"] if iters["defaults"] > 0 else float("nan")
    k_eq = math.floor((ms["theseus"] - ms["zero"]) / per_iter) if per_iter > 0 else int(cfg.trace_iters)
    k_eq = max(0, min(k_eq, int(cfg.trace_iters)))
    row = {"problem": spec.name, "batch": B, **spec.as_dict(), "J_init": float(curve[0]), "J_ref": J_ref,
           "k_star": k_star, "J_eq": float(curve[k_eq]), "k_eq": k_eq, "per_iter_ms": per_iter,
           "J_trace_max": float(curve[-1]),
           "ms": ms, "cpu_ms": cpu_ms, "J": J, "iters": iters, "n": {n: len(wall[n]) for n in fns}}
    row["ratio_defaults"] = ms["defaults"] / ms["theseus"]
    row["ratio_reach"] = ms["reach"] / ms["theseus"] if "reach" in ms else float("nan")
    row["defaults_not_worse"] = J["defaults"] >= J_ref - J_SLACK * max(1.0, abs(J_ref))
    print(f"{spec.name:10s} B={B:<4d} H={spec.horizon} m={spec.action_dim:<2d} gain={spec.head_gain:<4} "
          f"tau={spec.q_tau:<5} init={spec.init:8s} | theseus {ms['theseus']:7.1f} ms J {J_ref:.4f} | "
          f"defaults {ms['defaults']:7.1f} ms ({row['ratio_defaults']:.2f}x) J {J['defaults']:.4f} "
          f"it {iters['defaults']:.0f} | reach k*={k_star} {row['ratio_reach']:.2f}x | "
          f"J_eq {row['J_eq']:.4f} (k={k_eq})", flush=True)
    for r in cfg.rows:
        print(f"{'':10s} {r.name:24s} {ms[r.name]:7.1f} ms ({ms[r.name] / ms['theseus']:.2f}x) "
              f"J {J[r.name]:.4f} it {iters[r.name]:.0f}", flush=True)
    return row


def _tune(cfg: DictConfig, results: list[dict], traces: dict) -> list[dict]:
    """Replay each candidate stopping rule on the traces: per batch size, the median over problems of
    the modelled time ratio to Theseus and the share of problems whose objective is not worse."""
    out = []
    grid = [(f, w, g) for f in cfg.tune_grid.ftol for w in cfg.tune_grid.window for g in cfg.tune_grid.grad]
    for ftol, window, grad in grid:
        for B in sorted({r["batch"] for r in results}):
            ratios, ok, gaps = [], [], []
            for r in (r for r in results if r["batch"] == B):
                J, pgn = traces[(r["problem"], B)]
                K = int(cfg.max_iters_default)
                stop = simulate_rule(J[: K + 1], pgn[: K + 1], float(ftol), int(window), float(grad),
                                     start=TrajOpt().solver.warmup_iters)
                stop = stop.clamp(max=K)
                Jf = J.gather(0, stop.unsqueeze(0)).squeeze(0).mean().item()
                t = r["ms"]["zero"] + r["per_iter_ms"] * float(stop.max())
                ratios.append(t / r["ms"]["theseus"])
                ok.append(Jf >= r["J_ref"] - J_SLACK * max(1.0, abs(r["J_ref"])))
                gaps.append(Jf - r["J_ref"])
            out.append({"ftol": float(ftol), "window": int(window), "grad": float(grad), "batch": B,
                        "median_ratio": statistics.median(ratios), "max_ratio": max(ratios),
                        "not_worse": sum(ok) / len(ok), "median_gap": statistics.median(gaps),
                        "min_gap": min(gaps)})
    for q in out:
        print(f"tune ftol={q['ftol']:.0e} window={q['window']} grad={q['grad']} B={q['batch']}: median ratio "
              f"{q['median_ratio']:.3f} (max {q['max_ratio']:.3f}), not worse {q['not_worse']:.2f}, "
              f"J gap median {q['median_gap']:+.4f} min {q['min_gap']:+.4f}")
    return out


def judge(run_json: str, options: dict, batch: int = 1) -> dict:
    """Judge layer settings offline on a stored run of a split (e.g. the tuning split's .json or .json.gz):
    solve each problem with TrajOpt(**options) (its own stopping rules, no backward, untimed) and model its
    time as the run's zero cost + iterations x the run's cost per iteration of the defaults, over the run's
    Theseus time. Why: a candidate solver change is screened on the tuning split in seconds, without
    re-timing Theseus; the modelled ratio holds while the change keeps the per-iteration cost. Returns the
    median and max modelled ratio, the problems ending below Theseus, and the iterations per problem."""
    import gzip

    opener = gzip.open if run_json.endswith(".gz") else open
    with opener(run_json, "rt") as f:
        rows = [r for r in json.load(f)["results"] if r["batch"] == batch]
    ratios, below, iters = [], [], []
    for r in rows:
        P = build(Spec(**{k: r[k] for k in Spec.__dataclass_fields__ if k in r}), batch)
        with torch.no_grad():
            z0 = P.model.h(P.obs)
            actions, info = TrajOpt(**options)(P.objective(z0), P.init(z0))
        k = int(info.iterations.max())
        ratios.append((r["ms"]["zero"] + r["per_iter_ms"] * k) / r["ms"]["theseus"])
        below.append(objective_at(P, z0, actions) < r["J_ref"] - J_SLACK * max(1.0, abs(r["J_ref"])))
        iters.append(k)
    return {"median_ratio": statistics.median(ratios), "max_ratio": max(ratios), "below": sum(below),
            "iters": iters}


def summary(results: list[dict]) -> list[dict]:
    rows = []
    for B in sorted({r["batch"] for r in results}):
        rs = [r for r in results if r["batch"] == B]
        reach = [r["ratio_reach"] for r in rs if r["ratio_reach"] == r["ratio_reach"]]
        rows.append({"batch": B, "problems": len(rs),
                     "median_ratio_defaults": statistics.median(r["ratio_defaults"] for r in rs),
                     "median_cpu_ratio_defaults": statistics.median(
                         r["cpu_ms"]["defaults"] / r["cpu_ms"]["theseus"] for r in rs),
                     "max_ratio_defaults": max(r["ratio_defaults"] for r in rs),
                     "median_ratio_reach": statistics.median(reach) if reach else float("nan"),
                     "reached": len(reach) / len(rs),
                     "defaults_not_worse": sum(r["defaults_not_worse"] for r in rs) / len(rs),
                     "median_gap_defaults": statistics.median(r["J"]["defaults"] - r["J_ref"] for r in rs)})
    return rows


def _save(cfg: DictConfig, family: list[Spec], results: list[dict], tuned: list[dict]) -> None:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"trajopt_family_{cfg.split}{cfg.tag}"
    summ = summary(results)
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "processor": cpu_name(),
           "date": time.strftime("%Y-%m-%d %H:%M")}
    lines = [f"# difftop bench trajopt-family, split {cfg.split}", "",
             f"{env['date']}, torch {env['torch']}, {env['threads']} thread(s), {env['processor']}, float32, "
             f"median of {cfg.runs} interleaved runs after {cfg.warmup} warm-ups. Time = encode + warm "
             "start + solve + backward of a loss on the first action. defaults = `TrajOpt()`; reach = "
             "max_iters k*, the first iteration count at Theseus' objective; J_eq = difftop's objective "
             "after the iterations that fit in Theseus' time (modelled from the zero and defaults rows).", "",
             "| problem | B | H | m | gain | tau | init | Theseus ms | J Theseus | defaults ms | cpu ratio "
             "| ratio | J defaults | iters | k* | reach ratio | J_eq |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['problem']} | {r['batch']} | {r['horizon']} | {r['action_dim']} | "
            f"{'trained' if r.get('checkpoint') else r['head_gain']} | "
            f"{r['q_tau']} | {r['init']} | {r['ms']['theseus']:.1f} | {r['J_ref']:.4f} | "
            f"{r['ms']['defaults']:.1f} | {r['cpu_ms']['defaults'] / r['cpu_ms']['theseus']:.3f} | "
            f"{r['ratio_defaults']:.3f} | {r['J']['defaults']:.4f} | {r['iters']['defaults']:.0f} | "
            f"{r['k_star']} | {r['ratio_reach']:.3f} | {r['J_eq']:.4f} |")
    lines += ["", "| batch | problems | median ratio defaults (wall) | (cpu) | max ratio "
              "| median ratio reach | reached | defaults J not worse | median J gap |",
              "|---|---|---|---|---|---|---|---|---|"]
    for s in summ:
        lines.append(f"| {s['batch']} | {s['problems']} | **{s['median_ratio_defaults']:.3f}** | "
                     f"{s['median_cpu_ratio_defaults']:.3f} | {s['max_ratio_defaults']:.3f} | "
                     f"{s['median_ratio_reach']:.3f} | {s['reached']:.2f} | {s['defaults_not_worse']:.2f} | "
                     f"{s['median_gap_defaults']:+.4f} |")
    if cfg.rows:
        lines += ["", "Candidate rows (median ratio to Theseus, share of problems not worse):", ""]
        for rname in (r.name for r in cfg.rows):
            for B in sorted({r["batch"] for r in results}):
                rs = [r for r in results if r["batch"] == B]
                med = statistics.median(r["ms"][rname] / r["ms"]["theseus"] for r in rs)
                nw = sum(r["J"][rname] >= r["J_ref"] - J_SLACK * max(1.0, abs(r["J_ref"]))
                         for r in rs) / len(rs)
                lines.append(f"- {rname}, B={B}: {med:.3f}x, not worse {nw:.2f}")
    Path(f"{stem}.md").write_text("\n".join(lines) + "\n")
    config = OmegaConf.to_container(cfg, resolve=True)
    Path(f"{stem}.json").write_text(json.dumps({"env": env, "config": config,
                                                "family": [s.as_dict() for s in family], "results": results,
                                                "summary": summ, "tune": tuned}, indent=1, default=str))
    print("\n".join(lines))
    print(f"\nsaved {stem}.md, .json")
