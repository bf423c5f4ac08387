"""Pieces every long job shares: the progress bar and the global RNG state kept in checkpoints."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["Progress", "global_rng_state", "set_global_rng_state"]


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
