"""RunLogger on resume: a CSV never holds a step twice."""
import csv

from difftop.utils.runlog import RunLogger


def _steps(path):
    with open(path, newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def _log(out, steps, **kw):
    log = RunLogger(out, tensorboard=False, step_key="step", **kw)
    for s in steps:
        log.log("train", {"step": s, "loss": 1.0 / s})
        log.log("eval", {"step": s, "score": float(s)})
    log.close()


def test_resume_drops_rows_past_the_checkpoint_and_redo_drops_the_row_at_it(tmp_path):
    _log(tmp_path, [1, 2, 3, 4])
    _log(tmp_path, [], resume_step=2)  # checkpoint at 2: rows 3-4 are logged again by the resumed run
    assert _steps(tmp_path / "train.csv") == [1, 2] and _steps(tmp_path / "eval.csv") == [1, 2]
    _log(tmp_path, [], resume_step=2, redo=("eval",))  # the evaluation at 2 runs again
    assert _steps(tmp_path / "train.csv") == [1, 2] and _steps(tmp_path / "eval.csv") == [1]
    _log(tmp_path, [3])
    assert _steps(tmp_path / "eval.csv") == [1, 3]
    _log(tmp_path, [5])  # no resume_step: a fresh logger appends, drops nothing
    assert _steps(tmp_path / "train.csv") == [1, 2, 3, 5]
