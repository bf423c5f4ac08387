# ruff: noqa: B023, E402, E501  (a measurement script: closures are called inside their own loop iteration)
import statistics as st
import time

import torch
from omegaconf import OmegaConf

import difftop.nn.vjp as vjp
from difftop.bench.family import build
from difftop.bench.trajopt_family import specs as _specs

torch.set_num_threads(1)
orig = vjp.MLPTape._transposed
cfg = OmegaConf.load("difftop/configs/bench_trajopt_family.yaml")
cfg.split = "heldout"
for i in (0, 4, 7, 8, 9):
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
        vjp.MLPTape._transposed = orig
        a.append(t(lambda: obj.value_grad(x0)))
        vjp.MLPTape._transposed = lambda self, m: m.weight.t()
        b.append(t(lambda: obj.value_grad(x0)))
    print(_specs(cfg)[i].name, f"transposed copy {st.median(a):.2f}  W.t() view {st.median(b):.2f} ms")
