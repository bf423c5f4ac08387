# ruff: noqa  (a measurement script: results/il/pointcloud/maniskill.md, the DiffTOP + BC step at 8-step plans)
import time, collections, torch
from omegaconf import OmegaConf
from difftop.bench.il import _Row, il_config
from difftop.data import load_dataset
from difftop.tasks import get_task
import difftop.trajopt.evaluate as ev
import difftop.trajopt.layer as ly
import difftop.trajopt.implicit as im
torch.set_num_threads(1)
task = get_task("maniskill-pickcube"); keys = list(task.keys("pointcloud"))
data = load_dataset("data/maniskill/pickcube.zarr"); task.derive(data, "pointcloud")
run = {"task": "maniskill-pickcube", "obs": "pointcloud", "data": "x", "device": "cpu", "seed": 0}
base = OmegaConf.merge(il_config("cpu"), run, OmegaConf.from_dotlist(["policies.difftop.plan_horizon=8", "policies.difftop.n_action_steps=8", "policies.bc.n_action_steps=8"]))
base.base_policy = "bc"
row = _Row("difftop", base, data, keys, 0)
stats = collections.Counter(); tm = collections.Counter()
def wrap(obj, name, key):
    f = getattr(obj, name)
    def g(*a, **k):
        s = time.process_time(); r = f(*a, **k); tm[key] += time.process_time() - s; stats[key] += 1
        if key == "value_grad": stats["vg_rows"] += a[1].shape[0] if len(a) > 1 else 0
        return r
    setattr(obj, name, g)
wrap(ev.Problem, "value_grad", "value_grad")
wrap(ev.Problem, "grad_graph", "grad_graph")
wrap(im, "free_hessian", "free_hessian"); wrap(ly, "free_hessian", "free_hessian_ly")
wrap(ly, "cg_solver", "cg_solver")
for i in range(3): row.step()
stats.clear(); tm.clear()
N = 4
parts = []
for i in range(N): parts.append(row.step()[0])
print({k: round(1e3 * sum(p.get(k, 0) for p in parts) / N) for k in parts[0]})
print({k: v / N for k, v in stats.items()}, {k: round(1e3 * v / N, 1) for k, v in tm.items()})
print("iters", row.metrics.get("solve_iters", [])[-N:], "conv", row.metrics.get("solve_converged", [])[-N:])
print(row.policy.trajopt if hasattr(row.policy, "trajopt") else "")
