"""Planning problems taken from trained agents, for the held-out family of `difftop bench trajopt-family`.

Why: the family's drawn problems have random heads at chosen gains; a trained TD-MPC model has the head
scales, curvature and bound activity that training produced, which no gain setting promises to match. A
problem file holds what the benchmark needs and nothing it does not: the model's TOLD weights (encoder,
dynamics, reward, pi, twin Q), a seeded sample of observations from the run's replay buffer, and the
settings the agent planned with (horizon, discount), so the benchmark never needs the run directory, its
optimizer state or an environment.

    python -m difftop.bench.trained runs/mech50k/reacher-easy/difftop_noback/seed1 \
        results/trajopt/problems/reacher-easy-50k.safetensors
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from difftop.nn import TOLD

__all__ = ["export", "load"]

#: the ``model.`` keys a problem file keeps: what the acting step uses, not the target network
PARTS = ("_encoder.", "_dynamics.", "_reward.", "_pi.", "_Q1.", "_Q2.")


def export(run: str | Path, out: str | Path, states: int = 256, seed: int = 0) -> Path:
    """Write the problem file of a state-based TD-MPC / DiffTOP run (its latest checkpoint)."""
    from safetensors.torch import save_file

    from difftop.diagnostics.pg_gradient_quality import buffer_states, trained_agent

    agent, cfg, step = trained_agent(str(run))
    if cfg.obs != "state":
        raise SystemExit(f"{run}: a problem file needs a state-based run, got obs={cfg.obs}")
    model = agent.model
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()
               if k.startswith(PARTS)}
    tensors["obs"] = buffer_states(str(run), states, seed).contiguous()
    eval_csv = Path(run) / "eval.csv"
    last = eval_csv.read_text().strip().splitlines()[-1].split(",") if eval_csv.is_file() else []
    meta = {"task": str(cfg.task), "agent": str(cfg.agent), "seed": int(cfg.seed), "agent_step": step,
            "env_steps": step * int(cfg.action_repeat), "obs_dim": int(model.obs_shape[0]),
            "action_dim": int(model.action_dim), "latent_dim": int(cfg.latent_dim),
            "mlp_dim": int(cfg.mlp_dim), "enc_dim": int(cfg.enc_dim), "horizon": int(cfg.horizon),
            "discount": float(cfg.discount),
            "eval_return": float(last[3]) if len(last) > 3 else None, "source": str(run),
            "buffer_seed": seed}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata={"difftop_problem": json.dumps(meta)})
    return out


def load(path: str | Path, dtype=torch.float32) -> tuple[TOLD, torch.Tensor, dict]:
    """(TOLD with the file's weights, its observations (N, obs_dim), its settings) of a problem file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["difftop_problem"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  (safe_open has no iterator)
    model = TOLD((meta["obs_dim"],), meta["action_dim"], latent_dim=meta["latent_dim"],
                 mlp_dim=meta["mlp_dim"], enc_dim=meta["enc_dim"])
    weights = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or any(k.startswith(PARTS) for k in missing):
        raise ValueError(f"{path}: weights do not fit a TOLD of its settings (missing {missing}, "
                         f"unexpected {unexpected})")
    return model.to(dtype), tensors["obs"].to(dtype), meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a state-based RL run directory with a checkpoint and a saved buffer")
    ap.add_argument("out", help="the problem file to write (.safetensors)")
    ap.add_argument("--states", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out = export(args.run, args.out, args.states, args.seed)
    _, obs, meta = load(out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): {meta['task']} at {meta['env_steps']} env steps "
          f"(eval return {meta['eval_return']}), {len(obs)} observations, horizon {meta['horizon']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
