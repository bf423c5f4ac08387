"""The run engine: one resumable loop under every long command (``difftop rl``, ``difftop il``).

A command is a :class:`Loop`: a unit of work (:meth:`Loop.step`: one episode collected, one update,
one evaluation, one gradient step) plus its state. The engine owns everything around it: opening,
refusing or resuming the run folder, seeding, threads, the config written beside the run, the logs
(CSV + TensorBoard), the progress bar, checkpoint cadence and commits, and interrupts.

Why units: a checkpoint may then be taken between any two of them (by cadence, by the clock inside
an hours-long learning burst, or on Ctrl-C / SIGTERM), and because it commits the loop's state, the
RNG states, extra files (the replay buffer) and the CSV row counts together
(:func:`difftop.utils.checkpoint.commit_checkpoint`), a run killed at any instant resumes to exactly
the run that was never stopped.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from difftop.engine import distributed as dist
from difftop.engine.faults import crash_point
from difftop.engine.rundir import RunSpec, open_run
from difftop.errors import UserError
from difftop.utils.checkpoint import CheckpointError, commit_checkpoint, load_checkpoint, recover
from difftop.utils.checks import require_int, require_number, require_seed, require_writable_dir
from difftop.utils.runlog import RunLogger

__all__ = ["Loop", "Context", "run", "validate_run_keys", "global_rng_state", "set_global_rng_state"]


def global_rng_state() -> dict:
    """torch, numpy and python global RNG states (what a resumed run must restore)."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_global_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def validate_run_keys(cfg: DictConfig) -> None:
    """The keys every run has, checked before anything slow starts."""
    require_seed("seed", cfg.get("seed"))
    require_int("threads", cfg.get("threads"), 0)
    require_writable_dir("out_dir", cfg.get("out_dir"))
    require_number("checkpoint_minutes", cfg.get("checkpoint_minutes"), 0, optional=True)
    log = cfg.get("logger") or {}
    if log.get("wandb"):
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise UserError("logger.wandb=true needs the wandb package: pip install -e '.[tracking]'"
                            ) from None
        mode = log.get("wandb_mode", "online")
        if mode not in ("online", "offline", "disabled"):
            raise UserError(f"logger.wandb_mode must be online, offline or disabled, got {mode!r}")
    allow = cfg.get("allow_change")
    if allow is not None and not OmegaConf.is_list(allow) and not isinstance(allow, list):
        raise UserError(f"allow_change must be a list of keys, e.g. allow_change=[lr], got {allow!r}")


def _new_wandb_id() -> str:
    """A W&B run id for a new run (kept in its checkpoints: a resumed run logs to the same W&B run)."""
    import uuid

    return uuid.uuid4().hex[:12]


def _wandb_settings(cfg: DictConfig, run_id: str) -> dict | None:
    """``wandb.init`` keywords from ``logger.*`` (None when ``logger.wandb`` is off)."""
    log = cfg.get("logger") or {}
    if not log.get("wandb"):
        return None
    name = log.get("wandb_name") or "/".join(Path(str(cfg.out_dir)).parts[-4:])
    return {"project": log.get("wandb_project") or "difftop", "entity": log.get("wandb_entity"),
            "mode": log.get("wandb_mode") or "online", "name": name, "id": run_id,
            "config": OmegaConf.to_container(cfg, resolve=True)}


class Context:
    """What a loop's units use of the engine: logging, the progress bar, the run folder, the clock.
    Under torchrun only rank 0 has a logger and a bar; the other ranks' rows go nowhere."""

    def __init__(self, out: Path, logger: RunLogger | None, bar: Any, wall_offset: float):
        self.out = out
        self.logger = logger
        self.bar = bar
        self._start = time.time()
        self._offset = wall_offset

    def wall(self) -> float:
        """Seconds the run has trained, over all its resumptions."""
        return self._offset + time.time() - self._start

    def log(self, category: str, row: dict) -> None:
        if self.logger is not None:
            self.logger.log(category, row)

    def advance(self, n: int, **postfix: Any) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self._postfix = {k: v for k, v in postfix.items() if v is not None}
                self.bar.set_postfix(self._postfix, refresh=False)

    def note(self, text: str) -> None:
        """Say what the run is doing now (evaluating, checkpointing) until :meth:`done_note`."""
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=True)

    def done_note(self) -> None:
        """Back to the latest figures after a :meth:`note`."""
        if self.bar is not None:
            self.bar.set_postfix(getattr(self, "_postfix", {}), refresh=False)

    crash_point = staticmethod(crash_point)


class Loop(ABC):
    """One kind of run. Subclasses build everything in ``__init__`` (envs, models, data) and keep their
    whole state in :meth:`state_dict`, so that a run is the same run after any resume."""

    #: units of progress the bar counts, e.g. "step"
    unit: str = "step"

    @abstractmethod
    def progress(self) -> int:
        """Work done so far, in the units of ``cfg.steps``."""

    @abstractmethod
    def finished(self) -> bool:
        """Nothing left to do (the target reached, no evaluation or update owed)."""

    @abstractmethod
    def step(self, ctx: Context) -> bool:
        """Do one unit of work; True when a checkpoint is due after it (the loop's own cadence)."""

    @abstractmethod
    def state_dict(self) -> dict:
        """Everything to resume from (weights under the spec's ``weights`` subtrees)."""

    @abstractmethod
    def load_state_dict(self, state: dict) -> None: ...

    def start(self) -> None:  # noqa: B027 - optional hook
        """Called once before the first unit, after a resumed run's state is restored."""

    def files(self) -> dict[str, Callable[[Path], None]]:
        """Extra files committed with each checkpoint (name -> writer), e.g. the replay buffer."""
        return {}

    def restore_files(self, ckpt_dir: Path) -> None:  # noqa: B027 - optional hook
        """Read back the extra files of the checkpoint being resumed."""

    def describe(self) -> str:
        """The progress bar's label."""
        return ""

    def summary(self) -> dict:
        return {}

    def done_message(self, summary: dict) -> str:
        """The line printed when the run ends (the summary holds ``out_dir`` and ``wall_time`` too)."""
        return f"done: {summary['wall_time']:.0f} s; results in {summary['out_dir']}"

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release environments and renderers."""


def preemption_signal() -> signal.Signals:
    """The signal a scheduler sends shortly before it stops a job (pre-emption or time limit): SLURM's
    ``--signal``, which submitit sets to USR2 (or ``$SUBMITIT_PREEMPT_SIGNAL``)."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return getattr(signal, f"SIG{name}", signal.SIGUSR2)


class _Interrupts:
    """SIGINT / SIGTERM set a flag that the engine checks between units (it then checkpoints and stops);
    a second Ctrl-C stops at once, keeping the last checkpoint.

    The pre-emption signal (:func:`preemption_signal`) is treated like SIGTERM, so a pre-empted job
    keeps the work of its current unit; its earlier handler (submitit's, which requeues the job) is
    called once that checkpoint is committed (:meth:`hand_over`) instead of cutting the unit off."""

    def __init__(self):
        self.flag: str | None = None
        self.preempted = False
        self._old: dict = {}
        self._preempt = preemption_signal()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in dict.fromkeys((signal.SIGINT, signal.SIGTERM, self._preempt)):
                if sig == self._preempt and signal.getsignal(sig) == signal.SIG_IGN:
                    continue  # a job that chose to ignore it keeps ignoring it
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.flag is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.preempted = self.preempted or signum == self._preempt
        self.flag = signal.Signals(signum).name
        print(f"\n{self.flag}: saving a checkpoint after this step (Ctrl-C again to stop now, keeping the "
              f"last checkpoint)", flush=True)

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        return False

    def hand_over(self) -> None:
        """After a pre-emption, call the signal's earlier Python handler (restored by now): under
        submitit it requeues the job (the requeued job resumes with ``resume=true``) and exits."""
        old = self._old.get(self._preempt)
        if self.preempted and callable(old):
            old(self._preempt, None)


def _finished_message(out: Path, done: int, steps: int) -> None:
    print(f"{out} is finished ({done} of steps={steps} done); nothing to do, nothing rewritten "
          f"(pass a larger steps= to train on)")


def run(cfg: DictConfig, spec: RunSpec, build: Callable[[DictConfig, dict | None], Loop],
        finished: Callable[[dict, DictConfig], bool], summary_of: Callable[[dict], dict]) -> dict:
    """Run (or resume) one run; returns the loop's summary.

    ``build(cfg, state)`` makes the loop (``state``: the checkpoint being resumed, or None; the engine
    loads it into the loop afterwards); ``finished(state, cfg)`` says from a checkpoint alone whether
    a resumed run has nothing left to do (it is then left untouched); ``summary_of(state)`` is that
    run's summary.
    """
    if dist.requested() and not dist.active():
        raise UserError(f"{spec.kind} runs in one process; of the training commands only `difftop il` runs "
                        f"under torchrun (WORLD_SIZE={os.environ.get('WORLD_SIZE')})")
    validate_run_keys(cfg)
    out = Path(cfg.out_dir)
    cfg, state = _open(cfg, spec)
    if state is not None and finished(state, cfg):
        if dist.is_main():
            _finished_message(out, int(state.get(spec.step_key, state.get("step", 0))), int(cfg.steps))
        return summary_of(state)

    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    loop = dist.agree(lambda: build(cfg, state))
    try:
        return _drive(cfg, spec, loop, state, out)
    finally:
        loop.close()


def _open(cfg: DictConfig, spec: RunSpec) -> tuple[DictConfig, dict | None]:
    """:func:`open_run`; under torchrun rank 0 opens (or refuses) the run and the others take its config
    and read the checkpoint it opened, all before rank 0 may change the folder."""
    if not dist.active():
        return open_run(cfg, spec)
    if dist.is_main():
        try:
            cfg, state = open_run(cfg, spec)
            decision = (None, OmegaConf.to_container(cfg, resolve=True), state and state.get("path"))
        except UserError as e:
            decision = (str(e), None, None)
    decision = dist.broadcast_object(decision if dist.is_main() else None)
    if decision[0]:
        raise UserError(decision[0])
    if dist.is_main():
        dist.agree(lambda: None)
        return cfg, state

    def read() -> dict | None:
        try:
            return load_checkpoint(decision[2], kind=spec.kind) if decision[2] else None
        except CheckpointError as e:
            raise UserError(f"resume: {e}") from None

    run = OmegaConf.create(decision[1])
    if "device" in cfg:
        run.device = cfg.device  # its own GPU (cuda:LOCAL_RANK), not rank 0's
    return run, dist.agree(read)


def _drive(cfg: DictConfig, spec: RunSpec, loop: Loop, state: dict | None, out: Path) -> dict:
    if state is not None:
        loop.load_state_dict(state)
        set_global_rng_state(state["rng"])
        if state.get("path"):
            loop.restore_files(Path(state["path"]))
    loop.start()
    main = dist.is_main()  # under torchrun only rank 0 touches the folder (logs, config, checkpoints)
    logger = None
    if main:
        # Only now, with everything built, is the folder touched: a cut-off checkpoint swap is finished,
        # the logs cut back to the checkpoint (or emptied for a fresh start).
        out.mkdir(parents=True, exist_ok=True)
        recover(out)
        rows = None if state is not None and "logs" not in state else (state or {}).get("logs", {})
        resume_step = int(loop.progress()) if state is not None else None
        wandb_id = (state or {}).get("wandb_id") or _new_wandb_id()
        logger = RunLogger(out, tensorboard=bool(cfg.get("tensorboard", True)), step_key=spec.step_key,
                           rows=rows, resume_step=resume_step, wandb=_wandb_settings(cfg, wandb_id))
        tmp = out / ".config.yaml.tmp"
        tmp.write_text(OmegaConf.to_yaml(cfg))
        tmp.replace(out / "config.yaml")

    bar = None
    if main and cfg.get("progress", True):
        from tqdm.auto import tqdm

        bar = tqdm(total=int(cfg.steps), initial=min(loop.progress(), int(cfg.steps)), desc=loop.describe(),
                   unit=loop.unit, dynamic_ncols=True, smoothing=0.05)
    ctx = Context(out, logger, bar, float(state["wall_time"]) if state is not None else 0.0)
    minutes = cfg.get("checkpoint_minutes")
    last = time.time()

    def checkpoint() -> None:
        nonlocal last
        if not main:  # the other ranks wait until it is committed
            dist.barrier()
            return
        ctx.note("checkpointing")
        st = loop.state_dict()
        st.update({"kind": spec.kind, "config": OmegaConf.to_container(cfg), "rng": global_rng_state(),
                   "wall_time": ctx.wall(), "wandb_id": wandb_id})
        try:
            commit_checkpoint(out, st, weights=spec.weights, files=loop.files(), logs=logger.counts(),
                              crash=crash_point)
        except OSError as e:  # a full disk, a vanished folder: the last checkpoint stays as it was
            shutil.rmtree(out / ".checkpoint.new", ignore_errors=True)
            raise UserError(f"cannot write a checkpoint in {out} ({e.strerror or e}); the last checkpoint is "
                            f"kept: free space, then continue with resume=true") from None
        last = time.time()
        ctx.done_note()
        dist.barrier()

    stopped = None
    try:
        with _Interrupts() as interrupts:
            if state is None:
                checkpoint()  # the run exists from its first instant: resume=true always finds it
            while not loop.finished():
                due = loop.step(ctx)
                crash_point("step")
                overdue = minutes is not None and time.time() - last >= 60 * float(minutes)
                stop = bool(interrupts.flag)
                if dist.active():  # rank 0's clock, any rank's signal: every rank decides alike
                    overdue, stop = dist.any_flags(main and overdue, stop)
                if due or overdue or stop or loop.finished():
                    checkpoint()
                if not dist.active():
                    stop = bool(interrupts.flag)  # also a signal that came during that checkpoint
                if stop:
                    stopped = interrupts.flag or "a signal to another rank"
                    break
    except KeyboardInterrupt:
        print(f"\ninterrupted: the last checkpoint in {out} is kept; continue with resume=true")
        raise
    finally:
        if bar is not None:
            bar.close()
        if logger is not None:
            logger.close()
    if stopped:
        print(f"stopped ({stopped}): checkpoint saved in {out} at {loop.progress()} of {cfg.steps}; "
              f"continue with resume=true", flush=True)
        interrupts.hand_over()
        raise KeyboardInterrupt
    summary = {"out_dir": str(out), "wall_time": ctx.wall(), **loop.summary()}
    print(loop.done_message(summary))
    return summary
