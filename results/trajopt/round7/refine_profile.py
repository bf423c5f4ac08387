# ruff: noqa  (a measurement script: results/trajopt/README.md round 7, 'Where the rest goes')
import torch
from difftop.nn.told import TOLD
from difftop.trajopt import TrajOpt, latent_objective
from torch.profiler import profile, ProfilerActivity
torch.set_num_threads(1); torch.manual_seed(0)
m = TOLD((24,), 6, latent_dim=50, mlp_dim=512)
with torch.no_grad():
    for net in (m.reward_net, *m.q_nets): net[-1].weight.normal_(0, 0.05)
obs = torch.randn(1, 24); A = torch.zeros(1, 5, 6)
L = TrajOpt(solver="lm_refine", backward="none", max_iters=100, step_size=1e-4, damping=1e-2)
z0 = m.h(obs).detach()
for _ in range(2): L(latent_objective(z0, m.dynamics_fn, m.reward_fn, gamma=0.99, state_value=m.pi_value_fn()), A)
with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as p:
    L(latent_objective(z0, m.dynamics_fn, m.reward_fn, gamma=0.99, state_value=m.pi_value_fn()), A)
print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=40))
