"""How many tensor ops one training act issues, from a trained checkpoint: a planning
figure for the GPU, where each op is at least one kernel launch and each host sync waits for the
device, so an act's latency there grows with these counts, not with FLOPs.

    MUJOCO_GL=egl .venv/bin/python -m difftop.diagnostics.act_op_counts <checkpoint> [acts] [step]
    MUJOCO_GL=egl .venv/bin/python -m difftop.diagnostics.act_op_counts untrained:<agent> [acts] [step]
    MUJOCO_GL=egl .venv/bin/python -m difftop.diagnostics.act_op_counts <checkpoint> [acts] [step] --regions \
        [key=value ...]

``step`` (agent steps; default the checkpoint's) sets the planning horizon's schedule: 1000000 plans at
the full horizon. Every act plans, also at a step below the run's ``seed_steps`` (set to 0 here).
``untrained:tdmpc`` builds a fresh cartpole-swingup agent (preset cpu): TD-MPC's
MPPI issues the same ops whatever its weights; a DiffTOP solve's do depend on them (iterations).

Counts every aten op the profiler sees on CPU, the ones that only make views or empty tensors
(no kernel on a GPU), and the host syncs (``.item()``, ``bool(tensor)``); plus the act's CPU time.

The profiler lists a composite op and the ops it calls (``aten::linear`` and its ``aten::addmm``), so
its compute count is about twice the kernels. ``--regions`` counts instead the ops that
reach a kernel (a dispatch mode sees them after composites decompose) and splits them by where they
are issued: the objective's evaluations (``Problem.value_grad`` and kin), the rest of the solve (the
solver's per-sample bookkeeping), and everything else (encoder, pi's warm start, the online PG
backward). ``key=value`` words after it change the loaded config (``trajopt.solver=newton``).
"""
import argparse
import collections
import time

import torch
from omegaconf import OmegaConf
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

from difftop.rl.trainer import build
from difftop.utils.checkpoint import load_checkpoint

NO_KERNEL = {"aten::view", "aten::reshape", "aten::_reshape_alias", "aten::expand", "aten::expand_as",
             "aten::slice", "aten::select", "aten::t", "aten::transpose", "aten::unsqueeze",
             "aten::squeeze", "aten::as_strided", "aten::detach", "aten::alias", "aten::empty",
             "aten::empty_like", "aten::empty_strided", "aten::permute", "aten::unflatten",
             "aten::flatten", "aten::lift_fresh", "aten::resolve_conj", "aten::resolve_neg",
             "aten::result_type", "aten::split", "aten::narrow", "aten::chunk", "aten::unbind",
             "aten::to", "aten::contiguous", "aten::numpy_T", "aten::split_with_sizes"}
SYNC = {"aten::_local_scalar_dense"}


def solve_summary(agent) -> dict[str, float]:
    """The solve statistics since the last call (and reset them): DiffTOP's actor; {} for MPPI."""
    summary = getattr(agent.actor, "_solve_summary", None)
    return summary() if summary is not None else {}


def planning_horizon(agent, step: int) -> int:
    """The horizon an act plans over at ``step``: the solve's, or MPPI's planner's."""
    actor = agent.actor
    if hasattr(actor, "planning_horizon"):
        return actor.planning_horizon(step)
    return actor.planner.planning_horizon(step)


def count_regions(path: str, agent, env, obs, step: int, acts: int, overrides: list[str]) -> None:
    """Compute ops per act by the code that issues them (a dispatch mode sees every aten call,
    the autograd backward's too, which runs on this thread on a CPU)."""
    import difftop.trajopt.layer as layer
    from difftop.trajopt.evaluate import Problem

    where, counts = ["other"], collections.Counter()

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if f"aten::{func.overloadpacket.__name__}" not in NO_KERNEL:
                counts[where[-1]] += 1
            return func(*args, **(kwargs or {}))

    def tag(owner, name: str, label: str):
        inner = getattr(owner, name)

        def tagged(*a, **k):
            where.append(label)
            try:
                return inner(*a, **k)
            finally:
                where.pop()
        setattr(owner, name, tagged)

    for name in ("value", "value_grad", "value_grad_hess", "grad_graph"):
        tag(Problem, name, "objective evaluations")
    tag(layer, "run_solver", "solver bookkeeping")  # its evaluations are tagged inside it
    with Count():
        for _ in range(acts):
            obs, *_ = env.step(agent.act(obs, step=step, t0=False))
    solve = solve_summary(agent)
    total = sum(counts.values())
    how = (f"{solve['solve_iters']:.1f} solve iterations ({solve['solve_flagged']:.2f} of solves flagged)"
           if solve else "MPPI")
    print(f"{path} {' '.join(overrides)}: horizon {planning_horizon(agent, step)}, {how}, "
          f"{total // acts} compute ops / act")
    for label in ("objective evaluations", "solver bookkeeping", "other"):
        print(f"  {label:22s} {counts[label] // acts:6d} ops / act  {100 * counts[label] / total:5.1f}%")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("target", help="a checkpoint (file or run dir) or untrained:<agent>")
    ap.add_argument("rest", nargs="*", metavar="[acts] [step] [key=value ...]",
                    help="acts to count (default 20), agent step (default the checkpoint's), "
                         "config overrides")
    ap.add_argument("--regions", action="store_true",
                    help="count the ops that reach a kernel, by where they are issued")
    a = ap.parse_intermixed_args(argv)
    torch.set_num_threads(1)
    regions = a.regions
    args = [a.target] + [x for x in a.rest if "=" not in x]
    overrides = [x for x in a.rest if "=" in x]
    path, acts = args[0], int(args[1]) if len(args) > 1 else 20
    if path.startswith("untrained:"):
        from difftop.bench.rl import preset_config
        from difftop.rl.trainer import resolve_config

        agent_name = path.split(":", 1)[1]
        cfg = resolve_config(OmegaConf.merge(preset_config("cpu"), {"agent": agent_name, "device": "cpu"},
                                             OmegaConf.from_dotlist(overrides)))
        cfg.seed_steps = 0  # every act plans: a step below seed_steps would act at random (no ops)
        env, _, agent = build(cfg, eval_episodes=1)
        step = 0
    else:
        state = load_checkpoint(path, "rl")
        cfg = OmegaConf.create(state["config"])
        cfg.device = "cpu"
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
        cfg.seed_steps = 0  # as above, whatever step is asked for
        env, _, agent = build(cfg, eval_episodes=1)
        agent.load_state_dict(state["agent"], weights_only=True)
        step = int(state["agent_step"])
    step = int(args[2]) if len(args) > 2 else step
    obs, _ = env.reset(seed=0)
    for i in range(20):  # warm up, and leave the start of the episode
        obs, *_ = env.step(agent.act(obs, step=step, t0=i == 0))
    solve_summary(agent)  # reset the solve statistics
    if regions:
        count_regions(path, agent, env, obs, step, acts, overrides)
        return 0
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(acts):
            obs, *_ = env.step(agent.act(obs, step=step, t0=False))
    ms = 1e3 * (time.perf_counter() - t) / acts
    events = prof.key_averages()
    total = sum(e.count for e in events if e.key.startswith("aten::"))
    no_kernel = sum(e.count for e in events if e.key in NO_KERNEL)
    syncs = sum(e.count for e in events if e.key in SYNC)
    solve = solve_summary(agent)
    iters = f"{solve['solve_iters']:.1f}" if "solve_iters" in solve else "-"
    print("| checkpoint | agent | pg_mode | horizon | solve iterations | aten ops / act | of which compute "
          "| host syncs / act | ms / act (CPU, profiled) |")
    print("|---|---|---|---|---|---|---|---|---|")
    pg_mode = cfg.get("pg_mode", "-") if cfg.agent != "tdmpc" else "-"
    print(f"| {path} | {cfg.agent} | {pg_mode} | {planning_horizon(agent, step)} | {iters} | "
          f"{total // acts} | {(total - no_kernel) // acts} | {syncs / acts:.1f} | {ms:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
