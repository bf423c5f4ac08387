"""tools/carry.py: the resume state of unfinished runs survives a machine without runs/, and each run's
record goes to the results/ folder of its question."""
import importlib.util
import os
import shutil
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "tools" / "carry.py"


@pytest.fixture
def carry(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("carry", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "ROOT", tmp_path)
    monkeypatch.setattr(mod, "CARRY", tmp_path / "results" / "carry")
    return mod

# where tools/collect.sh puts the record of runs/<task-level folder>/<agent or policy>/seedN
COLLECTED = {
    "cpu/finger-spin": "results/rl/states/runs/finger-spin",
    "cpu/cartpole-swingup": "results/rl/states/runs/cartpole-swingup",
    "cpu/reacher-easy": "results/rl/states/runs/reacher-easy",
    "il/pusht/state-cpu": "results/il/pusht-states/runs/pusht/state-cpu",
}


def make_run(root: Path, rel: str, last: int, collected: bool = False, final20: bool = False) -> Path:
    """A run folder under runs/ with a checkpoint and an eval.csv ending at step `last`."""
    run = root / "runs" / rel
    (run / "tb").mkdir(parents=True)
    (run / "buffer.npz").write_bytes(b"buffer")             # as the trainer: buffer, then checkpoint
    (run / "checkpoint.pt").write_bytes(b"weights" + rel.encode())
    (run / "eval.csv").write_text(f"step,return\n{last // 2},1.0\n{last},2.0\n")
    (run / "tb" / "events.out").write_text("tb")
    (run / "videos").mkdir()
    (run / "videos" / "eval.mp4").write_bytes(b"video")
    if collected:
        task_dir, agent, seed = rel.rsplit("/", 2)
        res = root / COLLECTED[task_dir] / agent / seed
        res.mkdir(parents=True)
        shutil.copy(run / "eval.csv", res / "eval.csv")
        if final20:
            (res / "final20").mkdir()
            (res / "final20" / "eval.json").write_text("{}")
    return run


def test_save_keeps_what_must_resume_and_restore_brings_it_back(carry, tmp_path):
    make_run(tmp_path, "cpu/finger-spin/difftop/seed1", 60_000)                       # unfinished
    make_run(tmp_path, "cpu/cartpole-swingup/tdmpc/seed2", 100_000, collected=True, final20=True)
    make_run(tmp_path, "cpu/reacher-easy/tdmpc/seed2", 100_000, collected=True)         # no final20 yet
    il = "il/pusht/state-cpu"
    make_run(tmp_path, f"{il}/diffusion/seed1", 20_000, collected=True)    # a base still needed
    make_run(tmp_path, f"{il}/bc/seed1", 20_000, collected=True)           # its dependents are done
    for dep in ("difftop_bc", "residual_bc", "difftop_nocvae_bc"):
        make_run(tmp_path, f"{il}/{dep}/seed1", 20_000, collected=True)
    stale = carry.CARRY / "cpu__cartpole-swingup__tdmpc__seed2.tar"
    carry.CARRY.mkdir(parents=True)
    stale.write_bytes(b"old")

    carry.save()
    saved = sorted(p.name for p in carry.CARRY.glob("*.tar"))
    assert saved == ["cpu__finger-spin__difftop__seed1.tar", "cpu__reacher-easy__tdmpc__seed2.tar",
                     "il__pusht__state-cpu__diffusion__seed1.tar"]

    shutil.rmtree(tmp_path / "runs")                                        # a fresh machine
    keep = make_run(tmp_path, "cpu/reacher-easy/tdmpc/seed2", 100_000)      # already resumed here
    (keep / "checkpoint.pt").write_bytes(b"newer")
    carry.restore()
    run = tmp_path / "runs" / "cpu/finger-spin/difftop/seed1"
    assert (run / "checkpoint.pt").read_bytes() == b"weightscpu/finger-spin/difftop/seed1"
    assert (run / "buffer.npz").is_file() and (run / "tb" / "events.out").is_file()
    assert not (run / "videos").exists()
    assert (tmp_path / "runs" / il / "diffusion/seed1/checkpoint.pt").is_file()
    assert (keep / "checkpoint.pt").read_bytes() == b"newer"

    shutil.rmtree(tmp_path / "runs" / "cpu/finger-spin")   # a run missing from runs/ keeps its tarball
    carry.save()
    assert (carry.CARRY / "cpu__finger-spin__difftop__seed1.tar").is_file()


def test_restore_drops_a_tarball_whose_run_finished_after_it_was_packed(carry, tmp_path):
    """A machine that finished a run but went away before `save` leaves its old tarball behind: a fresh
    machine must not resume the run from that older checkpoint and train it a second time."""
    il = "il/pusht/state-cpu"
    make_run(tmp_path, "cpu/reacher-easy/difftop/seed2", 60_000)
    make_run(tmp_path, f"{il}/difftop_nocvae_diffusion/seed1", 10_000)
    make_run(tmp_path, f"{il}/diffusion/seed1", 20_000, collected=True)    # needed by ibc_diffusion
    carry.save()
    assert len(list(carry.CARRY.glob("*.tar"))) == 3
    shutil.rmtree(tmp_path / "runs")
    # later the two runs finished and were collected, but the machine went away before `save`
    for rel, last in (("cpu/reacher-easy/difftop/seed2", 100_000),
                      (f"{il}/difftop_nocvae_diffusion/seed1", 20_000)):
        make_run(tmp_path, rel, last, collected=True, final20=True)
    shutil.rmtree(tmp_path / "runs")

    carry.restore()
    assert sorted(p.name for p in carry.CARRY.glob("*.tar")) == ["il__pusht__state-cpu__diffusion__seed1.tar"]
    assert not (tmp_path / "runs" / "cpu").exists()
    assert not (tmp_path / "runs" / il / "difftop_nocvae_diffusion").exists()
    assert (tmp_path / "runs" / il / "diffusion/seed1/checkpoint.pt").is_file()


def test_save_repacks_only_what_changed_and_waits_for_a_checkpoint_being_written(carry, tmp_path,
                                                                                monkeypatch):
    """`keep` saves every 30 min while runs train: an unchanged run is not packed again, and a run
    caught between writing its buffer and its checkpoint is packed once the checkpoint is written."""
    import os
    run = make_run(tmp_path, "cpu/finger-spin/difftop/seed1", 60_000)
    tar = carry.CARRY / "cpu__finger-spin__difftop__seed1.tar"
    old = 1_000_000.0
    for f in run.rglob("*"):
        os.utime(f, (old, old))
    carry.save()
    packed = tar.stat().st_mtime
    os.utime(tar, (packed - 10, packed - 10))  # so that a rewrite would show
    carry.save()
    assert tar.stat().st_mtime == packed - 10

    (run / "buffer.npz").write_bytes(b"next buffer")   # the trainer is between buffer and checkpoint
    sleeps = []

    def sleep(s):  # the checkpoint lands during the wait
        sleeps.append(s)
        (run / "checkpoint.pt").write_bytes(b"next weights")
    monkeypatch.setattr(carry.time, "sleep", sleep)
    carry.save()
    assert sleeps == [1]
    shutil.rmtree(tmp_path / "runs")
    carry.restore()
    assert (run / "checkpoint.pt").read_bytes() == b"next weights"
    assert (run / "buffer.npz").read_bytes() == b"next buffer"


def test_a_finished_base_is_packed_once(carry, tmp_path):
    """A dependent that opens a finished base rewrites its config and CSVs: its ~72 MB tarball must
    not be repacked (and committed again) for that, as the weights in it are final."""
    il = "il/pusht/state-cpu"
    base = make_run(tmp_path, f"{il}/diffusion/seed2", 20_000, collected=True)
    make_run(tmp_path, f"{il}/difftop_diffusion/seed2", 10_000)
    carry.save()
    tar = carry.CARRY / "il__pusht__state-cpu__diffusion__seed2.tar"
    before = tar.read_bytes()
    (base / "config.yaml").write_text("opened again")
    (base / "tb" / "events.2").write_text("")
    carry.save()
    assert tar.read_bytes() == before
    tar.unlink()  # without a tarball, it is packed
    carry.save()
    assert tar.is_file()


def test_keep_saves_periodically(carry, tmp_path, monkeypatch):
    make_run(tmp_path, "cpu/finger-spin/difftop/seed1", 60_000)
    calls = []

    def sleep(s):
        calls.append(s)
        if len(calls) > 1:
            raise KeyboardInterrupt
    monkeypatch.setattr(carry.time, "sleep", sleep)
    with pytest.raises(KeyboardInterrupt):
        carry.keep(1800)
    assert calls == [1800, 1800]
    assert (carry.CARRY / "cpu__finger-spin__difftop__seed1.tar").is_file()


def test_a_second_keeper_waits_and_takes_over_when_the_first_ends(carry, tmp_path, monkeypatch):
    """Each lane of tools/continue.sh starts a keeper: one saves, the other waits for its lock."""
    import fcntl
    import threading
    (tmp_path / "runs" / "locks").mkdir(parents=True)
    sleeps = []

    class Stop(Exception):
        pass

    def sleep(s):
        sleeps.append(s)
        raise Stop
    monkeypatch.setattr(carry.time, "sleep", sleep)

    def second():
        with pytest.raises(Stop):
            carry.keep(1800)
    with open(tmp_path / "runs" / "locks" / "keep.lock", "w") as first:
        fcntl.flock(first, fcntl.LOCK_EX | fcntl.LOCK_NB)          # the other lane's keeper
        t = threading.Thread(target=second)
        t.start()
        t.join(0.3)
        assert t.is_alive() and sleeps == []                      # waiting, not saving
    t.join(5)                                                     # the first keeper is gone
    assert not t.is_alive() and sleeps == [1800]


def test_save_waits_for_a_save_or_restore_in_progress(carry, tmp_path):
    """The keeper's periodic save may meet a final manual save or a lane's restore: one at a time."""
    import fcntl
    import threading
    make_run(tmp_path, "cpu/finger-spin/difftop/seed1", 60_000)
    with carry.lock_file("carry.lock") as other:                  # another save or restore
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        t = threading.Thread(target=carry.save)
        t.start()
        t.join(0.3)
        assert t.is_alive() and not carry.CARRY.exists()
    t.join(5)
    assert not t.is_alive() and (carry.CARRY / "cpu__finger-spin__difftop__seed1.tar").is_file()


@pytest.mark.parametrize("run, dest", [
    ("runs/cpu/cartpole-swingup/tdmpc/seed1", "results/rl/states/runs/cartpole-swingup/tdmpc/seed1"),
    ("runs/cpu-pg/cartpole-swingup/difftop_batched/seed1",
     "results/rl/pg-mode/runs/cartpole-swingup/difftop_batched/seed1"),
    ("runs/cpu-qs1/reacher-easy/difftop/seed2", "results/rl/qs-horizon/runs/reacher-easy/difftop/seed2"),
    ("runs/cpu-memory/reacher-easy/difftop/seed1",
     "results/rl/pg-gradient/runs-memory/reacher-easy/difftop/seed1"),
    ("runs/cpu-new/finger-spin/difftop/seed1", "results/rl/unsorted/cpu-new/finger-spin/difftop/seed1"),
    ("runs/il/pusht/state-cpu/bc/seed0", "results/il/pusht-states/runs/pusht/state-cpu/bc/seed0"),
    ("runs/il/pusht/state/difftop_bc/seed2", "results/il/pusht-states/runs/pusht/state/difftop_bc/seed2"),
    ("runs/il/pusht/state-cpu-ta1/residual_diffusion/seed0",
     "results/il/chunking/runs/pusht/state-cpu-ta1/residual_diffusion/seed0"),
    ("runs/il/pusht/beta0.01/difftop_bc/seed0", "results/il/refinement/runs/pusht/beta0.01/difftop_bc/seed0"),
    ("runs/il/pusht/state-cpu-mechanism/difftop_bc_rnn-official/seed1",
     "results/il/mechanism/runs/pusht/state-cpu-mechanism/difftop_bc_rnn-official/seed1"),
])
def test_a_run_is_collected_into_the_folder_of_its_question(carry, tmp_path, run, dest):
    assert carry.collected(tmp_path / run) == tmp_path / dest


def test_the_committed_records_are_where_collect_puts_them():
    """Every committed run record sits where `tools/carry.py dest` sends its run: finished runs are then
    never retrained on a fresh machine."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("carry_real", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    root = SCRIPT.parent.parent
    for q in mod.RL_DEST.values():
        assert (root / "results" / q).is_dir(), q
    for q in set(mod.IL_DEST.values()):
        assert (root / "results" / q / "runs").is_dir(), q
    run = root / "runs" / "cpu" / "finger-spin" / "difftop_noback" / "seed3"
    assert mod.finished(run)
    assert mod.finished(root / "runs" / "il" / "pusht" / "state-cpu" / "ibc_diffusion" / "seed2")


def make_dir_run(root: Path, rel: str, last: int) -> Path:
    """A run whose checkpoint is a directory (model.json, model.safetensors, state.pt, buffer.npz and the
    commit.json that lists them), as the run engine commits it."""
    import json
    run = root / "runs" / rel
    ckpt = run / "checkpoint"
    ckpt.mkdir(parents=True)
    files = {"model.json": b"{}", "model.safetensors": b"weights" + rel.encode(), "state.pt": b"state",
             "buffer.npz": b"buffer"}
    for name, data in files.items():
        (ckpt / name).write_bytes(data)
    (ckpt / "commit.json").write_text(json.dumps({"files": sorted(files)}))
    (run / "eval.csv").write_text(f"step,return\n{last // 2},1.0\n{last},2.0\n")
    (run / "config.yaml").write_text("agent: difftop\n")
    (run / "videos").mkdir()
    (run / "videos" / "eval.mp4").write_bytes(b"video")
    return run


def test_a_checkpoint_directory_is_carried_whole(carry, tmp_path):
    run = make_dir_run(tmp_path, "cpu/finger-spin/difftop/seed1", 60_000)
    carry.save()
    tar = carry.CARRY / "cpu__finger-spin__difftop__seed1.tar"
    assert tar.is_file()
    shutil.rmtree(tmp_path / "runs")                                        # a fresh machine
    carry.restore()
    assert (run / "checkpoint" / "model.safetensors").read_bytes() == b"weightscpu/finger-spin/difftop/seed1"
    assert (run / "checkpoint" / "buffer.npz").is_file() and (run / "config.yaml").is_file()
    assert not (run / "videos").exists()
    (run / "checkpoint" / "state.pt").write_bytes(b"newer")                 # resumed here meanwhile
    carry.restore()
    assert (run / "checkpoint" / "state.pt").read_bytes() == b"newer"


def test_a_checkpoint_directory_mid_swap_is_packed_once_the_swap_is_done(carry, tmp_path, monkeypatch):
    run = make_dir_run(tmp_path, "cpu/finger-spin/difftop/seed1", 60_000)
    new = run / ".checkpoint.new"
    new.mkdir()                                                             # the engine is writing the next
    sleeps = []

    def sleep(s):  # the swap lands during the wait
        sleeps.append(s)
        shutil.rmtree(new)
        (run / "checkpoint" / "state.pt").write_bytes(b"next state")
    monkeypatch.setattr(carry.time, "sleep", sleep)
    carry.save()
    assert sleeps == [1]
    shutil.rmtree(tmp_path / "runs")
    carry.restore()
    assert (run / "checkpoint" / "state.pt").read_bytes() == b"next state"


def test_a_finished_base_with_its_checkpoint_is_ready_to_use(carry, tmp_path):
    """The run scripts skip such a base instead of resuming it (resume=true repeats its final evaluation)."""
    il = "il/pusht/state-cpu"
    done = make_run(tmp_path, f"{il}/bc/seed0", 20_000, collected=True)
    running = make_run(tmp_path, f"{il}/bc/seed1", 10_000)
    assert carry.base_ready(done) and not carry.base_ready(running)
    (done / "buffer.npz").touch()  # newer than the checkpoint: a checkpoint being written
    os.utime(done / "checkpoint.pt", (1, 1))
    assert not carry.base_ready(done)
    (done / "checkpoint.pt").unlink()  # collected, but its weights are not here: it must be retrained
    assert not carry.base_ready(done)


def test_the_run_scripts_one_skip_decision(carry, tmp_path):
    """`carry.py skip`: a finished run with no checkpoint here is skipped unless a dependent forces it
    (it needs the weights); a finished base with its whole checkpoint is skipped either way; an
    unfinished run, or one mid-checkpoint, is trained."""
    il = "il/pusht/state-cpu"
    done = make_run(tmp_path, f"{il}/bc/seed0", 20_000, collected=True)
    running = make_run(tmp_path, f"{il}/bc/seed1", 10_000)
    assert carry.skip_reason(running) is None and carry.skip_reason(running, forced=True) is None
    ready = "finished, its checkpoint is here"
    assert carry.skip_reason(done) == carry.skip_reason(done, forced=True) == ready
    (done / "buffer.npz").touch()  # a checkpoint being written: resume it rather than use it half-written
    os.utime(done / "checkpoint.pt", (1, 1))
    assert carry.skip_reason(done) is None
    (done / "checkpoint.pt").unlink()  # a fresh machine: collected, no weights
    dest = "results/il/pusht-states/runs/pusht/state-cpu/bc/seed0"
    assert carry.skip_reason(done) == f"finished (collected in {dest})"
    assert carry.skip_reason(done, forced=True) is None  # a base whose dependent needs the weights
