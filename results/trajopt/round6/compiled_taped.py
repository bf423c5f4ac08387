# ruff: noqa: B023, E402, E501  (a measurement script: closures are called inside their own loop iteration)
import statistics as st
import time

import torch
from omegaconf import OmegaConf

from difftop.bench.family import build
from difftop.bench.trajopt_family import specs as _specs
from difftop.trajopt.evaluate import CompiledValueGrad

torch.set_num_threads(1)
cfg = OmegaConf.load("difftop/configs/bench_trajopt_family.yaml")
cfg.split = "heldout"
p = build(_specs(cfg)[4], 1)
m = p.model
with torch.no_grad():
    z0 = m.h(p.obs)
x0 = p.init(z0)
obj = p.objective(z0)
x = x0.reshape(1, -1)


def vg(objective, x, shape):
    return objective.value_grad(x.reshape(shape))


t = time.time()
f = torch.compile(vg, dynamic=False)
with torch.no_grad():
    J, g = f(obj, x, tuple(x0.shape))
print("taped compile warm-up s", time.time() - t)
J0, g0 = obj.value_grad(x0)
print("equal", torch.equal(J, J0), (g.reshape_as(g0) - g0).abs().max())
cv = CompiledValueGrad()
t = time.time()
cv(obj, x, tuple(x0.shape))
print("autograd compile warm-up s", time.time() - t)
# new closure reuse
obj2 = p.objective(z0 + 0.01)
t = time.time()
with torch.no_grad():
    f(obj2, x, tuple(x0.shape))
print("second closure s", time.time() - t)


def tm(fn, n=50):
    s = time.thread_time()
    for _ in range(n):
        fn()
    return (time.thread_time() - s) / n * 1e3


a = []
b = []
c = []
for _ in range(9):
    with torch.no_grad():
        a.append(tm(lambda: f(obj, x, tuple(x0.shape))))
    b.append(tm(lambda: cv(obj, x, tuple(x0.shape))))
    c.append(tm(lambda: obj.value_grad(x0)))
print(
    f"ms: compiled taped {st.median(a):.2f}  compiled autograd {st.median(b):.2f}  eager taped {st.median(c):.2f}"
)
