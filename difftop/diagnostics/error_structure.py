"""What part of a frozen base's action error can a refiner learn, and in which form? (a diagnostic)

For a trained DiffTOP (or Residual) run, on its own training windows (fit) and validation windows
(score), in normalised action units: the base's action chunk a0 (one fixed draw of a stochastic base,
as the trainer's base cache) against the demonstrated a*. Three small correctors are fitted by MSE on
the same data, for the same number of Adam steps:

- ``state``: a0 + g(s), a correction from the state alone (it can only remove the base's bias given s);
- ``state+action``: a0 + g(s, a0), Residual's form (it can also pull each draw towards the mean);
- ``grad``: a0 + grad_a f(s, a)|a0 / prox with a scalar f(s, A) whose last layer starts at zero -
  DiffTOP's refinement to first order (one step of its proximal solve from the base's action).

Why: DiffTOP learns a refinement of BC and BC-RNN but none of Diffusion's chunk
(results/il/refinement/README.md).
If the base's error given the state has no mean (a sampler drawing from the demonstrations'
distribution), only the state+action form can lower the MSE, by dragging a sample towards the mean of
the modes, and a gradient-of-a-scalar corrector has to learn that through f's curvature in a.

    .venv/bin/python -m difftop.diagnostics.error_structure \
        runs/il/pusht/state-cpu/difftop_nocvae_{bc,bc_rnn,diffusion}/seed0
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

from difftop.diagnostics.refinement import run_windows
from difftop.il.policies.bc import recent_obs


def windows(run: str, n_train: int, n_val: int, seed: int):
    """(train, val, prox): (state features (N, F), base chunk a0 (N, H*m), demo chunk a* (N, H*m)) each."""
    policy, _, train, val, _ = run_windows(run)
    meta = policy.shape_meta
    keys = list(meta.obs)
    rng = np.random.default_rng(seed)
    out = []
    for ds, n in ((train, n_train), (val, n_val)):
        idx = np.sort(rng.choice(len(ds), size=min(n, len(ds)), replace=False))
        feats, a0s, stars = [], [], []
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for s in range(0, len(idx), 512):
                batch = ds.get_batch(idx[s:s + 512])
                obs, To = batch["obs"], meta.obs_horizon
                a0 = policy.frozen_base_actions(obs)
                H = a0.shape[1]
                star = policy.normalizer.normalize("action", batch["action"][:, To - 1: To - 1 + H])
                nobs = policy.normalizer(recent_obs(obs, 2, keys))
                feats.append(torch.cat([v.flatten(1) for v in nobs.values()], -1))
                a0s.append(a0.flatten(1))
                stars.append(star.flatten(1))
        out.append((torch.cat(feats), torch.cat(a0s), torch.cat(stars)))
    return out[0], out[1], float(getattr(policy, "prox", 0.1))


def mlp(i: int, o: int, hidden: int = 256, zero_last: bool = True) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(i, hidden), nn.Mish(), nn.Linear(hidden, hidden), nn.Mish(),
                        nn.Linear(hidden, o))
    if zero_last:
        nn.init.zeros_(net[-1].weight)
        nn.init.zeros_(net[-1].bias)
    return net


def fit(form: str, train, val, steps: int, prox: float, lr: float, seed: int,
        report: tuple[int, ...]) -> dict[int, float]:
    """Validation MSE per element of ``form``'s corrected chunk after each step count in ``report``."""
    torch.manual_seed(seed)
    s_tr, a_tr, y_tr = train
    F, A = s_tr.shape[1], a_tr.shape[1]
    net = mlp(F + (0 if form == "state" else A), 1 if form == "grad" else A)
    opt = torch.optim.Adam(net.parameters(), lr=lr)

    def correct(s: torch.Tensor, a0: torch.Tensor, create_graph: bool) -> torch.Tensor:
        if form == "state":
            return a0 + net(s)
        if form == "state+action":
            return a0 + net(torch.cat([s, a0], -1))
        a = a0.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(net(torch.cat([s, a], -1)).sum(), a, create_graph=create_graph)
        return a0 + g / prox

    def val_mse() -> float:
        s, a0, y = val
        return float((correct(s, a0, False).detach() - y).pow(2).mean())

    rng = np.random.default_rng(seed)
    scores = {0: val_mse()} if 0 in report else {}
    for step in range(1, steps + 1):
        i = torch.as_tensor(rng.integers(0, len(s_tr), 256))
        loss = (correct(s_tr[i], a_tr[i], True) - y_tr[i]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in report:
            scores[step] = val_mse()
    return scores


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--train-windows", type=int, default=8192)
    p.add_argument("--val-windows", type=int, default=2048)
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    report = tuple(sorted({0, *(k for k in (500, 1000, 2000) if k < a.steps), a.steps}))
    forms = ("state", "state+action", "grad")
    steps = ", ".join(map(str, report[1:]))
    print(f"Validation MSE per element (normalised actions) after {steps} Adam steps; "
          "'gain' = share of the base's MSE removed at the end")
    print("| run | H*m | base MSE | " + " | ".join(f"{f} ({'/'.join(map(str, report[1:]))})" for f in forms)
          + " | " + " | ".join(f"{f} gain" for f in forms) + " |")
    print("|---|---|---|" + "---|" * (2 * len(forms)))
    for run in a.runs:
        train, val, prox = windows(run, a.train_windows, a.val_windows, a.seed)
        res = {f: fit(f, train, val, a.steps, float(prox), a.lr, a.seed, report) for f in forms}
        base = res["state"][0]
        cells = [" / ".join(f"{res[f][k]:.5f}" for k in report[1:]) for f in forms]
        gains = [f"{1 - res[f][report[-1]] / base:+.2f}" for f in forms]
        print(f"| {run} | {train[1].shape[1]} | {base:.5f} | " + " | ".join(cells) + " | " + " | ".join(gains)
              + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
