"""Sweeps: one run folder per job under one sweep folder, submitit launchers, pre-emption, plots.

The main case runs ``difftop rl -m seed=3,4 hydra/launcher=submitit_local`` (two tiny TD-MPC jobs,
each a process of its own through submitit, as on a cluster) and pre-empts job ``seed=3`` halfway
with the signal SLURM sends (USR2): the engine checkpoints after its current unit, submitit requeues
the job, the job resumes, and its CSVs, actions and weights must equal an uninterrupted run's. Then
``difftop plot <sweep>`` draws the sweep. The SLURM launcher is checked up to the sbatch script it
writes (a stand-in ``sbatch`` captures it); no real cluster is used.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from difftop import cli
from difftop.launch import sweep_args
from difftop.utils.checkpoint import load_checkpoint
from tests.golden.cases import RL_TINY, compare, snapshot

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the `cluster` extra")

#: the crash-safety tests' tiny TD-MPC run (600 env steps: three episodes), without its seed
RL = [a for a in RL_TINY if not a.startswith(("steps=", "seed_steps=", "seed="))] + [
    "agent=tdmpc", "obs=state", "steps=600", "seed_steps=25"]


def _env() -> dict:
    return {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}


# -- job folders -----------------------------------------------------------------------------------
def _override(args: list[str], key: str) -> str | None:
    return next((a.split("=", 1)[1] for a in args if a.startswith(key + "=")), None)


def test_job_folders_are_named_by_the_swept_keys_only():
    args = sweep_args(["-m", "seed=1,2", "task=a,b", "steps=10", "+x=1"])
    assert args[0] == "-m"
    assert _override(args, "hydra.job.config.override_dirname.exclude_keys") == "['steps','x','resume']"
    assert _override(args, "hydra.sweep.subdir") is None
    # nothing swept: the job number
    args = sweep_args(["--multirun", "seed=1"])
    assert _override(args, "hydra.sweep.subdir") == "${hydra.job.num}"
    # single runs, or a naming given on the command line, are left alone
    assert sweep_args(["seed=1,2"]) == ["seed=1,2"]
    given = ["-m", "seed=1,2", "hydra.sweep.subdir=${hydra.job.num}"]
    assert sweep_args(given) == given


FAKE_CONFIG = """\
defaults:
  - _hydra
  - _self_
x: 1
y: 0
out_dir: runs/x${x}
resume: false
"""


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """`difftop fake` writing its config to a log; run from a clean directory."""
    conf = tmp_path / "configs"
    conf.mkdir()
    (conf / "_hydra.yaml").write_text((Path(cli.__file__).parent / "configs" / "_hydra.yaml").read_text())
    (conf / "fake.yaml").write_text(FAKE_CONFIG)
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "difftop_fake_sweep.py").write_text(textwrap.dedent("""
        import json, os
        from omegaconf import OmegaConf
        def main(cfg):
            with open(os.environ["FAKE_LOG"], "a") as f:
                f.write(json.dumps(OmegaConf.to_container(cfg, resolve=True)) + "\\n")
    """))
    monkeypatch.syspath_prepend(str(mods))
    monkeypatch.setattr(cli, "CONFIG_DIR", conf)
    monkeypatch.setattr(cli, "COMMANDS", {**cli.COMMANDS, ("fake",): ("fake", "difftop_fake_sweep:main")})
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_LOG", str(log))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work, lambda: [json.loads(line) for line in log.read_text().splitlines()]


def test_each_job_runs_in_its_own_folder_of_the_sweep_and_resumes(fake):
    work, calls = fake
    sweep = work / "sweep"
    assert cli.main(["fake", "-m", "x=1,2", "y=5", f"hydra.sweep.dir={sweep}"]) == 0
    assert [(c["x"], c["out_dir"], c["resume"]) for c in calls()] == [
        (1, str(sweep / "x=1"), True), (2, str(sweep / "x=2"), True)]
    assert sorted(p.name for p in sweep.iterdir()) == ["multirun.yaml", "x=1", "x=2"]
    # out_dir= and resume= given on the command line are kept; a single run is as before
    assert cli.main(["fake", "-m", "x=3", "out_dir=mine/${x}", "resume=false",
                     f"hydra.sweep.dir={work / 'other'}"]) == 0
    assert cli.main(["fake", "x=4"]) == 0
    assert [(c["out_dir"], c["resume"]) for c in calls()[2:]] == [("mine/3", False), ("runs/x4", False)]


# -- launcher configs ------------------------------------------------------------------------------
def test_slurm_launcher_takes_its_resources_from_config(capsys):
    assert cli.main(["rl", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                     "hydra.launcher.mem_gb=64", "--cfg", "hydra"]) == 0
    import yaml

    launcher = yaml.safe_load(capsys.readouterr().out)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert (launcher["partition"], launcher["mem_gb"]) == ("gpu", 64)
    assert (launcher["gpus_per_node"], launcher["cpus_per_task"], launcher["timeout_min"]) == (1, 8, 1440)
    assert launcher["max_num_timeout"] == 20 and launcher["signal_delay_s"] == 120


def test_slurm_sweep_writes_an_sbatch_script_with_those_resources(tmp_path):
    """No cluster here: stand-ins for ``srun`` (found: SLURM is there) and ``sbatch`` (keeps the script it
    is given and fails, so nothing waits for jobs)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = f'cp "$1" {tmp_path}/job.sh; echo no cluster >&2; exit 1'
    for name, body in (("srun", "exit 0"), ("sbatch", sbatch)):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(stat.S_IRWXU)
    env = {**_env(), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "difftop.cli", "rl", "-m", "seed=1,2", "task=a,b",
                           "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                           "hydra.launcher.timeout_min=600", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "no cluster" in proc.stdout + proc.stderr
    script = (tmp_path / "job.sh").read_text()
    for line in ("--partition=gpu", "--gpus-per-node=1", "--cpus-per-task=8", "--mem=32GB", "--time=600",
                 "--signal=USR2@120", "--array=0-3%4", "--open-mode=append"):
        assert f"#SBATCH {line}\n" in script, line
    assert f"{tmp_path / 'sweep'}/.submitit/%A_%a/" in script


def test_a_job_that_fails_in_its_own_process_fails_the_sweep_with_its_error_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "difftop.cli", "rl", "-m", "seed=1,2", "threads=-1",
                           "hydra/launcher=submitit_local", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                          env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Error executing job with overrides: ['seed=1', 'threads=-1']" in proc.stderr
    assert "error: threads must be an integer >= 0, got -1" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- a local submitit sweep, pre-empted ------------------------------------------------------------
def _rows(path: Path) -> int:
    try:
        return max(len(path.read_text().splitlines()) - 1, 0)
    except OSError:
        return 0


def _task_pid(sweep: Path, run: Path) -> int:
    """The process of the submitit job whose run is ``run`` (its log names the run folder)."""
    job = next(log.name.split("_")[0] for log in sweep.glob(".submitit/*_0_log.out")
               if str(run) in log.read_text(errors="replace"))
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd, env = (proc / "cmdline").read_bytes(), (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in cmd and f"SUBMITIT_LOCAL_JOB_ID={job}".encode() in env:
            return int(proc.name)
    raise AssertionError(f"no process for submitit job {job}")


@pytest.fixture(scope="module")
def preempted_sweep(tmp_path_factory):
    """The sweep (job seed=3 pre-empted after its first episode), its output, and an uninterrupted run."""
    tmp = tmp_path_factory.mktemp("sweep")
    sweep, work = tmp / "sweep", tmp / "work"
    work.mkdir()
    run = sweep / "seed=3"
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "difftop.cli", "rl", "-m", "seed=3,4", *RL,
                             "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}"],
                            env=_env(), cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while _rows(run / "train.csv") < 1 and proc.poll() is None and time.time() - t0 < 240:
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()[0]
        os.kill(_task_pid(sweep, run), signal.SIGUSR2)
        ref = tmp / "ref"
        assert cli.main(["rl", *RL, "seed=3", f"out_dir={ref}"]) == 0  # meanwhile, the uninterrupted run
        text, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"sweep of 2 jobs with one pre-emption: {time.time() - t0:.1f} s")
    assert proc.returncode == 0, text
    return sweep, work, ref


def test_a_sweep_leaves_one_run_folder_per_job_under_the_sweep_folder(preempted_sweep):
    sweep, work, _ = preempted_sweep
    assert sorted(p.name for p in sweep.iterdir()) == [".submitit", "multirun.yaml", "seed=3", "seed=4"]
    for seed in (3, 4):
        run = sweep / f"seed={seed}"
        assert {"config.yaml", "train.csv", "eval.csv", "checkpoint"} <= {p.name for p in run.iterdir()}
        cfg = (run / "config.yaml").read_text()
        assert f"out_dir: {run}\n" in cfg and f"seed: {seed}\n" in cfg
        assert _rows(run / "eval.csv") == 4  # env steps 0, 200, 400, 600
    assert list(work.iterdir()) == []  # nothing written where the sweep was started


def test_a_preempted_job_is_requeued_and_resumes_to_the_uninterrupted_run(preempted_sweep):
    sweep, _, ref = preempted_sweep
    log = next(p for p in sweep.glob(".submitit/*_0_log.out") if str(sweep / "seed=3") in p.read_text())
    text = log.read_text()
    assert "stopped (SIGUSR2): checkpoint saved" in text  # after the unit it was in
    assert "this job is preempted" in text and "Requeued job" in text
    assert text.count("done: tdmpc") == 1
    diffs = compare(snapshot(sweep / "seed=3", "rl"), snapshot(ref, "rl"), rtol=0, atol=0)
    assert not diffs, "\n".join(diffs[:10])
    got, want = (load_checkpoint(d, "rl")["agent"]["modules"] for d in (sweep / "seed=3", ref))
    assert got.keys() == want.keys()
    assert all(torch.equal(got[m][k], want[m][k]) for m in want for k in want[m])


def test_plot_of_a_sweep_folder_draws_the_sweep_into_it(preempted_sweep, capsys):
    sweep, _, _ = preempted_sweep
    assert cli.main(["plot", str(sweep)]) == 0
    assert (sweep / "curves.png").stat().st_size > 0
    summary = pd.read_csv(sweep / "curves.csv")
    groups = summary[["task", "agent", "obs", "n_seeds"]].values.tolist()
    assert groups == [["cartpole-swingup", "tdmpc", "state", 2]]


# -- plots of sweeps over a setting ----------------------------------------------------------------
def test_a_swept_setting_tells_methods_apart_in_the_plot(tmp_path):
    """Runs of a sweep over lr (two seeds each) are two curves, named by their lr, not one of four."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    task:\n    - seed=1,2\n    - lr=0.001,0.0003\n    - agent=tdmpc\n")
    for lr in (0.001, 0.0003):
        for seed in (1, 2):
            run = sweep / f"lr={lr},seed={seed}"
            run.mkdir()
            (run / "config.yaml").write_text(
                f"task: cartpole-swingup\nagent: tdmpc\nobs: state\nseed: {seed}\nlr: {lr}\nlabel: null\n")
            (run / "eval.csv").write_text("env_step,episode,wall_time,episode_reward\n"
                                          f"0,0,1.0,{seed}\n100,1,2.0,{1000 * lr + seed}\n")
    assert cli.main(["plot", str(sweep), "x=steps"]) == 0
    summary = pd.read_csv(sweep / "curves.csv")
    assert sorted(summary["agent"]) == ["tdmpc lr=0.0003", "tdmpc lr=0.001"]
    assert summary["n_seeds"].tolist() == [2, 2]
    out = tmp_path / "elsewhere.png"
    assert cli.main(["plot", str(sweep), f"out={out}"]) == 0 and out.exists()
