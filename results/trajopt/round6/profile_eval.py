# ruff: noqa: B023, E402, E501  (a measurement script: closures are called inside their own loop iteration)

import torch
from omegaconf import OmegaConf

from difftop.bench.family import build
from difftop.bench.trajopt_family import specs as _specs

torch.set_num_threads(1)
cfg = OmegaConf.load("difftop/configs/bench_trajopt_family.yaml")
cfg.split = "heldout"
p = build(_specs(cfg)[4], 1)
m = p.model
with torch.no_grad():
    z0 = m.h(p.obs)
x0 = p.init(z0)
obj = p.objective(z0)
for _ in range(50):
    obj.value_grad(x0)
from torch.profiler import profile

with profile() as prof:
    for _ in range(50):
        obj.value_grad(x0)
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
