"""Time one pixel minibatch ``ReplayBuffer.sample(256)`` (H=5, 9x84x84 stacks, one thread) on the CPU:
gathered with numpy on host storage (what every update paid before the buffer moved to the agent's
device, also on a GPU run) against torch indexing (what a GPU-resident buffer does, here run on the
CPU). Both give the same batch. results/rl/pixels/README.md quotes its output.

    .venv/bin/python -m difftop.diagnostics.buffer_gather_timing [episodes]
"""
import argparse
import time

import numpy as np
import torch

from difftop.rl.replay import ReplayBuffer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("episodes", type=int, nargs="?", default=100, help="cartpole episodes in the buffer")
    episodes = ap.parse_args(argv).episodes
    torch.set_num_threads(1)
    L = 125
    rng = np.random.default_rng(0)
    buf = ReplayBuffer((9, 84, 84), 1, L, episodes * L, 5, pixels=True)
    for _ in range(episodes):
        buf.add_episode(rng.integers(0, 255, (L + 1, 9, 84, 84), dtype=np.uint8),
                        np.zeros((L, 1), np.float32), np.zeros(L, np.float32))
    times = {True: [], False: []}
    for r in range(4):  # the first round warms up
        for host in times:
            buf._host_gather = host
            t = time.perf_counter()
            buf.sample(256, np.random.default_rng(r))
            times[host].append(time.perf_counter() - t)
    for host, v in times.items():
        how = "numpy gather on the host" if host else "torch indexing (a GPU buffer's path, on the CPU)"
        print(f"{how}: median {1e3 * np.median(v[1:]):.0f} ms per sample(256), {episodes} episodes, 1 thread")
    batches = []
    for host in (True, False):
        buf._host_gather = host
        batches.append(buf.sample(64, np.random.default_rng(9)))
    print("same batch:", torch.equal(batches[0].obs, batches[1].obs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
