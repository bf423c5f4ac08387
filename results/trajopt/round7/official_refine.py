# ruff: noqa: E402, E501  (a measurement script)
"""The official arm's acting solve (variant=official: lm_refine on TD-MPC's estimate_value with terminal
min Q(z_H, pi(z_H)), truncated backward through the last 5 iterations) with the hand-written evaluations
(objective_vjp=true, the default) vs autograd in every iteration (false), interleaved, one thread, thread
CPU time. Paper-size TOLD (latent 50, 512-wide MLPs), a state of 24 dims, H = 5, per-task LM settings of
the release (reacher-easy/finger-spin: 100 iterations, step 1e-4, damping 1e-2; cartpole-swingup-sparse:
50, 1e-3, 0.5). Each timed run: encode, pi's warm start, solve, backward of -sum(a_0) (the PG loss shape).

    .venv/bin/python results/trajopt/round7/official_refine.py [batch] [--before]

--before: the `false` row is the objective before this round (TD-MPC's estimate_value, per-step rewards,
autograd in every iteration), so the ratio is the whole change as a user of variant=official sees it.
"""
import statistics as st
import sys
import time

import torch

from difftop.nn.told import TOLD
from difftop.rl.mppi import estimate_value
from difftop.trajopt import TrajOpt, latent_objective

torch.set_num_threads(1)
B = int(sys.argv[1]) if len(sys.argv) > 1 else 1
old = "--before" in sys.argv  # the false row: the objective as it was before round 7 (estimate_value)
torch.manual_seed(0)
m = TOLD((24,), 6, latent_dim=50, mlp_dim=512)
with torch.no_grad():  # trained-like heads (TD-MPC zero-initialises them)
    for net in (m.reward_net, *m.q_nets):
        net[-1].weight.normal_(0, 0.05)
obs = torch.randn(B, 24)
rows = []
for name, iters, step, damp in (("reacher/finger", 100, 1e-4, 1e-2), ("cartpole-sparse", 50, 1e-3, 0.5)):
    layers = {f: TrajOpt(solver="lm_refine", backward="truncated", backward_iters=5, max_iters=iters,
                         objective_vjp=f, step_size=step, damping=damp) for f in (True, False)}
    times = {True: [], False: []}
    out = {}
    for r in range(12):
        for f in (True, False):
            m.zero_grad(set_to_none=True)
            t0 = time.thread_time()
            z0 = m.h(obs)
            with torch.no_grad():
                acts, z = [], z0
                for _ in range(5):
                    acts.append(m.pi(z))
                    z = m.dynamics(z, acts[-1])
            if f or not old:  # the agent's objective (rewards in one call)
                obj = latent_objective(z0, m.dynamics_fn, m.reward_fn, gamma=0.99, state_value=m.pi_value_fn(),
                                       batch_rewards=True)
            else:  # before this round: TD-MPC's estimate_value, autograd in every iteration
                obj = lambda A, z0=z0: estimate_value(m, z0, A.transpose(0, 1), 0.99).squeeze(-1)  # noqa: E731
            a, info = layers[f](obj, torch.stack(acts, 1))
            (-a[:, 0].sum()).backward()
            t1 = time.thread_time()
            if r >= 2:
                times[f].append(t1 - t0)
            out[f] = (a.detach(), [p.grad.clone() for p in m.parameters() if p.grad is not None])
    same = torch.equal(out[True][0], out[False][0]) and all(
        torch.equal(x, y) for x, y in zip(out[True][1], out[False][1]))
    if old:  # another sum order of the rewards: equal to rounding only
        same = f"max |da| {(out[True][0] - out[False][0]).abs().max().item():.1e}"
    fast, slow = st.median(times[True]) * 1e3, st.median(times[False]) * 1e3
    rows.append(f"| {name} ({iters} it.) | {B} | {fast:.1f} | {slow:.1f} | {fast / slow:.2f} | {same} |")
print(f"| release setting | batch | objective_vjp=true ms | {'before' if old else 'false'} ms | ratio | same actions and grads |")  # noqa: E501
print("|---|---|---|---|---|---|")
print("\n".join(rows))
