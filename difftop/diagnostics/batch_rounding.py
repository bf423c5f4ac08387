"""Does a DiffTOP agent's evaluation action depend on the batch it is solved in? (a diagnostic)

The solver's decisions are per sample (``tests/trajopt/test_properties.py``), but a batched matmul
rounds differently from a single-row one, and a solve stopped at its tolerance can turn that into a
visible action difference. For ``--states`` replay-buffer observations of a run's final checkpoint,
prints the max |a| difference of the evaluation solve (the whole planned sequence) between one batch
of all states and each state alone: from each path's own latents, and from identical latents.

    .venv/bin/python -m difftop.diagnostics.batch_rounding runs/cpu/cartpole-swingup/difftop/seed1
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from difftop.diagnostics.pg_gradient_quality import buffer_states, trained_agent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a finished state-based difftop run directory")
    ap.add_argument("--states", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    agent, cfg, step = trained_agent(args.run)
    obs = buffer_states(args.run, args.states, args.seed)
    if cfg.agent == "tdmpc":
        raise SystemExit(f"{args.run}: needs a difftop or difftop_noback run, got {cfg.agent}")
    solve = agent.actor.solve
    with torch.no_grad():
        z_batch = agent.model.h(obs)
        z_alone = torch.cat([agent.model.h(o[None]) for o in obs])
        alone = torch.cat([solve(z[None], step, explore=False, record=False) for z in z_alone])
        batch = solve(z_batch, step, explore=False, record=False)
        batch_same_z = solve(z_alone, step, explore=False, record=False)
    print(f"{args.run}: {len(obs)} states, latents batch vs alone: max diff "
          f"{float((z_batch - z_alone).abs().max()):.2e}")
    for name, a in (("own latents", batch), ("identical latents", batch_same_z)):
        d = (a - alone).abs().amax((1, 2)).numpy()
        print(f"actions, batch vs alone ({name}): max {d.max():.2e}, median {np.median(d):.2e}, "
              f"states above 1e-3: {int((d > 1e-3).sum())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
