"""`difftop il` trains on a robomimic-layout hdf5 file (as robomimic writes it, not difftop), with the
observation keys chosen by config: low-dim keys concatenated, image keys as images, the file's own
train/valid masks as the split."""

from __future__ import annotations

import csv

from difftop.cli import main
from difftop.utils.checkpoint import load_checkpoint
from tests.data.test_robomimic_layout import write_robomimic

FAST = ["policy=bc", "steps=4", "batch_size=4", "log_every=2", "val_every=2", "val_batches=1",
        "eval_episodes=0", "threads=1", "progress=false", "tensorboard=false", "video=false",
        "policies.bc.hidden=[8]"]


def test_low_dim_and_image_keys_train_with_the_files_split(tmp_path, capsys):
    path = tmp_path / "lift.hdf5"
    write_robomimic(path)
    out = tmp_path / "low"
    assert main(["il", f"data={path}", f"out_dir={out}", "obs_keys=[robot0_eef_pos,object]", *FAST]) == 0
    text = capsys.readouterr().out
    assert "split: the file's mask/train (3 episodes) and mask/valid (1)" in text
    spec = load_checkpoint(out, "il")["spec"]
    assert spec["shape_meta"]["obs"] == {"state": [13]} and spec["shape_meta"]["action_dim"] == 7
    with open(out / "val.csv", newline="") as f:
        assert [r["step"] for r in csv.DictReader(f)] == ["2", "4"]
    out = tmp_path / "img"
    keys = "obs_keys=[robot0_eef_pos,agentview_image]"
    assert main(["il", f"data={path}", f"out_dir={out}", keys, *FAST,
                 "++policies.bc.encoder={image_channels:[4,8],num_kp:4,image_dim:8}"]) == 0
    spec = load_checkpoint(out, "il")["spec"]
    obs = spec["shape_meta"]["obs"]
    assert obs["state"] == [3] and obs["agentview_image"] == [3, 16, 16]


def test_rollouts_of_another_tasks_observations_are_refused(tmp_path, capsys):
    path = tmp_path / "lift.hdf5"
    write_robomimic(path)
    args = [a for a in FAST if a != "eval_episodes=0"]
    keys = "obs_keys=[object,agentview_image]"
    assert main(["il", f"data={path}", f"out_dir={tmp_path / 'x'}", keys, *args, "eval_episodes=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: obs_keys give the observation keys") and "eval_episodes=0" in err
    assert len(err.splitlines()) == 1
