# ruff: noqa: B023, E402, E501  (a measurement script: closures are called inside their own loop iteration)
import statistics as st
import time

import torch
from omegaconf import OmegaConf

import difftop.nn.vjp as vjp
from difftop.bench.family import build
from difftop.bench.trajopt_family import specs as _specs

torch.set_num_threads(1)
new = vjp.MLPTape._t
cfg = OmegaConf.load("difftop/configs/bench_trajopt_family.yaml")
cfg.split = "heldout"
for i in (0, 4, 7, 8):
    p = build(_specs(cfg)[i], 1)
    m = p.model
    with torch.no_grad():
        z0 = m.h(p.obs)
    x0 = p.init(z0)
    obj = p.objective(z0)

    def t(f, n=50):
        s = time.thread_time()
        for _ in range(n):
            f()
        return (time.thread_time() - s) / n * 1e3

    a = []
    b = []
    for _ in range(15):
        vjp.MLPTape._t = new
        a.append(t(lambda: obj.value_grad(x0)))
        vjp.MLPTape._t = lambda self, w: w.t()
        b.append(t(lambda: obj.value_grad(x0)))
    vjp.MLPTape._t = new
    print(_specs(cfg)[i].name, f"cached view {st.median(a):.3f}  per-call t() {st.median(b):.3f} ms")
