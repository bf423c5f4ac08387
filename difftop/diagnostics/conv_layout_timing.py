"""Why the pixel pipeline is channels-last on CPU: TD-MPC's conv stack on 256 frame stacks of 9x84x84,
one thread, in slices of 64 as PixelEncoder runs them, in the default (NCHW) and channels-last (NHWC)
layouts, and what making a batch NHWC costs from float or from uint8 frames.

    .venv/bin/python -m difftop.diagnostics.conv_layout_timing [repeats]   # prints a markdown table
"""
import argparse
import time

import torch
from torch import nn

from difftop.nn.told import PixelEncoder

NHWC = torch.channels_last


def best(fn, repeats: int) -> float:
    """Fastest of ``repeats`` calls after one warm-up, in ms."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * min(times)


def layers(enc: PixelEncoder, x: torch.Tensor, grad: bool) -> None:
    """The plain layer stack slice by slice (no layout change inside)."""
    with torch.set_grad_enabled(grad):
        out = torch.cat([nn.Sequential.forward(enc, c) for c in x.split(64)])
        if grad:
            out.sum().backward()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("repeats", type=int, nargs="?", default=5,
                    help="timed calls per row (the fastest counts)")
    repeats = ap.parse_args(argv).repeats
    torch.set_num_threads(1)
    torch.manual_seed(0)
    enc = PixelEncoder((9, 84, 84), 50, 32)
    u8 = torch.randint(0, 256, (256, 9, 84, 84), dtype=torch.uint8)
    x_nchw, x_nhwc = u8.float(), u8.float().contiguous(memory_format=NHWC)
    rows = [(f"conv stack, {'forward + backward' if grad else 'no grad'}",
             best(lambda g=grad: layers(enc, x_nchw, g), repeats),
             best(lambda g=grad: layers(enc, x_nhwc, g), repeats))
            for grad in (False, True)]
    to_nhwc = best(lambda: x_nchw.contiguous(memory_format=NHWC), repeats)
    u8_to_nhwc_float = best(lambda: u8.contiguous(memory_format=NHWC).float(), repeats)
    print(f"# TD-MPC conv stack, 256 x 9x84x84, slices of 64, 1 thread, best of {repeats}\n")
    print("| what | NCHW ms | NHWC ms |\n|---|---|---|")
    for name, a, b in rows:
        print(f"| {name} | {a:.0f} | {b:.0f} |")
    print(f"| float NCHW -> float NHWC (copy) | - | {to_nhwc:.0f} |")
    print(f"| uint8 NCHW -> NHWC, then float | - | {u8_to_nhwc_float:.0f} |")
    print(f"| uint8 -> float, NCHW | {best(lambda: u8.float(), repeats):.0f} | - |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
