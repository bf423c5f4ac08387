"""``difftop il``, ``difftop eval`` on IL checkpoints and ``difftop il-landscape``, end to end on a tiny
synthetic zarr (written with difftop.data's writer) and the real Push-T environment, in-process."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from difftop.cli import main
from difftop.data import EpisodeData, save_zarr
from difftop.utils.checkpoint import load_checkpoint

FAST = [
    "steps=4",
    "batch_size=8",
    "log_every=2",
    "val_every=2",
    "val_batches=1",
    "eval_every=0",
    "eval_episodes=1",
    "max_steps=4",
    "eval_batch=1",
    "threads=1",
    "progress=false",
    "tensorboard=false",
]
SMALL = {
    "difftop": [
        f"policies.difftop.{k}"
        for k in (
            "mlp_hidden=16",
            "enc_hidden=16",
            "fuse_hidden=16",
            "latent_dim=8",
            "posterior_dim=4",
            "max_iters=20",
        )
    ],
    "bc": ["policies.bc.hidden=[16,16]"],
}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """6 episodes of 12 steps: Push-T-like states and actions (agent target near the agent)."""
    rng = np.random.default_rng(0)
    eps = []
    for _ in range(6):
        s = rng.uniform(50, 460, (12, 5)).astype(np.float32)
        s[:, 4] = rng.uniform(0, 2 * np.pi, 12)
        eps.append({"state": s, "action": (s[:, :2] + rng.normal(0, 10, (12, 2))).astype(np.float32)})
    path = tmp_path_factory.mktemp("il") / "tiny.zarr"
    save_zarr(EpisodeData.from_episodes(eps), path)
    return path


def _il(data, out, policy, *extra):
    return main(
        ["il", f"policy={policy}", f"data={data}", f"out_dir={out}", *FAST, *SMALL.get(policy, []), *extra]
    )


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def bc_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("bc")
    assert _il(data, out, "bc", "video=true") == 0
    return out


def test_bc_run_writes_logs_checkpoint_and_a_rollout(bc_run):
    rows = _rows(bc_run / "train.csv")
    assert [int(r["step"]) for r in rows] == [2, 4] and all(np.isfinite(float(r["loss"])) for r in rows)
    assert [int(r["step"]) for r in _rows(bc_run / "val.csv")] == [2, 4]
    ev = _rows(bc_run / "eval.csv")
    assert len(ev) == 1 and 0.0 <= float(ev[0]["mean_max_coverage"]) <= 1.0 and ev[0]["episodes"] == "1"
    assert list((bc_run / "videos").glob("eval_00000004.*"))
    state = load_checkpoint(bc_run / "checkpoint.pt", kind="il")
    assert state["step"] == 4 and state["spec"]["name"] == "bc"
    assert "normalizer.fields.action.scale" in state["policy"]  # the fitted normaliser travels with it


def test_difftop_on_a_base_checkpoint_trains_and_evaluates(data, bc_run, tmp_path, capsys):
    out = tmp_path / "dt"
    assert _il(data, out, "difftop", f"base={bc_run}", "init=base", "video=false") == 0
    state = load_checkpoint(out / "checkpoint.pt", kind="il")
    spec = state["spec"]
    assert spec["name"] == "difftop" and spec["params"]["init"] == "base" and spec["base"]["name"] == "bc"
    assert spec["shape_meta"]["obs_horizon"] == 2 and spec["shape_meta"]["horizon"] == 2  # To=2, H=1
    bc = load_checkpoint(bc_run / "checkpoint.pt")
    for k, v in bc["policy"].items():  # the frozen base is inside, unchanged by training
        assert torch.equal(state["policy"][f"base.{k}"], v)
    rows = _rows(out / "train.csv")
    assert {"mse", "kl", "solve_iters", "solve_failed"} <= set(rows[0])
    capsys.readouterr()
    assert main(["eval", f"checkpoint={out}", "episodes=2", "video=true", "threads=1"]) == 0
    text = capsys.readouterr().out
    assert "success rate" in text and "mean max coverage" in text
    res = json.loads((out / "eval" / "eval.json").read_text())
    assert res["episodes"] == 2 and res["seeds"] == [12345, 12346] and res["policy"] == "difftop"
    assert len(res["max_coverage"]) == 2 and res["videos"]
    # seeded: the same numbers again
    assert main(["eval", f"checkpoint={out}", "episodes=2", "video=false", "threads=1"]) == 0
    again = json.loads((out / "eval" / "eval.json").read_text())
    assert again["max_coverage"] == res["max_coverage"]
    # the landscape (paper Fig. 5) of this checkpoint
    png = tmp_path / "land.png"
    args = [f"checkpoint={out}", f"out={png}", "grid=9", "path_iters=5", "threads=1"]
    assert main(["il-landscape", *args]) == 0
    numbers = json.loads(png.with_suffix(".json").read_text())
    assert png.stat().st_size > 0 and len(numbers["paths"]) == 2
    assert np.allclose(numbers["paths"][0][0], numbers["init"], atol=1e-3)  # paths start at the init
    assert np.allclose(numbers["paths"][0][-1], numbers["final"][0], atol=1e-3)


def test_difftop_without_the_cvae_trains_resumes_and_draws_one_landscape(data, bc_run, tmp_path, capsys):
    out = tmp_path / "nocvae"
    args = [f"base={bc_run}", "init=base", "policies.difftop.posterior_dim=0", "eval_episodes=0"]
    assert _il(data, out, "difftop", *args) == 0
    state = load_checkpoint(out / "checkpoint.pt", kind="il")
    assert not any(k.startswith("h_l.") for k in state["policy"])
    assert all(float(r["kl"]) == 0 for r in _rows(out / "train.csv"))
    assert _il(data, out, "difftop", *args, "steps=6", "resume=true") == 0  # its checkpoint rebuilds
    capsys.readouterr()
    png = tmp_path / "land.png"
    assert main(["il-landscape", f"checkpoint={out}", f"out={png}", "grid=5", "path_iters=2"]) == 0
    assert "no CVAE latent" in capsys.readouterr().out
    assert len(json.loads(png.with_suffix(".json").read_text())["paths"]) == 1


def test_resume_continues_the_run_exactly(data, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    extra = ["steps=6", "checkpoint_every=3", "eval_episodes=0", "init=random"]
    assert _il(data, full, "difftop", *extra) == 0
    assert _il(data, part, "difftop", *extra[1:], "steps=3") == 0
    assert load_checkpoint(part / "checkpoint.pt")["step"] == 3
    assert _il(data, part, "difftop", *extra[1:], "steps=6") == 2  # an existing run needs resume=true
    part = part.rename(tmp_path / "moved")  # a moved run goes on where it now is
    assert _il(data, part, "difftop", *extra, "resume=true") == 0
    assert not (tmp_path / "part").exists()
    a, b = load_checkpoint(full / "checkpoint.pt"), load_checkpoint(part / "checkpoint.pt")
    assert b["step"] == 6
    for k in a["policy"]:
        assert torch.equal(a["policy"][k], b["policy"][k]), k
    # the shorter first run logged its end (step 3) too; the rows of steps 5-6 are the same numbers
    assert [r["step"] for r in _rows(part / "train.csv")] == ["2", "3", "4", "6"]
    assert _rows(part / "train.csv")[-1]["loss"] == _rows(full / "train.csv")[-1]["loss"]


def test_resuming_a_finished_run_rewrites_nothing(data, tmp_path, capsys):
    """A job script re-run over finished runs (maybe with other reporting keys) must leave them as they
    trained: config.yaml, checkpoint and logs byte for byte."""
    out = tmp_path / "run"
    assert _il(data, out, "bc", "checkpoint_every=2") == 0
    files = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert {"config.yaml", "checkpoint/model.safetensors", "train.csv", "eval.csv"} <= set(files)
    capsys.readouterr()
    assert _il(data, out, "bc", "checkpoint_every=3", "eval_episodes=2", "resume=true") == 0
    assert "is finished (4 of steps=4 done); nothing to do" in capsys.readouterr().out
    assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()} == files
    assert _il(data, out, "bc", "steps=6", "resume=true") == 0  # a larger steps= trains on
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 6
    assert "steps: 6" in (out / "config.yaml").read_text()


def test_an_evaluation_cut_off_is_run_on_resume_without_training_again(data, tmp_path, monkeypatch):
    """The checkpoint saved before an evaluation keeps the training before it: resume evaluates first."""
    import difftop.il.train as train

    full, part = tmp_path / "full", tmp_path / "part"
    extra = ["eval_every=2", "checkpoint_every=100"]
    assert _il(data, full, "bc", *extra) == 0
    real, calls = train._evaluate, []

    def cut_off_at_step_4(policy, cfg, step, out):
        calls.append(step)
        if step == 4:
            raise KeyboardInterrupt  # the session ends during the last evaluation
        return real(policy, cfg, step, out)

    monkeypatch.setattr(train, "_evaluate", cut_off_at_step_4)
    assert _il(data, part, "bc", *extra) == 130
    ck = load_checkpoint(part / "checkpoint.pt")
    assert ck["step"] == 4 and ck["eval_pending"] and calls == [2, 4]
    assert [r["step"] for r in _rows(part / "eval.csv")] == ["2"]
    monkeypatch.setattr(train, "_evaluate", real)
    assert _il(data, part, "bc", *extra, "resume=true") == 0
    ck, ref = load_checkpoint(part / "checkpoint.pt"), load_checkpoint(full / "checkpoint.pt")
    assert ck["step"] == 4 and not ck["eval_pending"] and ck["last_eval"] == ref["last_eval"]
    for k in ref["policy"]:
        assert torch.equal(ck["policy"][k], ref["policy"][k]), k
    assert [r["step"] for r in _rows(part / "eval.csv")] == ["2", "4"]
    cov = [_rows(run / "eval.csv")[1]["mean_max_coverage"] for run in (part, full)]
    assert cov[0] == cov[1]
    assert [r["step"] for r in _rows(part / "train.csv")] == ["2", "4"]  # no step trained twice


def test_an_evaluation_logged_but_not_checkpointed_is_not_logged_twice(data, tmp_path, monkeypatch):
    """Cut off between an evaluation's CSV row and the checkpoint after it: resume evaluates again
    (the checkpoint still owes it) and eval.csv keeps one row for that step."""
    extra = ["eval_every=2", "checkpoint_every=100"]
    # checkpoints: the start, before the eval at 2, after it, before the eval at 4, after it (the 5th)
    monkeypatch.setenv("DIFFTOP_CRASH_AT", "checkpoint.written:5:int")
    assert _il(data, tmp_path, "bc", *extra) == 130
    monkeypatch.delenv("DIFFTOP_CRASH_AT")
    assert load_checkpoint(tmp_path)["eval_pending"]
    assert [r["step"] for r in _rows(tmp_path / "eval.csv")] == ["2", "4"]
    assert _il(data, tmp_path, "bc", *extra, "resume=true") == 0
    assert not load_checkpoint(tmp_path)["eval_pending"]
    assert [r["step"] for r in _rows(tmp_path / "eval.csv")] == ["2", "4"]
    assert [r["step"] for r in _rows(tmp_path / "train.csv")] == ["2", "4"]


def test_bad_input_is_one_line_with_exit_code_2(data, bc_run, tmp_path, capsys):
    capsys.readouterr()
    assert _il(tmp_path / "missing.zarr", tmp_path / "a", "bc") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing.zarr" in err and "no such dataset" in err
    bad = tmp_path / "bad.zarr"
    bad.mkdir()
    (bad / "garbage").write_text("x")
    assert _il(bad, tmp_path / "b", "bc") == 2
    assert "bad.zarr" in capsys.readouterr().err
    import shutil

    corrupt = tmp_path / "corrupt"
    shutil.copytree(bc_run / "checkpoint", corrupt)
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])  # truncated
    assert main(["eval", f"checkpoint={corrupt}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unreadable" in err
    assert _il(data, tmp_path / "c", "difftop", f"base={corrupt}") == 2  # never trains on random base weights
    assert "unreadable" in capsys.readouterr().err
    assert _il(data, tmp_path / "d", "difftop", f"base={tmp_path / 'nope.pt'}") == 2
    assert "does not exist" in capsys.readouterr().err
    assert _il(data, tmp_path / "e", "nosuch") == 2
    assert "choose one of" in capsys.readouterr().err
    assert _il(data, tmp_path / "f", "difftop", "init=base") == 2
    assert "base=" in capsys.readouterr().err
    assert main(["il-landscape", f"checkpoint={bc_run}", f"out={tmp_path / 'x.png'}"]) == 2
    assert "needs difftop" in capsys.readouterr().err
    assert _il(data, tmp_path / "g", "bc", "lr=abc") == 2  # lr: null in il.yaml (the policy's own)
    assert capsys.readouterr().err.strip() == "error: lr must be a number > 0, got 'abc'"
    assert _il(data, tmp_path / "g", "bc", "lr=0") == 2
    assert "lr must be a number > 0, got 0" in capsys.readouterr().err
    assert _il(data, tmp_path / "g", "bc", "checkpoint_every=0") == 2
    assert "checkpoint_every must be an integer >= 1 (or null), got 0" in capsys.readouterr().err


def test_cpu_preset_shrinks_every_policy_and_overrides_win(capsys):
    """il_preset=cpu: batch 64 for every policy, smaller BC-RNN / IBC; a user's override still wins."""
    import yaml

    assert main(["il", "il_preset=cpu", "--cfg", "job"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["batch_size"] == 64
    assert cfg["policies"]["bc_rnn"]["rnn_hidden"] == 256 and cfg["policies"]["ibc"]["n_negatives"] == 64
    assert cfg["policies"]["diffusion"]["down_dims"] == [64, 128, 256]  # architectures unchanged
    assert main(["il", "il_preset=cpu", "batch_size=32", "--cfg", "job"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["batch_size"] == 32
    assert main(["il", "--cfg", "job"]) == 0  # paper: the policy's own batch (null here)
    assert yaml.safe_load(capsys.readouterr().out)["batch_size"] is None


@pytest.mark.parametrize("policy", ["difftop", "residual"])
def test_base_cache_equals_querying_the_base_and_resumes_exactly(data, bc_run, tmp_path, policy):
    """base_cache=true (default) trains as querying the deterministic BC base every batch does, and a
    resumed cached run rebuilds the same cache (the base's weights come from the checkpoint)."""
    extra = [f"base={bc_run}", *(["init=base"] if policy == "difftop" else []), "checkpoint_every=3",
             "eval_episodes=0"]
    cached, fresh, part = tmp_path / "cached", tmp_path / "fresh", tmp_path / "part"
    assert _il(data, cached, policy, *extra, "steps=6") == 0
    assert _il(data, fresh, policy, *extra, "steps=6", "base_cache=false") == 0
    assert _il(data, part, policy, *extra, "steps=3") == 0
    assert _il(data, part, policy, *extra, "steps=6", "resume=true") == 0
    a, b, c = (load_checkpoint(d / "checkpoint.pt")["policy"] for d in (cached, fresh, part))
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
        assert torch.equal(a[k], c[k]), k


def test_base_action_cache_is_seeded_and_leaves_the_run_rng_alone():
    """A stochastic base's cached draws repeat for the same seed; the global torch RNG is untouched."""
    from difftop.data import SequenceDataset
    from difftop.il.train import base_action_cache

    class RandomBase:
        def frozen_base_actions(self, obs):
            return torch.randn(obs["state"].shape[0], 1, 2)

    eps = [{"state": np.zeros((7, 5), np.float32), "action": np.zeros((7, 2), np.float32)} for _ in range(3)]
    ds = SequenceDataset(EpisodeData.from_episodes(eps), ["state"], "action", horizon=2, obs_horizon=2)
    before = torch.get_rng_state()
    a = base_action_cache(RandomBase(), ds, "cpu", seed=3, chunk=4)
    assert torch.equal(torch.get_rng_state(), before)
    assert a.shape == (len(ds), 1, 2)
    assert torch.equal(a, base_action_cache(RandomBase(), ds, "cpu", seed=3, chunk=4))
    assert not torch.equal(a, base_action_cache(RandomBase(), ds, "cpu", seed=4, chunk=4))


def test_weights_with_zero_steps_evaluates_a_trained_ibc_with_a_base_attached(data, bc_run, tmp_path, capsys):
    """IBC + base without a second IBC training: weights=<ibc run> base=<run> steps=0."""
    small = ["policies.ibc.hidden=[16,16]", "policies.ibc.n_negatives=8", "policies.ibc.dfo_samples=16"]
    ibc, plus = tmp_path / "ibc", tmp_path / "ibc_bc"
    assert _il(data, ibc, "ibc", *small) == 0
    assert _il(data, plus, "ibc", *small, f"weights={ibc}", f"base={bc_run}", "steps=0") == 0
    ev = _rows(plus / "eval.csv")
    assert [r["step"] for r in ev] == ["0"] and 0.0 <= float(ev[0]["mean_max_coverage"]) <= 1.0
    src, dst = load_checkpoint(ibc / "checkpoint.pt"), load_checkpoint(plus / "checkpoint.pt")
    assert dst["step"] == 0 and dst["spec"]["base"]["name"] == "bc"
    for k, v in src["policy"].items():
        assert torch.equal(dst["policy"][k], v), k
    assert any(k.startswith("init_policy.") for k in dst["policy"])
    capsys.readouterr()
    assert _il(data, tmp_path / "x", "ibc", *small, f"weights={bc_run}", "steps=0") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bc policy" in err and "trains ibc" in err
    assert _il(data, tmp_path / "y", "ibc", "policies.ibc.hidden=[8]", f"weights={ibc}", "steps=0") == 2
    assert "does not fit" in capsys.readouterr().err


def test_chunk_warning_when_a_chunked_base_would_be_resampled_every_step(capsys):
    from types import SimpleNamespace

    from difftop.il.policies.base import ShapeMeta
    from difftop.il.train import chunk_warning

    diffusion = SimpleNamespace(shape_meta=ShapeMeta(obs={"state": (5,)}, action_dim=2, obs_horizon=2,
                                                     horizon=16, n_action_steps=8))
    msg = chunk_warning(diffusion, 1, "difftop")
    assert "chunks of 8" in msg and "policies.difftop.n_action_steps=8" in msg and "plan_horizon=8" in msg
    assert msg in capsys.readouterr().out
    assert chunk_warning(diffusion, 8, "residual") is None
    assert chunk_warning(None, 1, "bc") is None
    bc = SimpleNamespace(shape_meta=ShapeMeta(obs={"state": (5,)}, action_dim=2))
    assert chunk_warning(bc, 1, "residual") is None
