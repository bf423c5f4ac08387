"""Shrink an RL checkpoint to what `difftop eval` loads, so that it fits the device tool's 16 MiB a file.

`difftop eval` restores only the agent's modules (weights_only), so the optimizer states go, and each
target network (used only by training's TD targets) is written as an alias of its online network:
torch.save stores a shared tensor once. The result evaluates exactly as the original would with the
online weights, but it cannot resume training (the original stays on the device machine).
    python results/rl/gpu/slim_checkpoint.py IN.pt OUT.pt
"""
import sys

from difftop.utils.checkpoint import load_checkpoint, save_checkpoint


def slim(src: str, dst: str) -> None:
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
