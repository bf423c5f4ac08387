"""End-to-end smoke runs of `difftop rl` / `difftop eval` with tiny networks, resume, and input errors."""

import csv
import os

import pytest
import torch
from omegaconf import OmegaConf

from difftop.cli import main
from difftop.utils.checkpoint import load_checkpoint

os.environ.setdefault("MUJOCO_GL", "egl")

# cartpole: action repeat 8, so 200-step episodes are 25 agent steps
TINY = ["mlp_dim=32", "enc_dim=16", "latent_dim=8", "num_channels=4", "num_samples=16", "num_elites=4",
        "iterations=2", "batch_size=16", "pg_batch_size=4", "seed_steps=25", "horizon=3",
        "episode_length=200", "eval_episodes=1", "threads=1", "progress=false", "trajopt.max_iters=5",
        "render_size=32"]


def _run(out, *extra):
    given = {e.split("=")[0] for e in extra}  # an extra key replaces TINY's
    tiny = [t for t in TINY if t.split("=")[0] not in given]
    return main(["rl", "task=cartpole-swingup", f"out_dir={out}", *tiny, *extra])


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# (tests/golden runs tdmpc, difftop online/batched and noback on states and tdmpc, difftop on pixels;
# test_lockstep_evaluation_equals_one_episode_at_a_time checks several eval episodes in lockstep)
@pytest.mark.parametrize("agent,obs,extra", [
    ("difftop", "state", ["pg_mode=batched", "init=zero", "reward_coef=0", "consistency_coef=0"]),
    ("tdmpc", "pixels", ["image_size=64", "eval_episodes=2"]),  # two renderers in lockstep
    ("difftop", "pixels", ["image_size=64", "pg_mode=batched", "qs_horizon=null"]),  # all H (auto: 1)
])
def test_every_agent_and_obs_trains_evaluates_and_saves(tmp_path, agent, obs, extra):
    out = tmp_path / "run"
    video = "video=true" if obs == "state" and agent == "difftop" else "video=false"
    assert _run(out, f"agent={agent}", f"obs={obs}", "steps=400", "eval_every=200", video, *extra) == 0
    for name in ("config.yaml", "train.csv", "eval.csv", "checkpoint/model.safetensors",
                 "checkpoint/model.json", "checkpoint/state.pt", "checkpoint/buffer.npz"):
        assert (out / name).exists(), name
    assert not (out / "checkpoint.pt").exists() and not (out / "buffer.npz").exists()
    # qs_horizon=auto is saved resolved: all H (null) for states, 1 for pixels; an explicit value stays
    qs = OmegaConf.load(out / "config.yaml").qs_horizon
    assert qs == (None if obs == "state" or "qs_horizon=null" in extra else 1)
    assert any((out / "tb").iterdir())
    evals = _rows(out / "eval.csv")
    assert [int(r["env_step"]) for r in evals] == [0, 200, 400]
    n_eval = next((int(e.split("=")[1]) for e in extra if e.startswith("eval_episodes=")), 1)
    assert {int(r["episodes"]) for r in evals} == {n_eval}
    train = _rows(out / "train.csv")
    assert len(train) == 2 and "value_loss" in train[-1] and train[-1]["value_loss"] != ""
    if agent == "difftop":
        mode = "online" if "pg_mode=online" in extra else "batched"
        assert float(train[-1]["pg_loss"]) == float(train[-1]["pg_loss"])  # logged, not NaN
        assert float(train[-1]["solve_iters"]) >= 0, mode
    if video == "video=true":
        assert len(list((out / "videos").iterdir())) == 3


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    args = ["agent=difftop", "pg_mode=online", "eval_every=200", "video=false"]
    assert _run(tmp_path / "full", "steps=600", *args) == 0
    assert _run(tmp_path / "cut", "steps=400", *args) == 0
    (tmp_path / "cut").rename(tmp_path / "moved")  # a moved run goes on where it now is
    assert _run(tmp_path / "moved", "steps=600", "resume=true", *args) == 0
    assert not (tmp_path / "cut").exists()
    a = load_checkpoint(tmp_path / "full", "rl")
    b = load_checkpoint(tmp_path / "moved", "rl")
    assert a["agent_step"] == b["agent_step"] == 75
    for mod in a["agent"]["modules"]:
        for k, v in a["agent"]["modules"][mod].items():
            assert torch.equal(v, b["agent"]["modules"][mod][k]), (mod, k)
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("_s") and k not in  # noqa: E731
                           ("wall_time", "env_steps_per_s")} for r in rows]
    assert strip(_rows(tmp_path / "full" / "eval.csv")) == strip(_rows(tmp_path / "moved" / "eval.csv"))
    assert strip(_rows(tmp_path / "full" / "train.csv")) == strip(_rows(tmp_path / "moved" / "train.csv"))
    # resuming the finished run again (other reporting keys) leaves every file as it was
    files = {p: p.read_bytes() for p in (tmp_path / "moved").rglob("*") if p.is_file()}
    assert _run(tmp_path / "moved", "steps=600", "resume=true", "checkpoint_every=100", *args) == 0
    assert {p: p.read_bytes() for p in (tmp_path / "moved").rglob("*") if p.is_file()} == files


def test_eval_command_and_its_errors(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(out, "agent=tdmpc", "steps=200", "eval_every=200", "video=false") == 0
    capsys.readouterr()
    assert main(["eval", f"checkpoint={out / 'checkpoint.pt'}", "episodes=2", "video=true", "threads=1"]) == 0
    text = capsys.readouterr().out
    assert "return" in text and "+-" in text and "over 2 episodes" in text
    assert (out / "eval" / "eval.json").exists() and list((out / "eval").glob("*.mp4"))
    assert main(["eval", f"checkpoint={out / 'checkpoint.pt'}", "episodes=0"]) == 2
    assert "episodes must be an integer >= 1 (or null), got 0" in capsys.readouterr().err
    assert main(["eval", f"checkpoint={tmp_path / 'nope.pt'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["eval", f"checkpoint={bad}"]) == 2
    assert "unreadable" in capsys.readouterr().err


def test_bad_input_is_one_clear_line(tmp_path, capsys):
    assert _run(tmp_path / "a", "task=cartpole-flyaway", "steps=100") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "cartpole-swingup" in err and len(err.splitlines()) == 1
    assert _run(tmp_path / "a", "agent=sac") == 2
    assert "tdmpc, difftop, difftop_noback" in capsys.readouterr().err
    assert _run(tmp_path / "a", "qs_horizon=0") == 2
    assert "qs_horizon must be auto, null or an integer >= 1, got 0" in capsys.readouterr().err
    assert _run(tmp_path / "a", "buffer_device=tpu") == 2
    assert "buffer_device must be auto, cpu, cuda or cuda:N, got 'tpu'" in capsys.readouterr().err
    assert _run(tmp_path / "a", "trajopt.implicit_unconverged=foo") == 2
    assert "trajopt.implicit_unconverged must be one of memory, exact, got 'foo'" in capsys.readouterr().err
    assert _run(tmp_path / "a", "checkpoint_every=-5") == 2
    assert "checkpoint_every must be an integer >= 1 (or null), got -5" in capsys.readouterr().err
    assert _run(tmp_path / "a", "checkpoint_minutes=-1") == 2
    assert "checkpoint_minutes must be a number >= 0, got -1" in capsys.readouterr().err
    assert _run(tmp_path / "a", "explore_std=fast") == 2
    assert "explore_std must be a number or linear(init, final, steps), got 'fast'" in \
        capsys.readouterr().err
    assert _run(tmp_path / "a", "lr=abc") == 2
    assert "lr must be a number > 0 (or null), got 'abc'" in capsys.readouterr().err
    assert _run(tmp_path / "a", "trajopt.tol=abc") == 2
    assert "trajopt.tol must be a number, got 'abc'" in capsys.readouterr().err
    assert _run(tmp_path / "a", "agent=difftop", "trajopt.solver=foo") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: trajopt.solver must be one of lbfgs, pgd, newton, lm, theseus, lm_refine, "
                          "got 'foo'")
    assert len(err.splitlines()) == 1
    out = tmp_path / "b"
    assert _run(out, "agent=tdmpc", "steps=200", "eval_every=200", "video=false") == 0
    assert _run(out, "agent=tdmpc", "steps=200", "eval_every=200") == 2  # would overwrite a run
    assert "resume=true" in capsys.readouterr().err
    assert _run(out, "agent=difftop", "steps=400", "resume=true") == 2  # a different run
    assert "agent='difftop' differs from the run's 'tdmpc'" in capsys.readouterr().err


def test_resume_in_the_middle_of_an_update_burst(tmp_path, monkeypatch):
    """Killed during the first learning burst (checkpointed inside it): the resumed run finishes the
    burst and ends exactly where an uninterrupted run does."""
    from difftop.rl.tdmpc import TDMPCAgent

    args = ["agent=tdmpc", "eval_every=400", "video=false", "seed_steps=50", "steps=600"]
    assert _run(tmp_path / "full", *args) == 0
    real, calls = TDMPCAgent.update, {"n": 0}

    def dying_update(self, buffer, step):
        calls["n"] += 1
        if calls["n"] == 30:  # inside the 50-update burst
            raise KeyboardInterrupt
        return real(self, buffer, step)

    monkeypatch.setattr(TDMPCAgent, "update", dying_update)
    assert _run(tmp_path / "cut", *args, "checkpoint_minutes=0") == 130
    state = load_checkpoint(tmp_path / "cut", "rl")
    assert state["pending"]["done"] == 29 and state["pending"]["total"] == 50
    monkeypatch.setattr(TDMPCAgent, "update", real)
    assert _run(tmp_path / "cut", *args, "resume=true") == 0
    a = load_checkpoint(tmp_path / "full", "rl")
    b = load_checkpoint(tmp_path / "cut", "rl")
    for k, v in a["agent"]["modules"]["model"].items():
        assert torch.equal(v, b["agent"]["modules"]["model"][k]), k
    assert _rows(tmp_path / "full" / "eval.csv")[-1]["episode_reward"] == \
        _rows(tmp_path / "cut" / "eval.csv")[-1]["episode_reward"]


def test_lockstep_evaluation_equals_one_episode_at_a_time(tiny_cfg):
    from difftop.rl.trainer import build, evaluate

    cfg = tiny_cfg(agent="difftop_noback", task="cartpole-swingup", episode_length=80, action_repeat=8,
                   device="cpu")
    torch.manual_seed(0)  # the agent's weights, whatever tests ran before (pairs of returns must differ)
    _, envs, agent = build(cfg, eval_episodes=3)
    assert len(envs) == 3
    together, _ = evaluate(agent, envs, 5, step=10**6, seed_base=7)  # groups of 3 and 2
    alone, _ = evaluate(agent, envs[0], 5, step=10**6, seed_base=7)
    # returns ~1e-3..1e-2 that differ by >= 1e-3 between episodes; batched float arithmetic ~1e-8
    assert len(together) == 5 and together == pytest.approx(alone, rel=1e-4, abs=1e-6)
    assert min(abs(x - y) for i, x in enumerate(alone) for y in alone[:i]) > 1e-4  # episodes differ (7e-3)
