"""Why the pixel pipeline is channels-last on CPU (session 21): TD-MPC's conv stack on 256 frame
stacks of 9x84x84, one thread, in slices of 64 as PixelEncoder runs them, in the default (NCHW) and
channels-last (NHWC) layouts, and what making a batch NHWC costs from float or from uint8 frames.

    .venv/bin/python results/rl/conv_layout_timing.py [repeats]   # prints a markdown table
"""
import sys
import time

import torch
from torch import nn

from difftop.nn.told import PixelEncoder

torch.set_num_threads(1)
REPEATS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
NHWC = torch.channels_last
torch.manual_seed(0)
enc = PixelEncoder((9, 84, 84), 50, 32)
u8 = torch.randint(0, 256, (256, 9, 84, 84), dtype=torch.uint8)


def best(fn) -> float:
    """Fastest of REPEATS calls after one warm-up, in ms."""
    fn()
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * min(times)


def layers(x: torch.Tensor, grad: bool) -> None:
    """The plain layer stack slice by slice (no layout change inside)."""
    with torch.set_grad_enabled(grad):
        out = torch.cat([nn.Sequential.forward(enc, c) for c in x.split(64)])
        if grad:
            out.sum().backward()


x_nchw, x_nhwc = u8.float(), u8.float().contiguous(memory_format=NHWC)
rows = [(f"conv stack, {'forward + backward' if grad else 'no grad'}",
         best(lambda g=grad: layers(x_nchw, g)), best(lambda g=grad: layers(x_nhwc, g)))
        for grad in (False, True)]
to_nhwc = best(lambda: x_nchw.contiguous(memory_format=NHWC))
u8_to_nhwc_float = best(lambda: u8.contiguous(memory_format=NHWC).float())
print(f"# TD-MPC conv stack, 256 x 9x84x84, slices of 64, 1 thread, best of {REPEATS}\n")
print("| what | NCHW ms | NHWC ms |\n|---|---|---|")
for name, a, b in rows:
    print(f"| {name} | {a:.0f} | {b:.0f} |")
print(f"| float NCHW -> float NHWC (copy) | - | {to_nhwc:.0f} |")
print(f"| uint8 NCHW -> NHWC, then float | - | {u8_to_nhwc_float:.0f} |")
print(f"| uint8 -> float, NCHW | {best(lambda: u8.float()):.0f} | - |")
