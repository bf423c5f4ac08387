# ruff: noqa: B023, E402, E501  (a measurement script: closures are called inside their own loop iteration)
import statistics as st
import sys
import time

import torch
from omegaconf import OmegaConf

from difftop.bench.family import build
from difftop.bench.trajopt_family import specs as _specs
from difftop.trajopt import TrajOpt, latent_objective

torch.set_num_threads(1)
B = int(sys.argv[1]) if len(sys.argv) > 1 else 1
cfg = OmegaConf.load("difftop/configs/bench_trajopt_family.yaml")
cfg.split = "heldout"
layer = TrajOpt()
rows = []
for spec in _specs(cfg):
    if B > 1 and spec.name in ("heldout1", "heldout2", "heldout3", "heldout5", "heldout6"):
        continue
    P = build(spec, B)
    m = P.model
    w = torch.linspace(-1, 1, spec.action_dim)

    def run(fast):
        m.zero_grad(set_to_none=True)
        z0 = m.h(P.obs)
        init = P.init(z0)
        obj = (
            P.objective(z0)
            if fast
            else latent_objective(z0, m.dynamics, m.reward, P.terminal, gamma=P.gamma, batch_rewards=True)
        )
        a, info = layer(obj, init)
        (a[:, 0] * w).sum().backward()
        gs = [p.grad.flatten() for p in m.parameters() if p.grad is not None]
        return a.detach(), (torch.cat(gs) if gs else torch.zeros(1)), info

    a1, g1, i1 = run(True)
    a0, g0, i0 = run(False)
    same = torch.equal(a1, a0) and torch.equal(i1.iterations, i0.iterations)
    gd = float((g1 - g0).abs().max() / g0.abs().max().clamp_min(1e-30))
    ts = {True: [], False: []}
    for _ in range(2):
        run(True)
        run(False)
    for _ in range(7):
        for f in (True, False):
            s = time.thread_time()
            run(f)
            ts[f].append(time.thread_time() - s)
    r = st.median(ts[True]) / st.median(ts[False])
    rows.append(r)
    print(
        f"{spec.name:40s} iters {float(i1.iterations.float().mean()):5.1f} taped {st.median(ts[True]) * 1e3:7.1f} ms autograd {st.median(ts[False]) * 1e3:7.1f} ms ratio {r:.3f} same_actions {same} grad_rel_diff {gd:.1e}",
        flush=True,
    )
print("median ratio", st.median(rows))
