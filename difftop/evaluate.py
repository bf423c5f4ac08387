"""``difftop eval checkpoint=...``: evaluate any difftop checkpoint, dispatching on what it holds.

Each kind of run registers its evaluator in :data:`EVALUATORS` (``"module:function"``, imported
only when used); the function takes (eval config, loaded checkpoint dict, checkpoint path).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from omegaconf import DictConfig

from difftop.errors import UserError
from difftop.utils.checkpoint import CheckpointError, load_checkpoint
from difftop.utils.checks import require_int

EVALUATORS: dict[str, str] = {
    "rl": "difftop.rl.evaluate:evaluate_rl_checkpoint",
    "il": "difftop.il.evaluate:evaluate_il_checkpoint",
}


def main(cfg: DictConfig) -> int:
    require_int("episodes", cfg.get("episodes"), 1, optional=True)
    path = Path(str(cfg.checkpoint))
    if path.is_dir():
        path = path / "checkpoint.pt"
    try:
        state = load_checkpoint(path)
    except CheckpointError as e:
        raise UserError(str(e)) from None
    kind = state.get("kind")
    if kind not in EVALUATORS:
        raise UserError(f"checkpoint {path} holds a {kind!r} run, which `difftop eval` cannot evaluate "
                        f"(known: {', '.join(EVALUATORS)})")
    module, _, fn = EVALUATORS[kind].partition(":")
    getattr(importlib.import_module(module), fn)(cfg, state, path)
    return 0
