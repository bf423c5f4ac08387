"""``difftop il-landscape``: paper Fig. 5, the objective a trained DiffTOP IL policy has learned.

For one Push-T state (a seeded reset, optionally after ``env_steps`` steps of the policy) and
``samples`` latent draws ``z~ ~ N(0, I)``, draws the objective ``J(a)`` that the policy maximises
(eq. 7, with the proximal term when the policy has one) over the 2-D action box as filled contours,
one panel per sample, and overlays the optimisation path from the shared initialisation: the
iterates are recorded by re-running the solver with ``max_iters = 0, 1, ..., path_iters`` (the
layer is deterministic, so run k ends at iterate k). The first panel shows the scene with the
initial action and each sample's path and final action (``a_1``, ``a_2``, ...). Actions are shown
in the environment's units (pixels of the 512 x 512 arena, y down as in the rendered frame).
A JSON file beside the figure holds the numbers (paths, final actions, objective values).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from difftop.errors import UserError
from difftop.utils import checkpoint as checkpoints
from difftop.utils.checks import require_given, require_int, require_seed, require_writable_file
from difftop.utils.device import resolve_device

__all__ = ["main", "check_landscape_config", "compute_landscape", "plot_landscape"]


@torch.no_grad()
def compute_landscape(policy: Any, obs: dict[str, torch.Tensor], *, samples: int = 2, latent_seed: int = 0,
                      grid: int = 101, path_iters: int = 30, init: str | None = None,
                      include_prox: bool = True) -> dict[str, Any]:
    """Objective grids and solver paths (normalised and raw actions) for one observation ``(1, To, ...)``.

    ``include_prox=False`` draws the learned part ``sum_t gamma^t f`` alone (the paths still follow the
    full objective the policy maximises).
    """

    H, m = policy.plan_horizon, policy.shape_meta.action_dim
    if m != 2:
        raise UserError(f"the landscape needs a 2-D action, this policy's is {m}-D")
    obs = {k: v.expand(samples, *v.shape[1:]) for k, v in obs.items()}
    z_s = policy.encode(obs)
    gen = torch.Generator().manual_seed(int(latent_seed))
    z_tilde = torch.randn(samples, policy.posterior_dim, generator=gen).to(z_s)
    a0 = policy.initial_actions({k: v[:1] for k, v in obs.items()}, init).to(z_s)
    a0 = a0.expand(samples, H, m).contiguous()
    layer = policy.trajopt
    path = []
    for k in range(int(path_iters) + 1):
        solver = layer.replace(backward="none", max_iters=k, low=-1.0, high=1.0)
        plan, info = solver(policy.objective(z_s, z_tilde, a0), a0)
        path.append(plan)
        if k and bool(info.converged.all()) and torch.equal(plan, path[-2]):
            break
    paths = torch.stack(path, 1)  # (S, K+1, H, m)
    final = paths[:, -1]
    # The grid varies the first action; later ones (H > 1) stay at each sample's solution.
    u = torch.linspace(-1.0, 1.0, int(grid), dtype=z_s.dtype)
    gx, gy = torch.meshgrid(u, u, indexing="xy")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)  # (G*G, 2)
    n = pts.shape[0]
    values = []
    for s in range(samples):
        acts = final[s:s + 1].expand(n, H, m).clone()
        acts[:, 0] = pts
        J = policy.objective(z_s[s:s + 1].expand(n, -1), z_tilde[s:s + 1].expand(n, -1),
                             a0[s:s + 1].expand(n, H, m) if include_prox else None)
        values.append(J(acts).reshape(int(grid), int(grid)))
    unnorm = lambda a: policy.normalizer.unnormalize("action", a)  # noqa: E731
    corners = unnorm(torch.tensor([[-1.0, -1.0], [1.0, 1.0]], dtype=z_s.dtype))
    return {
        "values": torch.stack(values).cpu().numpy(),  # (S, G, G), rows = second action dim
        "extent": corners.cpu().numpy(),  # raw action box: [[x_lo, y_lo], [x_hi, y_hi]]
        "paths": unnorm(paths[:, :, 0]).cpu().numpy(),  # (S, K+1, 2) raw first actions
        "paths_normalized": paths[:, :, 0].cpu().numpy(),
        "init": unnorm(a0[0, 0]).cpu().numpy(),
        "final": unnorm(final[:, 0]).cpu().numpy(),
        "final_objective": [float(v) for v in policy.objective(z_s, z_tilde, a0)(final)],
        "z_tilde": z_tilde.cpu().numpy(),
        "label": "objective" if include_prox or policy.prox <= 0 else "learned f (no prox term)",
    }


def plot_landscape(res: dict[str, Any], frame: np.ndarray | None, out: Path, title: str = "") -> Path:
    """Scene panel (when ``frame`` is given) + one contour panel per latent sample."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    S = res["values"].shape[0]
    ncol = S + (frame is not None)
    fig, axes = plt.subplots(1, ncol, figsize=(4.2 * ncol, 4.2), squeeze=False)
    axes = list(axes[0])
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    (x0, y0), (x1, y1) = res["extent"]

    def draw_path(ax, s: int) -> None:
        p = res["paths"][s]
        k = max(len(p) - 1, 1)
        c = colors[s % len(colors)]
        for i in range(len(p) - 1):  # faint to solid, as the paper's figure
            ax.plot(p[i:i + 2, 0], p[i:i + 2, 1], "--", color=c, alpha=min(1.0, 0.2 + 0.8 * (i + 1) / k))
        ax.plot(*res["final"][s], "*", ms=14, color=c, mec="k", label=f"$\\hat a_{s + 1}$")

    if frame is not None:
        ax = axes.pop(0)
        ax.imshow(frame, extent=(0, 512, 512, 0))
        for s in range(S):
            draw_path(ax, s)
        ax.plot(*res["init"], "o", ms=8, color="w", mec="k", label="$a_{init}$")
        ax.set_xlim(0, 512)
        ax.set_ylim(512, 0)
        ax.legend(loc="lower right", fontsize=8)
        ax.set_title("scene: actions from one initialisation")
    for s, ax in enumerate(axes):
        v = res["values"][s]
        cs = ax.contourf(np.linspace(x0, x1, v.shape[1]), np.linspace(y0, y1, v.shape[0]), v, levels=30,
                         cmap="viridis")
        fig.colorbar(cs, ax=ax, fraction=0.046, pad=0.04)
        draw_path(ax, s)
        ax.plot(*res["init"], "o", ms=8, color="w", mec="k", label="$a_{init}$")
        ax.set_xlim(min(x0, x1), max(x0, x1))
        ax.set_ylim(max(y0, y1), min(y0, y1))  # y down, as in the scene
        ax.set_title(f"{res.get('label', 'objective')}, latent sample {s + 1}")
        ax.set_xlabel("action x")
        ax.set_ylabel("action y")
        ax.legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _observation(policy: Any, task: str, obs_type: str, seed: int, env_steps: int, max_steps: int,
                 device: str) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """(obs history (1, To, ...), rendered frame) after a seeded reset and ``env_steps`` policy steps."""
    from difftop.tasks import get_task

    spec = get_task(task)
    keys = spec.keys(obs_type)
    shapes = policy.shape_meta.obs
    image_size = next((shapes[k][-1] for k in keys if len(shapes[k]) == 3), None)
    env = spec.make_env(obs_type, max(max_steps, env_steps + 1), image_size)
    try:
        o, _ = env.reset(seed=int(seed))
        first = spec.env_obs(o, obs_type)
        To = policy.shape_meta.obs_horizon
        hist = {k: np.repeat(first[k][None, None], To, 1) for k in keys}
        policy.reset()
        queue: list[np.ndarray] = []
        for _ in range(int(env_steps)):
            if not queue:
                acts = policy.predict_action({k: torch.from_numpy(hist[k]).to(device) for k in keys})
                queue = list(acts[0].cpu().numpy())
            o, _, term, trunc, _ = env.step(queue.pop(0))
            new = spec.env_obs(o, obs_type)
            for k in keys:
                hist[k][0, :-1] = hist[k][0, 1:]
                hist[k][0, -1] = new[k]
            if term or trunc:
                break
        raw = getattr(env, "raw", None)
        if raw is not None:
            raw._last_action = None  # no action marker in the scene panel
        frame = env.render()
    finally:
        env.close()
    return {k: torch.from_numpy(hist[k]).to(device) for k in keys}, frame


def check_landscape_config(cfg: DictConfig) -> Path:
    """Check every setting before the checkpoint is loaded (a bad ``out`` or seed must cost nothing and
    overwrite nothing); returns the figure's path."""
    require_given("checkpoint", cfg.get("checkpoint"), "DiffTOP IL run directory or checkpoint")
    require_seed("seed", cfg.get("seed"))
    require_seed("latent_seed", cfg.get("latent_seed"))
    require_int("threads", cfg.get("threads"), 0)
    require_int("env_steps", cfg.get("env_steps"), 0)
    require_int("samples", cfg.get("samples"), 1)
    require_int("grid", cfg.get("grid"), 2)
    require_int("path_iters", cfg.get("path_iters"), 0)
    if cfg.init is not None and cfg.init not in ("base", "zero", "random"):
        raise UserError(f"init must be zero, random or (for a policy with a base) base, got {cfg.init!r}")
    out = require_writable_file("out", cfg.get("out"))
    if out.with_suffix(".json").is_dir():
        raise UserError(f"out={str(cfg.out)!r}: its numbers file {out.with_suffix('.json')} is a directory")
    return out


def main(cfg: DictConfig) -> int:
    from difftop.il.policies import policy_from_state
    from difftop.il.policies.difftop_cvae import DiffTOPPolicy

    out = check_landscape_config(cfg)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    device = resolve_device(cfg.device)
    try:
        # through the module: what a checkpoint file is belongs to difftop.utils.checkpoint alone
        state = checkpoints.load_checkpoint(str(cfg.checkpoint), kind="il", weights_only=True)
        policy = policy_from_state(state)
    except checkpoints.CheckpointError as e:
        raise UserError(str(e)) from None
    except (KeyError, RuntimeError, TypeError) as e:
        raise UserError(f"checkpoint {cfg.checkpoint}: cannot rebuild its policy "
                        f"({type(e).__name__}: {e})") from None
    if not isinstance(policy, DiffTOPPolicy):
        name = (state.get("spec") or {}).get("name", type(policy).__name__)
        raise UserError(f"{cfg.checkpoint} holds a {name!r} policy; the landscape needs difftop")
    if cfg.init == "base" and policy.base is None:
        raise UserError(f"init must be zero, random or (for a policy with a base) base, got {cfg.init!r}")
    samples = int(cfg.samples)
    if policy.posterior_dim == 0 and samples > 1:
        print(f"landscape: this DiffTOP has no CVAE latent (posterior_dim=0): one objective, not {samples}")
        samples = 1
    policy.to(device)
    run = state["config"]
    torch.manual_seed(int(cfg.latent_seed))
    obs, frame = _observation(policy, run["task"], run["obs"], int(cfg.seed), int(cfg.env_steps),
                              int(run.get("max_steps", 300)), device)
    res = compute_landscape(policy, obs, samples=samples, latent_seed=int(cfg.latent_seed),
                            grid=int(cfg.grid), path_iters=int(cfg.path_iters), init=cfg.init,
                            include_prox=bool(cfg.include_prox))
    title = (f"{run['policy']} (init {cfg.init or policy.init}), {run['task']} seed {cfg.seed}, "
             f"step {state['step']}")
    plot_landscape(res, frame, out, title)
    numbers = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in res.items() if k != "values"}
    out.with_suffix(".json").write_text(json.dumps({"checkpoint": str(cfg.checkpoint), **numbers}, indent=1))
    finals = ", ".join(f"({a[0]:.1f}, {a[1]:.1f})" for a in res["final"])
    print(f"landscape: {out} (init ({res['init'][0]:.1f}, {res['init'][1]:.1f}) -> {finals}; "
          f"{res['paths'].shape[1] - 1} iterations drawn)")
    return 0
