"""Pieces every long job shares: the progress bar and the global RNG state kept in checkpoints."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["Progress", "finished_run", "global_rng_state", "open_run", "set_global_rng_state"]


def global_rng_state() -> dict:
    """torch, numpy and python global RNG states (what a resumed run must restore)."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_global_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


class Progress:
    """A tqdm bar (or nothing when ``enabled`` is false) with a postfix for the latest figures."""

    def __init__(self, enabled: bool, total: int, initial: int, desc: str):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                            smoothing=0.05)

    def update(self, n: int, **postfix: Any) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix({k: v for k, v in postfix.items() if v is not None}, refresh=False)

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def open_run(cfg, kind: str, same_keys, overridable):
    """(config to run, checkpoint state or None) for a run in ``cfg.out_dir``.

    A checkpoint there without ``resume=true`` is refused (never overwrite a run); with it, the
    saved config wins except for ``overridable`` keys (how far to go, how to report) and ``out_dir``
    (the run goes on where its checkpoint was found, also after the folder was moved), and every key
    of ``same_keys`` must agree. ``resume=true`` with no checkpoint yet starts the run, so job
    scripts can always pass it.
    """
    from omegaconf import OmegaConf

    from difftop.errors import UserError
    from difftop.utils.checkpoint import CheckpointError, load_checkpoint

    ckpt_path = Path(cfg.out_dir) / "checkpoint.pt"
    if not ckpt_path.exists():
        if cfg.resume:
            print(f"resume=true: no checkpoint in {cfg.out_dir} yet, starting the run")
        return cfg, None
    if not cfg.resume:
        raise UserError(f"{cfg.out_dir} already holds a run (checkpoint.pt); pass resume=true to continue it "
                        f"or choose another out_dir")
    try:
        state = load_checkpoint(ckpt_path, kind=kind)
    except CheckpointError as e:
        raise UserError(str(e)) from None
    saved = OmegaConf.create(state["config"])
    for key in same_keys:
        if saved.get(key) != cfg.get(key):
            raise UserError(f"resume: {key}={cfg.get(key)!r} differs from the checkpoint's "
                            f"{saved.get(key)!r}")
    for key in (*overridable, "out_dir"):
        saved[key] = cfg[key]
    return saved, state


def finished_run(out_dir, done: int, steps: int, unfinished_work: bool) -> bool:
    """True (and says so) when a resumed run has nothing left to do: it reached ``steps`` and owes no
    evaluation or update. Such a run is left untouched - its config.yaml, logs and checkpoint stay as
    it trained - so that re-running a job script (maybe with other reporting keys) changes nothing."""
    if done < steps or unfinished_work:
        return False
    print(f"{out_dir} is finished ({done} of steps={steps} done); nothing to do, nothing rewritten "
          f"(pass a larger steps= to train on)")
    return True
