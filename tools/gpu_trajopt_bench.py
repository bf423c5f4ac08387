"""Time the layer on a GPU: reference path vs fixed-shape path vs one TD-MPC MPPI step (and Theseus if
installed), on problems of the held-out family, batch 1 and 256. Run by tools/gpu_trajopt_bench.sh.

Why a script and not `difftop bench trajopt-family`: the device machine has no Hydra install guarantee
and a 15-minute budget; this needs only torch and the difftop package on PYTHONPATH, prints one line
per row and writes $OUT/gpu_trajopt.json. Timings use torch.cuda.synchronize() around each run
(median of `--runs`), rows interleaved; the fixed-shape path's actions are checked against the
reference path's (the identity the CPU tests assert).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from difftop.bench.family import build, draw
from difftop.trajopt import TrajOpt


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _timed(fns: dict, runs: int, dev) -> tuple[dict, dict]:
    out = {n: f() for n, f in fns.items()}  # warm-up (kernels, caches)
    out = {n: f() for n, f in fns.items()}
    ts: dict = {n: [] for n in fns}
    for _ in range(runs):
        for n, f in fns.items():
            _sync(dev)
            t = time.perf_counter()
            out[n] = f()
            _sync(dev)
            ts[n].append(1e3 * (time.perf_counter() - t))
    return {n: statistics.median(v) for n, v in ts.items()}, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--problems", type=int, default=4)
    ap.add_argument("--batches", default="1,256")
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--sync-every", type=int, default=8)
    ap.add_argument("--small", action="store_true", help="tiny networks (a CPU smoke run of this script)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    sizes = {"latent_dim": 8, "mlp_dim": 16} if args.small else {}
    specs = draw("heldout", args.problems, seed=29, horizons=(2, 7), action_dims=(3, 13),
                 head_gains=[0.5, 2.0], q_taus=[0.0, 0.05], inits=["policy", "noisy", "zeros", "uniform"])
    rows = []
    for B in (int(b) for b in args.batches.split(",")):
        for spec in specs:
            row = _problem(spec, B, args, dev, sizes)
            rows.append(row)
            print(json.dumps(row), flush=True)
    name = torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"
    info = {"device": name, "torch": torch.__version__, "rows": rows}
    path = os.path.join(os.environ.get("OUT", "."), "gpu_trajopt.json")
    with open(path, "w") as f:
        json.dump(info, f, indent=1)
    print(f"saved {path}")


def _problem(spec, B: int, args, dev, sizes: dict) -> dict:
    """Every row on one problem at batch B, interleaved; fixed-shape path checked against the reference."""
    P = build(spec, B, **sizes)
    P.model.to(dev)
    P.obs = P.obs.to(dev)
    w = torch.randn(B, spec.action_dim, device=dev)
    # reference: the defaults (compaction of stopped samples on); full_batch: without compaction, the path
    # the fixed-shape one must equal bit for bit (compaction rounds matrix products at other batch sizes)
    # autograd: every evaluation through autograd (objective_vjp=False), the defaults before round 6
    layers = {"reference": TrajOpt(), "full_batch": TrajOpt(compact=0),
              "fixed_shape": TrajOpt(sync_every=args.sync_every), "autograd": TrajOpt(objective_vjp=False)}
    try:
        layers["theseus"] = TrajOpt(solver="theseus", backward="truncated", step_size=1e-3, damping=1e-3)
    except ImportError:
        pass

    def solve_fn(layer):
        def run():
            P.model.zero_grad(set_to_none=True)
            z0 = P.model.h(P.obs)
            a, info = layer(P.objective(z0), P.init(z0).to(dev))
            (a[:, 0] * w).sum().backward()
            return a.detach(), info
        return run

    fns = {n: solve_fn(layer) for n, layer in layers.items()}
    if B == 1:
        try:
            from difftop.rl.mppi import MPPIPlanner

            planner = MPPIPlanner(P.model, horizon=spec.horizon, iterations=6, num_samples=512, num_elites=64,
                                  mixture_coef=0.05, discount=0.99)

            def mppi():
                with torch.no_grad():
                    z0 = P.model.h(P.obs)
                    return planner.plan(z0, t0=True, eval_mode=False, horizon=spec.horizon, std=0.05), None
            fns["mppi"] = mppi
        except Exception as e:  # noqa: BLE001 - a missing optional piece must not stop the run
            print(f"mppi skipped: {type(e).__name__}: {e}")
    ms, out = _timed(fns, args.runs, dev)
    return {"problem": spec.name, "batch": B, "H": spec.horizon, "m": spec.action_dim, "ms": ms,
            "fixed_shape_equal": bool(torch.equal(out["full_batch"][0], out["fixed_shape"][0])),
            "autograd_equal": bool(torch.equal(out["reference"][0], out["autograd"][0])),
            "iters": float(out["reference"][1].iterations.max())}


if __name__ == "__main__":
    main()
