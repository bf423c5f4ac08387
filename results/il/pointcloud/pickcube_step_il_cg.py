# ruff: noqa  (a measurement script: results/il/pointcloud/maniskill.md, the DiffTOP + BC step at 8-step plans)
import time, collections, torch
from omegaconf import OmegaConf
from difftop.bench.il import _Row, il_config
from difftop.data import load_dataset
from difftop.tasks import get_task
torch.set_num_threads(1)
task = get_task("maniskill-pickcube"); keys = list(task.keys("pointcloud"))
data = load_dataset("data/maniskill/pickcube.zarr"); task.derive(data, "pointcloud")
run = {"task": "maniskill-pickcube", "obs": "pointcloud", "data": "x", "device": "cpu", "seed": 0}
base = OmegaConf.merge(il_config("cpu"), run, OmegaConf.from_dotlist(["policies.difftop.plan_horizon=8", "policies.difftop.n_action_steps=8", "policies.bc.n_action_steps=8"]))
base.base_policy = "bc"
row = _Row("difftop", base, data, keys, 0)
cnt = collections.Counter()
og = torch.autograd.grad
def g(*a, **k):
    s = time.process_time(); r = og(*a, **k); cnt["grad_calls"] += 1; cnt["grad_s"] += time.process_time() - s; return r
for i in range(2): row.step()
torch.autograd.grad = g
import difftop.trajopt.implicit as im
im.torch.autograd.grad = g
for i in range(3): row.step()
print({k: v / 3 for k, v in cnt.items()})
