"""RunLogger on resume: CSVs are cut back to a checkpoint's row counts, so no row is logged twice."""
import csv

from difftop.utils.runlog import RunLogger


def _steps(path):
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def _log(out, steps, **kw):
    log = RunLogger(out, tensorboard=False, step_key="step", **kw)
    for s in steps:
        log.log("train", {"step": s, "loss": 1.0 / s})
        log.log("eval", {"step": s, "score": float(s)})
    counts = log.counts()
    log.close()
    return counts


def test_resume_cuts_each_csv_back_to_the_checkpoints_row_count(tmp_path):
    counts = _log(tmp_path, [1, 2])  # a checkpoint here records these counts
    assert counts == {"train": 2, "eval": 2}
    _log(tmp_path, [3, 4])  # logged after the checkpoint, then the run was killed
    _log(tmp_path, [], rows={"train": 2, "eval": 1})  # e.g. an evaluation at 2 the checkpoint came before
    assert _steps(tmp_path / "train.csv") == [1, 2] and _steps(tmp_path / "eval.csv") == [1]
    _log(tmp_path, [3])
    assert _steps(tmp_path / "eval.csv") == [1, 3]
    _log(tmp_path, [5])  # rows=None: a logger appends and drops nothing
    assert _steps(tmp_path / "train.csv") == [1, 2, 3, 5]


def test_a_fresh_start_drops_the_rows_of_a_run_that_never_checkpointed(tmp_path):
    _log(tmp_path, [1, 2])
    _log(tmp_path, [], rows={})
    assert not (tmp_path / "train.csv").exists() and not (tmp_path / "eval.csv").exists()


def test_a_checkpoint_without_row_counts_cuts_by_step(tmp_path):
    """Checkpoints of the earlier format have no row counts: rows past their step are dropped."""
    _log(tmp_path, [1, 2, 3, 4])
    _log(tmp_path, [], resume_step=2)
    assert _steps(tmp_path / "train.csv") == [1, 2] and _steps(tmp_path / "eval.csv") == [1, 2]


def test_tensorboard_gets_the_kept_rows_at_the_checkpoints_step_again(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _log(tmp_path, [1, 2, 3])
    log = RunLogger(tmp_path, tensorboard=True, step_key="step", rows={"train": 2, "eval": 2}, resume_step=2)
    log.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [2]
