"""Carry unfinished runs across machines: a fresh machine starts without runs/ (checkpoints, buffers).

    .venv/bin/python tools/carry.py save      # before the machine goes away, then commit results/carry/
    .venv/bin/python tools/carry.py save il/pusht/image-cpu   # only the runs under runs/il/pusht/image-cpu
    .venv/bin/python tools/carry.py restore   # tools/continue.sh does this first
    .venv/bin/python tools/carry.py finished runs/<...>/seedN   # exit 0 if finished (the run scripts)
    .venv/bin/python tools/carry.py skip runs/<...>/seedN [--forced]   # exit 0 (and say why) if the
                                                              # IL run scripts need not train it now
    .venv/bin/python tools/carry.py keep --every 1800   # save every 30 min (tools/continue.sh)
    .venv/bin/python tools/carry.py dest runs/<...>/seedN       # where tools/collect.sh copies its record

`save` packs the resume state (the checkpoint: a `checkpoint/` directory, or the single-file
`checkpoint.pt` with `buffer.npz` beside it; config, CSVs, TensorBoard events; no videos)
of every run in runs/ that is not finished, and of every finished IL base (bc, bc_rnn, diffusion, ibc)
that a not-yet-finished run of the same seed still needs, into results/carry/<run path>.tar. A run is
finished when its collected record in results/ reaches the last step (RL: the 100k evaluation and the
final 20-episode evaluation; IL: the 20k evaluation). Tarballs of runs finished since are deleted.
`restore` unpacks each tarball whose run has no checkpoint in runs/ (a newer checkpoint is never
overwritten) and deletes the tarball of a run finished since it was packed. Why not regenerate:
finger-spin runs take 3.5-5 h, longer than a machine was held, and the Diffusion base of the Diffusion
rows takes ~1.5 h to retrain. Why `keep`: once a machine was taken back before its final `save`, and
its finger-spin and Diffusion runs were lost with it.

Where a run's record goes in results/ (`dest`) depends on the question it answers: RL_DEST and IL_DEST
below map a runs/ folder to a results/ folder; add a line there when a new kind of run starts.
"""
from __future__ import annotations

import argparse
import csv
import fcntl
import functools
import io
import json
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CARRY = ROOT / "results" / "carry"
RL_STEPS, IL_STEPS = 100_000, 20_000
# IL base -> the runs (same seed) that start from it; ibc_diffusion loads IBC's weights and Diffusion
# (and the release-loss arms of tools/run_il_mechanism.sh)
MECHANISM_ARMS = ("default", "weighting", "official")
DEPENDENTS = {
    "bc": ("difftop_bc", "residual_bc", "difftop_nocvae_bc"),
    "bc_rnn": ("difftop_bc_rnn", "residual_bc_rnn", "difftop_nocvae_bc_rnn",
               *(f"difftop_bc_rnn-{arm}" for arm in MECHANISM_ARMS)),
    "diffusion": ("residual_diffusion", "difftop_diffusion", "difftop_nocvae_diffusion", "ibc_diffusion",
                  *(f"difftop_diffusion-{arm}" for arm in MECHANISM_ARMS)),
    "ibc": ("ibc_diffusion",),
}
KEEP = ("checkpoint.pt", "buffer.npz", "config.yaml", "train.csv", "eval.csv", "val.csv")
CKPT_DIR = "checkpoint"  # a run's checkpoint directory (model.json, model.safetensors, state.pt, buffer.npz,
# commit.json), replaced atomically by a swap through .checkpoint.new / .checkpoint.old
# runs/<root> (the RL run scripts' ROOT) -> the results/ folder that holds its runs, by question
RL_DEST = {
    "cpu": "rl/states/runs",                   # TD-MPC vs DiffTOP vs DiffTOP w/o backward, states
    "cpu-pg": "rl/pg-mode/runs",               # how the PG loss is applied (online vs batched)
    "cpu-qs1": "rl/qs-horizon/runs",           # Q_s's TD loss on one step
    "cpu-memory": "rl/pg-gradient/runs-memory",    # PG gradient of solves cut short: memory mode
    "cpu-iters20": "rl/pg-gradient/runs-iters20",  # ... and 20 solver iterations
    "cpu-explore0": "rl/explore-std/runs-explore0",  # DiffTOP without exploration noise
    "mech50k": "rl/fixed-data/50k/runs",       # the 50k no-backward checkpoints of the fixed-data tests
}
# runs/il/<task>/<setting> -> results/<question>/runs/<task>/<setting>; a "<task>/<setting>" key wins over
# the setting alone (the robomimic tasks' image runs are another question than Push-T's)
IL_DEST = {
    "state": "il/pusht-states",                # Tables 1 and 3, paper sizes
    "state-cpu": "il/pusht-states",            # Tables 1 and 3, il_preset=cpu
    "image": "il/pusht-images",                # Tables 1-2 from 96x96 pixels (issue 29), paper sizes
    "image-cpu": "il/pusht-images",            # ... il_preset=cpu
    "state-cpu-ta1": "il/chunking",            # a chunked base refined one action at a time
    "state-cpu-mechanism": "il/mechanism",     # the release's IL loss vs difftop's (issue 31)
    "prox0.01": "il/refinement",               # why DiffTOP refines less: probes
    "beta0.01": "il/refinement",
    "probes": "il/refinement",
    "pointcloud": "il/pointcloud",             # ManiSkill PickCube and MetaWorld from point clouds (issue 30)
    "pointcloud-absolute": "il/pointcloud",    # ... PickCube's first table, absolute joint targets (all 0/50)
    **{f"{task}/{setting}": "il/robomimic-images"  # Square, Transport, ToolHang from images (issue 29)
       for task in ("lift", "can", "square", "transport", "toolhang") for setting in ("image", "image-cpu")},
}


def last_step(eval_csv: Path) -> int | None:
    """The step (first column) of the last row of an eval.csv, or None if it has no row."""
    if not eval_csv.is_file():
        return None
    rows = list(csv.reader(io.StringIO(eval_csv.read_text())))
    return int(float(rows[-1][0])) if len(rows) > 1 else None


def is_il(run: Path) -> bool:
    return run.relative_to(ROOT / "runs").parts[0] == "il"


def campaign(run: Path) -> bool:
    """A run of a campaign whose records collect to results/ (IL, or an RL_DEST root): only these are
    carried; probes (runs/mechanism, runs/probe, smoke runs) stay on their machine."""
    return is_il(run) or run.relative_to(ROOT / "runs").parts[0] in RL_DEST


def collected(run: Path) -> Path:
    """Where tools/collect.sh copies the record of runs/<...> (RL_DEST, IL_DEST)."""
    rel = run.relative_to(ROOT / "runs")
    if is_il(run):  # runs/il/<task>/<setting>/... -> results/<question>/runs/<task>/<setting>/...
        setting = rel.parts[2] if len(rel.parts) > 2 else ""
        q = IL_DEST.get(f"{rel.parts[1]}/{setting}") or IL_DEST.get(setting, "il/unsorted")
        return ROOT / "results" / q / "runs" / Path(*rel.parts[1:])
    # runs/<root>/<task>/<agent>/seedN -> results/<RL_DEST[root]>/<task>/<agent>/seedN
    dest = RL_DEST.get(rel.parts[0], f"rl/unsorted/{rel.parts[0]}")
    return ROOT / "results" / dest / Path(*rel.parts[1:])


def finished(run: Path) -> bool:
    """True when results/ holds the run's complete record (so it is never trained again)."""
    res = collected(run)
    if is_il(run):
        return last_step(res / "eval.csv") == (0 if run.parent.name == "ibc_diffusion" else IL_STEPS)
    return last_step(res / "eval.csv") == RL_STEPS and (res / "final20" / "eval.json").is_file()


def needed(run: Path) -> bool:
    """A run whose resume state must survive: unfinished, or an IL base an unfinished run still needs."""
    if not finished(run):
        return True
    deps = DEPENDENTS.get(run.parent.name, ()) if is_il(run) else ()
    return any(not finished(run.parent.parent / d / run.name) for d in deps)


def tar_name(run: Path) -> Path:
    return CARRY / (str(run.relative_to(ROOT / "runs")).replace("/", "__") + ".tar")


def run_of(tar_path: Path) -> Path:
    return ROOT / "runs" / Path(*tar_path.stem.split("__"))


def has_checkpoint(run: Path) -> bool:
    return (run / "checkpoint.pt").is_file() or (run / CKPT_DIR / "commit.json").is_file()


def packed_files(run: Path) -> list[Path]:
    """The files `save` packs of a run: KEEP, the checkpoint directory and the TensorBoard events."""
    ckpt = sorted(f for f in (run / CKPT_DIR).rglob("*") if f.is_file()) if (run / CKPT_DIR).is_dir() else []
    tb = [f for f in (run / "tb").rglob("*") if f.is_file()] if (run / "tb").is_dir() else []
    return [run / name for name in KEEP if (run / name).is_file()] + ckpt + tb


def base_ready(run: Path) -> bool:
    """Finished (collected in results/) and its whole checkpoint is here: a run script uses it as a base
    as it is, rather than resuming it (which would repeat its final evaluation)."""
    return finished(run) and has_checkpoint(run) and not mid_checkpoint(run)


def skip_reason(run: Path, forced: bool = False) -> str | None:
    """Why a run script need not train `run` now, or None when it must (train or resume). Two cases:
    finished in results/ with no checkpoint here (a fresh machine; not when the run is `forced` as a
    dependent's base, which needs its weights), or a finished base whose whole checkpoint is here
    (resume=true would only repeat its final evaluation, tens of minutes, every session)."""
    if not finished(run):
        return None
    if not forced and not (run / "checkpoint.pt").exists() and not (run / CKPT_DIR).exists():
        return f"finished (collected in {collected(run).relative_to(ROOT)})"
    if base_ready(run):
        return "finished, its checkpoint is here"
    return None


def mid_checkpoint(run: Path) -> bool:
    """True while a run is writing a checkpoint. A checkpoint directory is swapped in whole
    (.checkpoint.new -> checkpoint), and complete when every file its commit.json lists is there. With
    the single-file layout the RL trainer replaces buffer.npz, then checkpoint.pt, so a buffer newer than
    the checkpoint belongs to the next checkpoint (packing both now would pair the old weights with a
    buffer that already holds the episodes they have yet to collect)."""
    if not (run / "checkpoint.pt").is_file():  # a checkpoint directory: mid-swap, or not all of it there
        d = run / CKPT_DIR
        if (run / ".checkpoint.new").exists() or not (d / "commit.json").is_file():
            return True
        try:
            names = json.loads((d / "commit.json").read_text())["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return True
        return not all((d / n).is_file() for n in names)
    buf, ckpt = run / "buffer.npz", run / "checkpoint.pt"
    return buf.is_file() and buf.stat().st_mtime > ckpt.stat().st_mtime


def lock_file(name: str):
    """An open file under runs/locks/ for fcntl.flock (runs/ may not exist yet on a fresh machine)."""
    locks = ROOT / "runs" / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    return open(locks / name, "w")


def exclusive(fn):
    """Run `fn` holding runs/locks/carry.lock: both lanes restore at start, and the keeper's periodic
    save may meet a final manual save; two of them must not write one tarball or run at once."""
    @functools.wraps(fn)
    def locked(*args, **kwargs):
        with lock_file("carry.lock") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return fn(*args, **kwargs)
    return locked


@exclusive
def save(under: str | None = None) -> None:
    """Pack every needed run, or only those under runs/<under> (`save il/pusht/image-cpu`)."""
    CARRY.mkdir(parents=True, exist_ok=True)
    wanted = set()
    top = ROOT / "runs" / under if under else ROOT / "runs"
    runs = {f.parent for f in top.glob("**/checkpoint.pt")}
    runs |= {f.parent.parent for f in top.glob(f"**/{CKPT_DIR}/commit.json")}
    for run in sorted(runs):
        if run.name.startswith("seed") and campaign(run) and needed(run):
            wanted.add(tar_name(run))
            for _ in range(60):  # a checkpoint takes seconds to write
                if not mid_checkpoint(run):
                    break
                time.sleep(1)
            else:
                print(f"kept the last tarball of {run.relative_to(ROOT)}: it is still writing a checkpoint")
                continue
            done = tar_name(run)
            if done.is_file() and finished(run):
                # a finished base kept for its dependents: its checkpoint is final, and each dependent
                # that opens it rewrites its config, CSVs and an empty TensorBoard file, which would
                # otherwise repack (and commit again) ~72 MB of Diffusion weights at every save
                continue
            packed_at = done.stat().st_mtime if done.is_file() else float("-inf")
            if all(f.stat().st_mtime < packed_at for f in packed_files(run)):
                continue  # nothing changed since it was packed (a periodic save rewrites only what did)
            tmp = done.with_suffix(".tmp")
            try:
                with tarfile.open(tmp, "w") as tar:
                    for f in packed_files(run):
                        tar.add(f, arcname=str(f.relative_to(run)))
            except FileNotFoundError:  # a checkpoint swapped in while packing: the next save packs it
                tmp.unlink(missing_ok=True)
                print(f"kept the last tarball of {run.relative_to(ROOT)}: its checkpoint changed while "
                      "packing")
                continue
            tmp.replace(done)
            print(f"saved {run.relative_to(ROOT)} ({done.stat().st_size / 1e6:.1f} MB)")
    for old in CARRY.glob("*.tar"):
        if old not in wanted and not campaign(run_of(old)):
            old.unlink()
            print(f"dropped {old.name}: its run is not one of a campaign's (RL_DEST, runs/il)")
        elif old not in wanted and not needed(run_of(old)):  # a run missing from runs/ keeps its tarball
            old.unlink()
            print(f"dropped {old.name}: its run is finished")


@exclusive
def restore() -> None:
    for tar_path in sorted(CARRY.glob("*.tar")):
        run = run_of(tar_path)
        if not needed(run):
            # finished (and collected) after this tarball was packed, on a machine that went away
            # before its `save`: unpacking would resume the run from its older checkpoint and train it again
            tar_path.unlink()
            print(f"dropped {tar_path.name}: its run is finished")
            continue
        if has_checkpoint(run) or (run / CKPT_DIR).exists():
            print(f"kept {run.relative_to(ROOT)}: it already has a checkpoint")
            continue
        run.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tar_path) as tar:
            tar.extractall(run, filter="data")
        print(f"restored {run.relative_to(ROOT)}")


def keep(every: float) -> None:
    """`save` every `every` seconds, for as long as the lanes run (tools/continue.sh starts it): a
    machine taken back before its final save then still leaves recent tarballs in results/carry/. Both
    lanes start one; the second waits on a lock and takes over when the first lane ends."""
    with lock_file("keep.lock") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        while True:
            time.sleep(every)
            save()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=("save", "restore", "finished", "base-ready", "skip", "keep", "dest"))
    p.add_argument("run", nargs="?", help="with finished, base-ready, skip or dest: a run directory under "
                   "runs/; with save: only the runs under runs/<run>")
    p.add_argument("--forced", action="store_true", help="with skip: the run is a dependent's base")
    p.add_argument("--every", type=float, default=1800.0, help="with keep: seconds between saves")
    a = p.parse_args()
    if a.action == "keep":
        keep(a.every)
    elif a.action in ("finished", "base-ready", "skip", "dest"):
        if not a.run:
            p.error(f"{a.action} needs a run directory, e.g. runs/cpu/cartpole-swingup/tdmpc/seed1")
        if a.action == "dest":  # the one mapping of runs/ to results/ that tools/collect.sh uses
            print(collected(ROOT / a.run).relative_to(ROOT))
        elif a.action == "skip":  # the one decision the IL run scripts take before training a run
            why = skip_reason(ROOT / a.run, a.forced)
            if why:
                print(f"skip: {a.run} is {why}")
            raise SystemExit(0 if why else 1)
        elif a.action == "base-ready":
            raise SystemExit(0 if base_ready(ROOT / a.run) else 1)
        else:  # the one definition of "finished" that the run scripts use
            raise SystemExit(0 if finished(ROOT / a.run) else 1)
    elif a.action == "save":
        save(a.run)
    else:
        restore()
