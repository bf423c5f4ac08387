"""``difftop il``: train an imitation policy on demonstrations, resumably.

The dataset (zarr replay buffer or robomimic hdf5) is read once; its episodes are split into train
and validation sets (``val_ratio``, fixed ``split_seed``); the normaliser is fitted on the training
episodes and handed to the policy (so it is saved in every checkpoint). Each gradient step samples a
batch of windows (observation history / action chunk, the policy's shapes), computes the policy's
loss and takes an AdamW step (gradient-norm clipped; a step whose loss or gradient is not finite is
skipped and counted, never applied). Every ``val_every`` steps a validation loss on fixed held-out
batches, every ``eval_every`` steps (and at the end) seeded rollouts in the environment (success
rate and the task's metrics, a video).

The run engine (:mod:`difftop.engine`) owns the run folder (``config.yaml``, ``train.csv`` /
``val.csv`` / ``eval.csv``, ``tb/``, ``videos/``, ``checkpoint/``), resume and interrupts; this module
is the loop's units. Validation and rollouts draw from forked RNGs, so a resumed run is the
uninterrupted run.
"""

from __future__ import annotations

import copy
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from difftop import engine
from difftop.engine import Context, Loop, RunSpec
from difftop.engine import distributed as dist
from difftop.errors import UserError
from difftop.il.rollout import check_action_frame, eval_row
from difftop.nn.ema import ema_update_
from difftop.tasks import get_task
from difftop.utils.checkpoint import CheckpointError, load_checkpoint
from difftop.utils.checks import require_int, require_number
from difftop.utils.device import resolve_device

__all__ = ["main", "train", "resolve_config", "load_policy", "fit_normalizer"]

OBS_TYPES = ("state", "image", "pointcloud")
TRAIN_KEYS = {"lr": 1e-4, "weight_decay": 0.0, "lr_schedule": "constant", "lr_warmup": 0, "ema_decay": 0.0,
              "batch_size": 256}


def resolve_config(cfg: DictConfig) -> DictConfig:
    """Validate the user's config, fill the automatic values; adds ``policy_params`` (constructor keys)."""
    from difftop.il.policies import POLICIES

    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    task = get_task(str(cfg.task))
    if cfg.obs not in OBS_TYPES:
        raise UserError(f"unknown obs {cfg.obs!r}; choose one of: {', '.join(OBS_TYPES)}")
    task.keys(cfg.obs)
    if cfg.policy not in POLICIES:
        raise UserError(f"unknown policy {cfg.policy!r}; choose one of: {', '.join(sorted(POLICIES))}")
    params = dict(OmegaConf.to_container(cfg.policies.get(cfg.policy) or {}, resolve=True))
    for key, default in TRAIN_KEYS.items():
        value = params.pop(key, default)
        if cfg.get(key) is None:
            cfg[key] = value
    if cfg.policy == "difftop":
        init = cfg.init if cfg.init is not None else ("base" if cfg.base else params.get("init", "zero"))
        if init not in ("base", "zero", "random"):
            raise UserError(f"init must be base, zero or random, got {init!r}")
        if init == "base" and not cfg.base:
            raise UserError("init=base needs base=<checkpoint of a trained bc / bc_rnn / diffusion run>")
        params["init"] = init
        from difftop.il.policies.difftop_cvae import trajopt_config

        trajopt_config(*(params.get(k) for k in ("solver", "backward", "max_iters", "tol", "trajopt")))
    elif cfg.init is not None:
        raise UserError(f"init= is a difftop option; policy {cfg.policy!r} does not take it")
    cfg.policy_params = params
    for key in ("batch_size", "log_every", "max_steps", "eval_batch"):
        require_int(key, cfg[key], 1)
    for key in ("steps", "val_every", "eval_every", "eval_episodes", "val_batches", "lr_warmup"):
        require_int(key, cfg[key], 0)
    require_int("checkpoint_every", cfg.get("checkpoint_every"), 1, optional=True)
    require_number("lr", cfg.lr, 0, low_open=True)
    require_number("weight_decay", cfg.weight_decay, 0)
    require_number("val_ratio", cfg.val_ratio, 0, 1)
    require_number("ema_decay", cfg.ema_decay, 0, 1)
    if cfg.lr_schedule not in ("constant", "cosine"):
        raise UserError(f"lr_schedule must be constant or cosine, got {cfg.lr_schedule!r}")
    cfg.device = resolve_device(cfg.device)
    return cfg


def load_policy(path: str | Path, ema: bool = True):
    """(policy, checkpoint dict) of a trained IL run; a missing / corrupt / foreign file is a UserError."""
    from difftop.il.policies import policy_from_state

    try:
        state = load_checkpoint(path, kind="il", weights_only=True)  # the weights file: no pickle
    except CheckpointError as e:
        raise UserError(str(e)) from None
    try:
        return policy_from_state(state, ema=ema), state
    except (KeyError, RuntimeError, TypeError) as e:
        raise UserError(f"checkpoint {path}: cannot rebuild its policy ({type(e).__name__}: {e})") from None


def chunk_warning(base: Any, n_action_steps: int, policy: str) -> str | None:
    """A warning (printed, and returned) when a base that acts in chunks would be queried every step.

    Why: a chunked base (Diffusion executes 8 of its 16 predicted actions) re-sampled at every step
    loses its temporal consistency; Residual + Diffusion on Push-T fell from the base's 0.72
    coverage to 0.27 that way.
    """
    if base is None or base.shape_meta.n_action_steps <= n_action_steps:
        return None
    k = base.shape_meta.n_action_steps
    msg = (f"warning: the base acts in chunks of {k} actions but {policy} executes {n_action_steps} per "
           f"prediction, so the base is re-sampled every {n_action_steps} step(s); to refine whole chunks "
           f"set policies.{policy}.n_action_steps={k}"
           + (f" (DiffTOP: and plan_horizon={k})" if policy == "difftop" else ""))
    print(msg)
    return msg


def load_weights(policy: Any, path: str | Path, name: str) -> None:
    """Start ``policy`` from a trained run of the same policy: its weights and normaliser, not its base.

    Why: IBC trains without its initialiser, so "IBC + Diffusion" is a trained IBC's energy with a
    Diffusion base attached (``weights=<ibc run> base=<diffusion run> steps=0``) rather than a second,
    identical IBC training; and any run can fine-tune from another.
    """
    from difftop.il.policies import BASE_ARGS

    src, state = load_policy(path)
    if state["spec"]["name"] != name:
        raise UserError(f"weights {path} are a {state['spec']['name']} policy, this run trains {name}")
    is_base = tuple(f"{a}." for a in BASE_ARGS)
    own = {k: v for k, v in src.state_dict().items() if not k.startswith(is_base)}
    try:
        missing, unexpected = policy.load_state_dict(own, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise UserError(f"weights {path}: its {name} does not fit this run's ({e})") from None
    missing = [k for k in missing if not k.startswith(is_base)]
    if missing or unexpected:
        raise UserError(f"weights {path}: its {name} does not fit this run's (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")


def fit_normalizer(data: Any, steps: np.ndarray, obs_keys: list[str], action_key: str = "action"):
    """Min-max normaliser of the low-dim keys and the actions on ``steps``; images to [-1, 1]; point clouds
    ``(N, D)`` per channel over all points (as DP3: a per-point-index range would mean nothing, since
    farthest-point sampling orders the points arbitrarily)."""
    from difftop.data.normalizer import Normalizer

    arrays, modes = {}, {}
    for k in [*obs_keys, action_key]:
        image = data[k].ndim == 4 and data[k].dtype == np.uint8
        arrays[k] = data[k][steps[:1]] if image else data[k][steps]
        if data[k].ndim == 3 and not image:  # (steps, N, D) points: the (2, D) channel range fits (D,)
            flat = arrays[k].reshape(-1, arrays[k].shape[-1])
            arrays[k] = np.stack([flat.min(0), flat.max(0)])
        modes[k] = "image" if image else "minmax"
    return Normalizer.fit(arrays, modes)


def _fork_rng(device: str):
    """A copy of the RNGs for validation and rollouts: the training stream (and resume) stays unchanged."""
    cuda = str(device).startswith("cuda")
    return torch.random.fork_rng(devices=[torch.device(device).index or 0] if cuda else [])


def _to(batch: Any, device: str) -> Any:
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch.to(device)


def base_action_cache(policy: Any, ds: Any, device: str, seed: int, chunk: int = 256) -> torch.Tensor | None:
    """A frozen base's normalised actions for every window of ``ds``, computed once (None: no base).

    Why: the base never changes, so per window its action is fixed (a deterministic base: BC) or one
    fixed draw (a stochastic one: Diffusion, a GMM); querying a diffusion base on every batch costs its
    10 denoising passes per gradient step, many times DiffTOP's own step on a CPU. Seeded in a forked
    RNG, so a resumed run rebuilds the same cache and the run's own random streams are untouched.
    """
    parts = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for s in range(0, len(ds), chunk):
            obs = _to(ds.get_batch(np.arange(s, min(s + chunk, len(ds))))["obs"], device)
            part = policy.frozen_base_actions(obs)
            if part is None:
                return None
            parts.append(part)
    return torch.cat(parts)


def _lr_lambda(cfg: DictConfig):
    warm, total, cosine = int(cfg.lr_warmup), max(int(cfg.steps), 1), cfg.lr_schedule == "cosine"

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if not cosine:
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(total - warm, 1))))

    return f


def _validate(policy, val_ds, cfg: DictConfig) -> dict[str, float]:
    """Mean loss and metrics over ``val_batches`` fixed batches (RNG forked: training is unaffected)."""
    gen = np.random.default_rng(cfg.split_seed + 1)
    sums: dict[str, float] = {}
    n = 0
    was_training = policy.training
    policy.eval()
    with _fork_rng(cfg.device), torch.no_grad():
        torch.manual_seed(cfg.seed + 1)
        for _ in range(int(cfg.val_batches)):
            loss, metrics = policy.compute_loss(_to(val_ds.sample(int(cfg.batch_size), gen), cfg.device))
            for k, v in {"val_loss": float(loss), **{f"val_{k}": v for k, v in metrics.items()}}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n += 1
    policy.train(was_training)
    return {k: v / max(n, 1) for k, v in sums.items()}


def _evaluate(policy, cfg: DictConfig, step: int, out: Path) -> dict[str, Any]:
    from difftop.il.rollout import rollout

    video = out / "videos" / f"eval_{step:08d}.mp4" if cfg.video else None
    with _fork_rng(cfg.device):
        torch.manual_seed(cfg.eval_seed)
        res = rollout(policy, cfg.task, cfg.obs, int(cfg.eval_episodes), int(cfg.eval_seed),
                      max_steps=int(cfg.max_steps), batch=int(cfg.eval_batch), video=video, device=cfg.device)
    return res


#: keys a resumed run may change freely: how far to go and how to report
RESUME_FREE = ("steps", "eval_every", "eval_episodes", "eval_batch", "video", "checkpoint_every", "val_every",
               "log_every", "checkpoint_minutes", "ddp_timeout_minutes")
#: policies whose loss leaves some trainable parameters out (DiffTOP: the argmax ignores f's last bias, and
#: plan_horizon=1 never calls the dynamics d), so DDP must look for them every step
DDP_PARTIAL_LOSS = frozenset({"difftop"})
SPEC = RunSpec(kind="il", step_key="step", overridable=RESUME_FREE, weights=(("policy",), ("ema",)))


class _Loss(torch.nn.Module):
    """The policy's training loss as a forward pass: DistributedDataParallel all-reduces the gradients
    of what its ``forward`` computed, and policies train through ``compute_loss``."""

    def __init__(self, policy: torch.nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, batch: dict):
        return self.policy.compute_loss(batch)


class ILLoop(Loop):
    """Imitation learning as units of work: one gradient step (with its log and validation rows when
    due), or one rollout evaluation. The checkpoint before an evaluation keeps the training before it,
    so an evaluation cut off (IBC's take ~30 min on a CPU) costs only itself.

    Under torchrun (:mod:`difftop.engine.distributed`) every rank draws the same ``batch_size`` windows
    and trains on its block of them under DistributedDataParallel; rank 0 alone validates and evaluates."""

    def __init__(self, cfg: DictConfig, state: dict | None):
        from difftop.data import SequenceDataset, file_split, load_dataset
        from difftop.il.policies import build_policy, policy_from_spec

        dist.require_divisible(int(cfg.batch_size))
        self.cfg = cfg
        self.task = task = get_task(cfg.task)
        obs_keys = list(task.keys(cfg.obs))
        if cfg.get("obs_keys"):  # a robomimic-style file: the user picks its observation keys
            data = load_dataset(cfg.data, obs_keys=[str(k) for k in cfg.obs_keys])
            given = [str(k) for k in data.attrs["obs_keys"]]
            if cfg.eval_episodes and sorted(given) != sorted(obs_keys):
                raise UserError(f"obs_keys give the observation keys {given}, but task {task.name}'s "
                                f"rollouts (obs={cfg.obs}) provide {obs_keys}; pass eval_episodes=0 to train "
                                f"without rollouts, or choose the task whose observations these are")
            obs_keys = given
        else:
            data = load_dataset(cfg.data)
            task.derive(data, cfg.obs)
        for k in [*obs_keys, "action"]:
            data[k]  # a UserError naming the file when a key is missing
        obs_shapes = {k: tuple(int(s) for s in data[k].shape[1:]) for k in obs_keys}
        action_dim = int(data["action"].shape[1])

        if state is not None:
            policy = policy_from_spec(state["spec"])
            spec = state["spec"]
            check_action_frame(policy, task, f"the run in {cfg.out_dir}")
        else:
            base = None
            if cfg.base:
                base, _ = load_policy(cfg.base)
                bmeta = base.shape_meta
                if dict(bmeta.obs) != obs_shapes or bmeta.action_dim != action_dim:
                    raise UserError(f"base {cfg.base} was trained on observations {dict(bmeta.obs)} / action "
                                    f"dim {bmeta.action_dim}, this run has {obs_shapes} / {action_dim}")
            params = OmegaConf.to_container(cfg.policy_params, resolve=True)  # plain lists/dicts in the spec
            if base is not None:
                check_action_frame(base, task, f"base {cfg.base}")
            policy, spec = build_policy(cfg.policy, obs_shapes, action_dim, params, base)
            spec["action_frame"] = task.action_frame
            if not getattr(policy, "follow_base_chunks", False):  # IBC queries its base once per chunk
                chunk_warning(base, policy.shape_meta.n_action_steps, cfg.policy)
        meta = policy.shape_meta
        full = SequenceDataset(data, obs_keys, "action", horizon=meta.horizon, obs_horizon=meta.obs_horizon,
                               n_action_steps=meta.n_action_steps)
        own = file_split(data) if cfg.get("file_split", True) else None
        if own is not None:  # the file's own mask/train and mask/valid (robomimic's filters)
            kw = dict(horizon=meta.horizon, obs_horizon=meta.obs_horizon, n_action_steps=meta.n_action_steps)
            self.train_ds, self.val_ds = (SequenceDataset(data, obs_keys, "action", episodes=idx, **kw)
                                          for idx in own)
            print(f"split: the file's mask/train ({len(own[0])} episodes) and mask/valid ({len(own[1])})")
        else:
            self.train_ds, self.val_ds = full.split(float(cfg.val_ratio), seed=int(cfg.split_seed))
        if len(self.train_ds) == 0:
            raise UserError(f"{cfg.data}: no training windows (episodes shorter than the policy's horizon "
                            f"{meta.horizon}?)")
        policy.set_normalizer(fit_normalizer(data, self.train_ds.steps(), obs_keys))
        if state is None and cfg.get("weights"):
            load_weights(policy, cfg.weights, cfg.policy)
        policy.to(cfg.device)
        self.policy, self.spec = policy, spec
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=float(cfg.lr), weight_decay=float(cfg.weight_decay))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(cfg))
        self.ema = copy.deepcopy(policy).requires_grad_(False) if cfg.ema_decay > 0 else None
        self.sampler = np.random.default_rng(cfg.seed)
        self.step_, self.skipped, self.last_eval = 0, 0, None
        # an evaluation owed at this step (steps=0 evaluates the policy as it is)
        self.eval_owed = int(cfg.steps) == 0 and bool(cfg.eval_episodes)
        self.base_cache = None
        self.ddp = None  # the policy's loss under DistributedDataParallel (torchrun), from start()
        self.sums: dict[str, float] = {}
        self.n_sum, self.t_log = 0, time.time()
        self.ckpt_every = int(cfg.checkpoint_every or cfg.eval_every or cfg.steps or 1)
        self.policy.train()

    # ---- state
    def progress(self) -> int:
        return self.step_

    def finished(self) -> bool:
        return self.step_ >= self.cfg.steps and not self.eval_owed

    def state_dict(self) -> dict:
        return {"spec": self.spec, "policy": self.policy.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "sampler": self.sampler.bit_generator.state, "step": self.step_, "skipped": self.skipped,
                "last_eval": self.last_eval, "n_train_episodes": len(self.train_ds.episodes),
                "eval_pending": self.eval_owed, "log_sums": dict(self.sums), "log_n": self.n_sum}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        sampler = state.get("sampler") or state["rng"]["sampler"]  # v1 kept it with the global RNGs
        self.sampler.bit_generator.state = sampler
        self.step_, self.skipped = int(state["step"]), int(state.get("skipped", 0))
        self.last_eval, self.eval_owed = state.get("last_eval"), bool(state.get("eval_pending"))
        self.sums, self.n_sum = dict(state.get("log_sums") or {}), int(state.get("log_n", 0))

    def start(self) -> None:
        """The frozen base's action cache, after the restore (the base's weights are in the checkpoint).
        An old run's config has no base_cache: it goes on querying its base on every batch, as it began."""
        cfg = self.cfg
        if cfg.get("base_cache") and cfg.base:  # None for a policy that trains without its base (IBC)
            t0 = time.time()
            self.base_cache = base_action_cache(self.policy, self.train_ds, cfg.device, int(cfg.seed))
            if self.base_cache is not None:
                print(f"base_cache: the base's actions for {len(self.train_ds)} training windows, "
                      f"{time.time() - t0:.0f} s")
        if dist.active():  # after the restore: every rank starts from the checkpoint's weights
            self.ddp = dist.wrap(_Loss(self.policy), find_unused_parameters=cfg.policy in DDP_PARTIAL_LOSS)

    def close(self) -> None:
        """With ``DIFFTOP_RANK_DIGEST=1`` under torchrun, each rank writes ``rank<r>.sha256`` (its weights and
        optimizer state) into the run folder: tests check that the ranks never drift apart."""
        if self.ddp is not None and os.environ.get("DIFFTOP_RANK_DIGEST") == "1":
            text = dist.digest(self.policy.state_dict(), self.opt.state_dict()["state"]) + "\n"
            (Path(self.cfg.out_dir) / f"rank{dist.rank()}.sha256").write_text(text)

    def describe(self) -> str:
        c = self.cfg
        return f"{c.policy} {c.task} {c.obs} s{c.seed}"

    def summary(self) -> dict:
        return {"step": self.step_, "skipped": self.skipped, "last_eval": self.last_eval}

    def done_message(self, s: dict) -> str:
        c = self.cfg
        ev = "".join(f", {k.replace('mean_', 'mean ').replace('_', ' ')} {v:.3g}"
                     for k, v in (s["last_eval"] or {}).items())
        return (f"done: {c.policy} on {c.task} ({c.obs}), {s['step']} steps ({s['skipped']} skipped){ev}, "
                f"{s['wall_time']:.0f} s; results in {s['out_dir']}")

    # ---- units
    def step(self, ctx: Context) -> bool:
        if self.eval_owed:
            if dist.is_main():  # the others wait at the checkpoint that follows
                self._evaluate(ctx)
            self.eval_owed = False
            return True
        return self._train_step(ctx)

    def _evaluate(self, ctx: Context) -> None:
        cfg = self.cfg
        ctx.note("evaluating")
        evaluator = self.ema if self.ema is not None else self.policy
        res = _evaluate(evaluator, cfg, self.step_, ctx.out)
        ctx.crash_point("il.evaluated")
        self.policy.train()
        row = eval_row(self.task, res)
        self.last_eval = {k: v for k, v in row.items() if k == "success_rate" or k.startswith("mean_")}
        ctx.log("eval", {"step": self.step_, "wall_time": ctx.wall(), **row})
        ctx.done_note()

    def _train_step(self, ctx: Context) -> bool:
        cfg, policy = self.cfg, self.policy
        # the same draw as train_ds.sample
        idx = self.sampler.integers(0, len(self.train_ds), size=int(cfg.batch_size))
        idx = dist.my_rows(idx)  # under torchrun this rank's block of the same draw
        batch = self.train_ds.get_batch(idx)
        if self.base_cache is not None:
            batch["base_action"] = self.base_cache[idx]
        batch = _to(batch, cfg.device)
        if self.ddp is not None:
            loss, metrics, ok, gn = self._ddp_gradient_step(batch)
        else:
            loss, metrics = policy.compute_loss(batch)
            ok = bool(torch.isfinite(loss))
            gn = math.nan
        if ok and self.ddp is None:
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            clip = float(cfg.grad_clip) if cfg.grad_clip else math.inf
            gn = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
            ok = math.isfinite(gn)
            if ok:
                self.opt.step()
                if self.ema is not None:
                    ema_update_(self.ema, policy, 1.0 - float(cfg.ema_decay))
            self.opt.zero_grad(set_to_none=True)
        self.skipped += not ok
        self.sched.step()
        self.step_ += 1
        step = self.step_
        if ok:
            for k, v in {"loss": loss.item(), "grad_norm": gn, **metrics}.items():
                self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.n_sum += 1
        ctx.advance(1, loss=f"{loss.item():.4g}")
        if step % cfg.log_every == 0 or step == cfg.steps:
            now = time.time()
            row = {"step": step, "wall_time": ctx.wall(), "lr": self.sched.get_last_lr()[0],
                   "skipped": self.skipped,
                   "steps_per_s": (step % cfg.log_every or cfg.log_every) / max(now - self.t_log, 1e-9)}
            row.update({k: v / max(self.n_sum, 1) for k, v in self.sums.items()})
            ctx.log("train", row)
            self.sums, self.n_sum, self.t_log = {}, 0, now
        if cfg.val_every and len(self.val_ds) and (step % cfg.val_every == 0 or step == cfg.steps) \
                and dist.is_main():
            ctx.note("validating")
            evaluator = self.ema if self.ema is not None else policy
            ctx.log("val", {"step": step, "wall_time": ctx.wall(), **_validate(evaluator, self.val_ds, cfg)})
            ctx.done_note()
        self.eval_owed = bool(cfg.eval_episodes) and (step == cfg.steps
                                                      or bool(cfg.eval_every) and step % cfg.eval_every == 0)
        return self.eval_owed or step == cfg.steps or step % self.ckpt_every == 0

    def _ddp_gradient_step(self, batch: dict) -> tuple[torch.Tensor, dict, bool, float]:
        """One step under DistributedDataParallel: (loss, metrics) are the means over the ranks (the whole
        batch's), the same on every rank, and so are the gradient norm and the skip decision.

        Why backward always: a rank that skipped it would leave the others waiting in the gradient
        all-reduce; a non-finite loss anywhere makes the step skipped on every rank instead."""
        cfg = self.cfg
        with dist.rank_rng(int(cfg.seed), self.step_):
            loss, metrics = self.ddp(batch)
            keys = list(metrics)
            means = dist.mean_scalars([loss.detach(), *(metrics[k] for k in keys)])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()  # DDP averages the gradients over the ranks
        clip = float(cfg.grad_clip) if cfg.grad_clip else math.inf
        gn = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
        ok = math.isfinite(means[0]) and math.isfinite(gn)
        if ok:
            self.opt.step()
            if self.ema is not None:
                ema_update_(self.ema, self.policy, 1.0 - float(cfg.ema_decay))
        self.opt.zero_grad(set_to_none=True)
        return torch.tensor(means[0]), dict(zip(keys, means[1:], strict=True)), ok, gn


def _finished(state: dict, cfg: DictConfig) -> bool:
    return int(state["step"]) >= cfg.steps and not state.get("eval_pending")


def _summary(state: dict) -> dict:
    return {"out_dir": str(Path(state.get("path", ".")).parent), "step": int(state["step"]),
            "skipped": int(state.get("skipped", 0)), "last_eval": state.get("last_eval"),
            "wall_time": float(state["wall_time"])}


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) one imitation-learning run; returns a summary dict."""
    cfg = resolve_config(cfg)
    if dist.active():
        cfg.device = dist.device()  # one GPU per process: cuda:LOCAL_RANK
    return engine.run(cfg, SPEC, ILLoop, _finished, _summary)


def main(cfg: DictConfig) -> int:
    if dist.requested():  # torchrun: one process of several; leaves the process when done
        dist.launch(lambda: train(cfg), str(cfg.get("device", "auto")),
                    float(cfg.get("ddp_timeout_minutes") or 120))
    train(cfg)
    return 0
