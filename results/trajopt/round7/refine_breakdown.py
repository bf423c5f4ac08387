# ruff: noqa  (a measurement script: results/trajopt/README.md round 7, 'Where the rest goes')
import time, torch, statistics as st
from difftop.nn.told import TOLD
from difftop.trajopt import TrajOpt, latent_objective
torch.set_num_threads(1); torch.manual_seed(0)
m = TOLD((24,), 6, latent_dim=50, mlp_dim=512)
with torch.no_grad():
    for net in (m.reward_net, *m.q_nets): net[-1].weight.normal_(0, 0.05)
obs = torch.randn(1, 24)
z0 = m.h(obs).detach()
obj = latent_objective(z0, m.dynamics_fn, m.reward_fn, gamma=0.99, state_value=m.pi_value_fn())
A = torch.zeros(1, 5, 6)
def t(f, n=30):
    ts = []
    for _ in range(n):
        s = time.thread_time(); f(); ts.append(time.thread_time() - s)
    return st.median(ts) * 1e3
print("value_grad ms", t(lambda: obj.value_grad(A)))
def ag():
    x = A.clone().requires_grad_(True); J = obj(x); torch.autograd.grad(J.sum(), x)
print("autograd eval ms", t(ag))
for bw, it in (("none", 100), ("none", 5), ("truncated", 5)):
    L = TrajOpt(solver="lm_refine", backward=bw, backward_iters=5, max_iters=it, step_size=1e-4, damping=1e-2)
    def run():
        zz = m.h(obs)
        a, _ = L(latent_objective(zz, m.dynamics_fn, m.reward_fn, gamma=0.99, state_value=m.pi_value_fn()), A)
        if bw != "none": a.sum().backward()
    with torch.set_grad_enabled(bw != "none"):
        print(bw, it, "ms", t(run, 12))
