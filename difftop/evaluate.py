"""``difftop eval checkpoint=...``: evaluate any difftop checkpoint, dispatching on what it holds.

Each kind of run registers its evaluator in :data:`EVALUATORS` (``"module:function"``, imported
only when used); the function takes (eval config, loaded checkpoint dict, checkpoint path) and
writes to ``cfg.out_dir``, which :func:`main` has already resolved and checked.

Every setting is checked before the checkpoint is loaded: a bad ``seed``, ``threads`` or
``out_dir`` must cost the user nothing (no evaluation thrown away at the end) and leave every
saved file as it was.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from omegaconf import DictConfig

from difftop.errors import UserError
from difftop.utils import checkpoint as checkpoints
from difftop.utils.checks import require_given, require_int, require_seed, require_writable_dir

__all__ = ["EVALUATORS", "check_eval_config", "main"]

EVALUATORS: dict[str, str] = {
    "rl": "difftop.rl.evaluate:evaluate_rl_checkpoint",
    "il": "difftop.il.evaluate:evaluate_il_checkpoint",
}


def check_eval_config(cfg: DictConfig) -> Path:
    """Check the eval settings (no checkpoint loaded yet); fills ``cfg.out_dir`` (null: ``<run dir>/eval``)
    and returns the checkpoint path as given (a run folder, a checkpoint or a file of one)."""
    require_given("checkpoint", cfg.get("checkpoint"), "run directory or checkpoint")
    require_int("episodes", cfg.get("episodes"), 1, optional=True)
    require_seed("seed", cfg.get("seed"))
    require_int("threads", cfg.get("threads"), 0)
    path = Path(str(cfg.checkpoint)).expanduser()
    found = checkpoints.find_checkpoint(path)  # a run folder, a checkpoint or a file of one
    if found is None:
        raise UserError(f"checkpoint {path} does not exist")
    if cfg.get("out_dir") is None:  # the run folder's eval/, never inside the checkpoint (committed whole)
        cfg.out_dir = str(found.parent / "eval")
    require_writable_dir("out_dir", cfg.out_dir)
    return path


def main(cfg: DictConfig) -> int:
    path = check_eval_config(cfg)
    try:
        # through the module: what a checkpoint file is belongs to difftop.utils.checkpoint alone
        state = checkpoints.load_checkpoint(path, weights_only=True)  # no pickle: any checkpoint is safe
    except checkpoints.CheckpointError as e:
        raise UserError(str(e)) from None
    kind = state.get("kind")
    if kind not in EVALUATORS:
        raise UserError(f"checkpoint {path} holds a {kind!r} run, which `difftop eval` cannot evaluate "
                        f"(known: {', '.join(EVALUATORS)})")
    if cfg.episodes is None:  # the run's own number of eval episodes
        cfg.episodes = int((state.get("config") or {}).get("eval_episodes") or 10)
    module, _, fn = EVALUATORS[kind].partition(":")
    getattr(importlib.import_module(module), fn)(cfg, state, path)
    return 0
