"""Several processes training one run (``torchrun --nproc_per_node=N -m difftop il ...``).

torchrun starts N copies of the command with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set;
:func:`launch` joins them into one process group (NCCL on GPUs, one GPU per process, ``cuda:LOCAL_RANK``;
gloo on the CPU). Without those variables (or with ``WORLD_SIZE=1``) nothing here is used and every
helper is a no-op, so a single-process run computes exactly what it always did.

The rules that keep N processes one run:

- **Same draws, own rows.** Every rank holds the same sampler (same seed, same state, so the same
  checkpoint) and draws the same ``batch_size`` window indices each step; rank r trains on the
  contiguous block ``r*B/N .. (r+1)*B/N`` of that draw (:func:`my_rows`). DistributedDataParallel
  averages the gradients, so N processes take the step one process takes on the whole batch (up to
  the order of float sums) when the loss is a mean over the batch's rows.
- **Rank 0 alone touches the run folder**: it opens, refuses or resumes it, logs, validates, evaluates,
  shows progress and commits checkpoints. The others wait at a barrier after every checkpoint (and so
  after every evaluation, which is followed by one), so nobody runs ahead of a commit; a resuming rank
  reads the very checkpoint rank 0 opened before rank 0 may change the folder.
- **One decision per unit.** Signals (Ctrl-C, SIGTERM) and rank 0's checkpoint clock are agreed with one
  small all-reduce after every unit (:func:`any_flags`), so all ranks stop or checkpoint after the
  same unit.
- **Noise per rank.** Losses that draw noise (diffusion timesteps, CVAE samples, IBC negatives, random
  crops) draw it from a torch stream seeded by (seed, step, rank) (:func:`rank_rng`): ranks do not
  repeat each other's noise, the global RNG states stay equal on every rank (what a checkpoint saves),
  and a run resumed with the same N draws the noise of the uninterrupted run. Such losses are the
  single-process loss in distribution, not draw for draw.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from difftop.errors import EXIT_USAGE, UserError

__all__ = ["device", "requested", "active", "rank", "world_size", "is_main", "barrier", "broadcast_object",
           "agree", "any_flags", "mean_scalars", "my_rows", "rank_rng", "wrap", "launch", "require_divisible",
           "digest"]

_device: str = "cpu"  # this rank's device, where NCCL wants the collectives' tensors


def device() -> str:
    """This rank's device (``cuda:LOCAL_RANK`` or ``cpu``), once :func:`launch` has joined the group."""
    return _device


def requested() -> bool:
    """Started by torchrun (or another launcher with its variables) with more than one process."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_object(obj: Any = None) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; for small decisions, not weights)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agree(fn: Callable[[], Any]) -> Any:
    """``fn()`` on every rank; a user error on any rank is raised on all of them (the lowest rank's), so
    setup never leaves some ranks waiting in a collective for others that have stopped."""
    if not active():
        return fn()
    err, out = None, None
    try:
        out = fn()
    except UserError as e:
        err = str(e)
    errs: list = [None] * dist.get_world_size()
    dist.all_gather_object(errs, err)
    for r, e in enumerate(errs):
        if e:
            raise UserError(e if r == 0 else f"rank {r}: {e}")
    return out


def any_flags(*flags: bool) -> tuple[bool, ...]:
    """Each flag true on any rank (one MAX all-reduce): a stop or a checkpoint every rank agrees on."""
    if not active():
        return tuple(bool(f) for f in flags)
    t = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int32, device=_device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in t.tolist())


def mean_scalars(values: list[float]) -> list[float]:
    """The mean over the ranks of each value (one all-reduce): the logged loss and metrics of the whole
    batch, the same on every rank, so every rank makes the same skip decision."""
    if not active():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return (t / dist.get_world_size()).tolist()


def require_divisible(batch_size: int) -> None:
    """The global batch must split evenly, or ranks would average unequal shares."""
    n = world_size()
    if batch_size % n:
        raise UserError(f"batch_size={batch_size} is the global batch and must be divisible by the {n} "
                        f"processes (WORLD_SIZE); choose a multiple of {n}")


def my_rows(idx: np.ndarray) -> np.ndarray:
    """This rank's contiguous block of the global index draw ``idx``."""
    n = world_size()
    if n == 1:
        return idx
    k = len(idx) // n
    r = rank()
    return idx[r * k:(r + 1) * k]


@contextlib.contextmanager
def rank_rng(seed: int, step: int) -> Iterator[None]:
    """Torch's RNG seeded by (seed, step, rank) inside, restored after (see the module's rules)."""
    cuda = _device.startswith("cuda")
    with torch.random.fork_rng(devices=[torch.device(_device).index or 0] if cuda else []):
        s = int(np.random.SeedSequence([int(seed), int(step), rank()]).generate_state(1)[0])
        torch.default_generator.manual_seed(s)
        if cuda:
            torch.cuda.manual_seed(s)
        yield


def digest(*trees: Any) -> str:
    """sha256 of every tensor in ``trees`` (state dicts), in order: equal on all ranks iff bitwise equal."""
    import hashlib

    h = hashlib.sha256()

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            h.update(x.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            for k in sorted(x, key=str):
                walk(x[k])
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    for t in trees:
        walk(t)
    return h.hexdigest()


def wrap(module: torch.nn.Module, find_unused_parameters: bool = False) -> torch.nn.Module:
    """``module`` under DistributedDataParallel on this rank's device.

    No buffer sync per step: the buffers (normalisers) are equal on every rank and no policy has batch
    norm, so it would only cost time. ``find_unused_parameters`` for a module whose loss may leave some
    trainable parameters out of a step (DDP then still finishes the reduction; it costs a graph walk)."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel as DDP

    cuda = _device.startswith("cuda")
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters \
        else "broadcast_buffers"  # the newer name (torch 2.13 warns about the old one)
    return DDP(module, device_ids=[torch.device(_device).index] if cuda else None,
               find_unused_parameters=find_unused_parameters, **{no_sync: False})


def _init(setting: str, timeout_minutes: float) -> None:
    """Join the process group; this rank's device (``cuda:LOCAL_RANK`` on GPUs, else ``cpu``)."""
    global _device
    from difftop.utils.device import resolve_device

    wanted = resolve_device(setting)
    cuda = wanted.startswith("cuda")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} CUDA "
                            f"devices; start at most that many processes per node")
        _device = f"cuda:{local}"
        torch.cuda.set_device(local)
    else:
        _device = "cpu"
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=float(timeout_minutes)),
                            **({"device_id": torch.device(_device)} if cuda else {}))
    if dist.get_rank() != 0:  # one copy of every message: rank 0's (errors still reach stderr)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives until the process exits


def _flush() -> None:
    for f in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            f.flush()


def launch(fn: Callable[[], Any], setting: str, timeout_minutes: float = 120) -> None:
    """Run ``fn()`` in the process group (``setting``: the run's ``device=``; :func:`device` then names this
    rank's), then leave the process; never returns.

    A user error is printed once (by rank 0) and exits 2; a stop (Ctrl-C / SIGTERM, after its checkpoint)
    exits 130; any other exception prints its traceback and exits 1 without waiting, so torchrun stops
    the other ranks. On a clean ending every rank meets at a last barrier first, so rank 0 has printed
    everything before any rank leaves (torchrun stops the rest as soon as one exits non-zero).

    Why ``os._exit``: with gloo the interpreter's normal teardown after ``destroy_process_group`` aborts
    (SIGABRT) in roughly one run in ten; leaving at once after flushing passed 20 runs of 20.
    """
    rc = 0
    try:
        try:
            _init(setting, timeout_minutes)
            fn()
        except UserError as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                traceback.print_exc()
            elif os.environ.get("RANK") == "0":  # the same error stops every rank: say it once
                print(f"error: {e}", file=sys.stderr)
            rc = EXIT_USAGE
        except KeyboardInterrupt:
            rc = 130
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        _flush()
        if rc in (0, EXIT_USAGE, 130) and dist.is_initialized():
            with contextlib.suppress(Exception):  # a peer that already failed: nothing to wait for
                dist.barrier()
    except BaseException:
        traceback.print_exc()
        rc = 1
    for sig in (signal.SIGINT, signal.SIGTERM):  # leaving now: a late signal must not cut the teardown
        signal.signal(sig, signal.SIG_IGN)
    if dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    _flush()
    os._exit(rc)
