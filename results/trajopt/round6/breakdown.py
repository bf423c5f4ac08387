# ruff: noqa: B023, E402, E501  (a measurement script: closures are called inside their own loop iteration)
import statistics as st
import time

import torch
from omegaconf import OmegaConf

import difftop.trajopt.evaluate as ev
import difftop.trajopt.layer as ly
from difftop.bench.family import build
from difftop.bench.trajopt_family import specs as _specs
from difftop.trajopt import TrajOpt

torch.set_num_threads(1)
cfg = OmegaConf.load("difftop/configs/bench_trajopt_family.yaml")
cfg.split = "heldout"
acc = {}


def wrap(cls, name):
    f = getattr(cls, name)

    def g(*a, **k):
        s = time.thread_time()
        r = f(*a, **k)
        acc[name] = acc.get(name, 0) + time.thread_time() - s
        return r

    setattr(cls, name, g)


for n in ("value_grad", "grad_graph"):
    wrap(ev.Problem, n)
wrap(ly.TrajOpt, "_implicit")
wrap(ly.TrajOpt, "_solve")
layer = TrajOpt()
for i in (0, 4, 7):
    spec = _specs(cfg)[i]
    P = build(spec, 1)
    m = P.model
    w = torch.linspace(-1, 1, spec.action_dim)
    res = []
    for r in range(12):
        acc.clear()
        s = time.thread_time()
        m.zero_grad(set_to_none=True)
        z0 = m.h(P.obs)
        init = P.init(z0)
        t1 = time.thread_time()
        a, info = layer(P.objective(z0), init)
        t2 = time.thread_time()
        (a[:, 0] * w).sum().backward()
        t3 = time.thread_time()
        if r >= 3:
            res.append(
                dict(
                    total=t3 - s,
                    enc=t1 - s,
                    solve=acc["_solve"],
                    evals=acc["value_grad"],
                    graph=acc.get("grad_graph", 0),
                    implicit=acc["_implicit"],
                    bwd=t3 - t2,
                )
            )
    med = {k: st.median([d[k] for d in res]) * 1e3 for k in res[0]}
    print(
        spec.name,
        int(info.iterations[0]),
        " ".join(f"{k} {v:.1f}" for k, v in med.items()),
        f"book {med['solve'] - med['evals'] - med['implicit']:.1f}",
    )
