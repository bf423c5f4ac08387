"""Shrink an RL checkpoint to what `difftop eval` loads, so that it fits the device tool's 16 MiB a file.

A checkpoint directory (model.json, model.safetensors, state.pt, buffer.npz): `difftop eval` reads only
model.json and model.safetensors, so those two are copied to OUT (a directory; a `.pt` suffix is
dropped) and the resume state (optimizers, RNGs, replay buffer) stays behind. A single-file checkpoint
(checkpoint.pt): `difftop eval` restores only the agent's modules (weights_only), so the optimizer
states go, and each target network (used only by training's TD targets) is written as an alias of its
online network: torch.save stores a shared tensor once. Either way the result evaluates exactly as the
original would with the online weights, but it cannot resume training (the original stays on the
device machine).
    python tools/slim_checkpoint.py RUN_OR_CHECKPOINT OUT.pt
"""
import shutil
import sys
from pathlib import Path

from difftop.utils import checkpoint
from difftop.utils.checkpoint import load_checkpoint, save_checkpoint


def slim(src: str, dst: str) -> None:
    found = checkpoint.find_checkpoint(src) if hasattr(checkpoint, "find_checkpoint") else None
    if found is not None and found.is_dir():
        out = Path(dst).with_suffix("") if Path(dst).suffix == ".pt" else Path(dst)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("model.json", "model.safetensors"):
            shutil.copy2(found / name, out / name)
        return
    state = load_checkpoint(src, kind="rl")
    agent = state["agent"]
    mods = agent["modules"]
    for target, online in (("target", "model"), ("critic_target", "critic")):
        if target in mods and online in mods and mods[target].keys() == mods[online].keys():
            mods[target] = mods[online]
    agent["optimizers"] = {}
    state["slim"] = "weights only; targets alias the online networks; not resumable"
    save_checkpoint(dst, state)


if __name__ == "__main__":
    slim(sys.argv[1], sys.argv[2])
