"""Tests of the `difftop` command line (difftop/cli.py): dispatch, Hydra features, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from difftop import cli

REPO = Path(__file__).resolve().parents[1]
SHARED_HYDRA = Path(cli.__file__).resolve().parent / "configs" / "_hydra.yaml"

FAKE_MODULE = textwrap.dedent(
    """
    import json, os
    from omegaconf import OmegaConf
    from difftop.errors import UserError

    def main(cfg):
        if cfg.fail == "user":
            raise UserError(f"x must be positive, got {cfg.x}")
        if cfg.fail == "bug":
            raise RuntimeError("a bug")
        with open(os.environ["FAKE_LOG"], "a") as f:
            rec = {"cfg": OmegaConf.to_container(cfg, resolve=True), "cwd": os.getcwd()}
            f.write(json.dumps(rec) + "\\n")
        return int(cfg.rc)
    """
)

FAKE_CONFIG = textwrap.dedent(
    """
    defaults:
      - _hydra
      - _self_

    x: 1
    name: hello
    fail: "no"
    rc: 0
    nested:
      lr: 0.1
    """
)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Register `difftop fake run` backed by a config dir and module in tmp_path; chdir to a clean dir."""
    conf = tmp_path / "configs"
    conf.mkdir()
    (conf / "_hydra.yaml").write_text(SHARED_HYDRA.read_text())
    (conf / "fake_run.yaml").write_text(FAKE_CONFIG)
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "difftop_fake_cmd.py").write_text(FAKE_MODULE)
    monkeypatch.syspath_prepend(str(mods))
    monkeypatch.setattr(cli, "CONFIG_DIR", conf)
    commands = {**cli.COMMANDS, ("fake", "run"): ("fake_run", "difftop_fake_cmd:main")}
    monkeypatch.setattr(cli, "COMMANDS", commands)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return work, calls


def test_help_lists_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "bench trajopt" in out
    assert "usage: difftop" in out


def test_no_args_lists_commands_and_fails(capsys):
    assert cli.main([]) == 2
    assert "bench trajopt" in capsys.readouterr().out


def test_unknown_command_exits_2_with_one_line(capsys):
    assert cli.main(["nosuch", "x=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "unknown command 'nosuch'" in err and "bench trajopt" in err


def test_partial_command_lists_subcommands(capsys):
    assert cli.main(["bench"]) == 2
    assert "bench trajopt" in capsys.readouterr().err


def test_registered_commands_are_well_formed():
    for cmd, (config_name, target) in cli.COMMANDS.items():
        assert cmd and all(w and not w.startswith("-") and "=" not in w for w in cmd)
        assert ":" in target and not config_name.endswith(".yaml")
        path = cli.CONFIG_DIR / f"{config_name}.yaml"
        if path.exists():  # each command config must pull in the shared Hydra settings
            assert "_hydra" in path.read_text(), f"{path} lacks `- _hydra` in its defaults"


def test_overrides_reach_function(fake):
    work, calls = fake
    assert cli.main(["fake", "run", "x=5", "name=abc", "nested.lr=0.5"]) == 0
    (call,) = calls()
    assert call["cfg"] == {"x": 5, "name": "abc", "fail": "no", "rc": 0, "nested": {"lr": 0.5}}
    assert call["cwd"] == str(work)  # no chdir
    assert list(work.iterdir()) == []  # no outputs/, .hydra/ or log file


def test_return_code_is_exit_code(fake):
    _, calls = fake
    assert cli.main(["fake", "run", "rc=3"]) == 3


def test_cfg_job_prints_config_without_running(fake, capsys):
    work, calls = fake
    assert cli.main(["fake", "run", "--cfg", "job", "x=7"]) == 0
    out = capsys.readouterr().out
    assert "x: 7" in out and "hydra" not in out
    assert calls() == []
    assert list(work.iterdir()) == []


def test_command_help_shows_config(fake, capsys):
    _, calls = fake
    assert cli.main(["fake", "run", "--help"]) == 0
    out = capsys.readouterr().out
    assert "name: hello" in out
    assert calls() == []


def test_multirun_calls_function_per_value(fake):
    work, calls = fake
    assert cli.main(["fake", "run", "-m", "x=1,2"]) == 0
    assert sorted(c["cfg"]["x"] for c in calls()) == [1, 2]
    assert all(c["cwd"] == str(work) for c in calls())
    assert [p.name for p in work.iterdir()] == ["multirun"]
    assert not (work / "outputs").exists()


def test_multirun_long_flag_and_nonzero_code(fake):
    _, calls = fake
    assert cli.main(["fake", "run", "--multirun", "rc=0,4", "x=1,2"]) == 4
    assert len(calls()) == 4


def test_unknown_key_is_a_hydra_error_not_traceback(fake, capsys):
    work, calls = fake
    rc = cli.main(["fake", "run", "nosuchkey=1"])
    err = capsys.readouterr().err
    assert rc != 0
    assert "nosuchkey" in err and "Traceback" not in err
    assert calls() == []
    assert list(work.iterdir()) == []


def test_user_error_exits_2_with_error_line(fake, capsys):
    work, _ = fake
    assert cli.main(["fake", "run", "fail=user", "x=-1"]) == 2
    err = capsys.readouterr().err
    assert "error: x must be positive, got -1" in err.splitlines()
    assert "Traceback" not in err
    assert list(work.iterdir()) == []


def test_user_error_traceback_with_hydra_full_error(fake, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(cli.UserError):
        cli.main(["fake", "run", "fail=user"])


def test_bug_exits_nonzero(fake, capsys):
    assert cli.main(["fake", "run", "fail=bug"]) == 1
    assert "a bug" in capsys.readouterr().err


def test_argv_restored(fake):
    saved = list(sys.argv)
    cli.main(["fake", "run"])
    assert sys.argv == saved


def test_user_error_is_value_error():
    assert issubclass(cli.UserError, ValueError)


def _venv_difftop() -> Path | None:
    exe = REPO / ".venv" / "bin" / "difftop"
    return exe if exe.exists() else None


@pytest.mark.skipif(_venv_difftop() is None, reason=".venv/bin/difftop not installed (pip install -e .)")
def test_console_script_help_is_fast_and_lazy(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run(
        [str(_venv_difftop()), "--help"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "bench trajopt" in proc.stdout
    proc = subprocess.run(
        [str(_venv_difftop()), "nosuch"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    # `difftop --help` must not import torch or hydra
    code = (
        "import sys; from difftop import cli; cli.main(['--help']);"
        " print(sorted({'torch', 'hydra'} & set(sys.modules)))"
    )
    python = REPO / ".venv" / "bin" / "python"
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout + proc.stderr


# -- positional words (POSITIONAL) -------------------------------------------------------------

ODD_WORDS = [
    "runs/a",
    "with space, and comma",
    "it's",
    'dq"uote',
    "back\\slash",
    "trailing\\",
    "a${b}c",
    "\\${y}",
    "[x]",
    "é:ü",
    "''",
]


@pytest.fixture
def fake_pos(fake, monkeypatch):
    """`difftop fake pos <words>`: a command whose positional words go to the list key `paths`."""
    work, calls = fake
    (cli.CONFIG_DIR / "fake_pos.yaml").write_text(FAKE_CONFIG + "paths: []\n")
    monkeypatch.setitem(cli.COMMANDS, ("fake", "pos"), ("fake_pos", "difftop_fake_cmd:main"))
    monkeypatch.setattr(cli, "POSITIONAL", {**cli.POSITIONAL, ("fake", "pos"): "paths"})
    return work, calls


def test_positional_words_become_list_override(fake_pos):
    _, calls = fake_pos
    assert cli.main(["fake", "pos", "runs/a", "runs/b", "x=3"]) == 0
    (call,) = calls()
    assert call["cfg"]["paths"] == ["runs/a", "runs/b"] and call["cfg"]["x"] == 3


def test_positional_words_survive_odd_characters(fake_pos):
    _, calls = fake_pos
    assert cli.main(["fake", "pos", *ODD_WORDS]) == 0
    assert calls()[0]["cfg"]["paths"] == ODD_WORDS


def test_positional_override_is_hydra_parsable():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    override = cli.positional_override("runs", ["a b", "c,d", "it's"])
    assert OverridesParser.create().parse_override(override).value() == ["a b", "c,d", "it's"]


def test_no_positional_words_keeps_default(fake_pos):
    _, calls = fake_pos
    assert cli.main(["fake", "pos", "x=2"]) == 0
    assert calls()[0]["cfg"]["paths"] == []


def test_positional_words_with_multirun(fake_pos):
    _, calls = fake_pos
    assert cli.main(["fake", "pos", "a", "b", "-m", "x=1,2"]) == 0
    assert sorted(c["cfg"]["x"] for c in calls()) == [1, 2]
    assert all(c["cfg"]["paths"] == ["a", "b"] for c in calls())


def test_stray_word_without_positional_is_an_error(fake, capsys):
    _, calls = fake
    assert cli.main(["fake", "run", "stray"]) != 0
    assert calls() == []


def test_plot_command_takes_run_paths(capsys):
    assert ("plot",) in cli.COMMANDS and cli.POSITIONAL[("plot",)] == "runs"
    assert cli.main(["plot", "runs/a b", "runs/c", "--cfg", "job"]) == 0
    out = capsys.readouterr().out
    assert "- runs/a b\n- runs/c" in out


def test_positional_words_before_flags_only(fake_pos):
    _, calls = fake_pos
    assert cli.main(["fake", "pos", "a", "--multirun", "x=1,2", "rc=0"]) == 0
    assert cli.main(["fake", "pos", "b", "x=5", "-m"]) == 0
    assert [c["cfg"]["paths"] for c in calls()] == [["a"], ["a"], ["b"]]


def test_a_number_setting_given_text_is_one_line(fake, capsys):
    _, calls = fake
    assert cli.main(["fake", "run", "nested.lr=abc"]) == 2
    assert capsys.readouterr().err.strip() == "error: nested.lr must be a number, got 'abc'"
    assert cli.main(["fake", "run", "x=oops"]) == 2
    assert "x must be a number, got 'oops'" in capsys.readouterr().err
    assert calls() == []  # the command never ran
    assert cli.main(["fake", "run", "nested.lr=2", "x=3.5", "name=7"]) == 0  # numbers, and text -> a number
    assert calls()[0]["cfg"]["nested"]["lr"] == 2 and calls()[0]["cfg"]["name"] == 7


# -- shell completion (Hydra's -sc through the dispatcher) -------------------------------------


def _complete(line: str, monkeypatch, capsys, shell: str = "bash", point: int | None = None) -> list[str]:
    """What ``difftop -sc query=<shell>`` answers for the typed ``line``, as Hydra's installed script asks."""
    monkeypatch.setenv("COMP_LINE", line)
    monkeypatch.setenv("COMP_POINT", str(len(line) if point is None else point))
    capsys.readouterr()
    assert cli.main(["-sc", f"query={shell}"]) == 0
    out = capsys.readouterr().out
    return out.splitlines() if shell == "fish" else out.split()


@pytest.mark.parametrize(
    "line, present, absent",
    [
        ("difftop rl tas", {"task="}, {"checkpoint="}),
        ("difftop rl ", {"agent=", "task=", "steps=", "preset="}, {"checkpoint=", "rl"}),
        ("difftop eval ", {"checkpoint=", "episodes=", "out_dir="}, {"agent="}),
        ("difftop eval seed=3 chec", {"checkpoint="}, {"seed="}),
        ("difftop rl agent=tdmpc preset=", {"preset=cpu", "preset=quick"}, {"task="}),
        ("difftop plot runs/a runs/b ou", {"out="}, set()),  # positional words are not overrides
        ("difftop bench trajopt ", {"only.", "dtype=", "warmup="}, {"agent="}),
        ("difftop ", {"rl", "il", "il-landscape", "eval", "plot", "bench", "demos"}, {"trajopt"}),
        ("difftop il", {"il", "il-landscape"}, {"rl"}),
        ("difftop bench ", {"rl", "trajopt"}, {"bench"}),
        ("difftop nosuch ", set(), {"rl", "task="}),
    ],
)
def test_completion_lists_the_typed_commands_keys(line, present, absent, monkeypatch, capsys):
    got = set(_complete(line, monkeypatch, capsys))
    assert present <= got and not absent & got, sorted(got)


def test_completion_reads_the_line_up_to_the_cursor_and_answers_fish(monkeypatch, capsys):
    line = "difftop rl tas obs=state"
    assert _complete(line, monkeypatch, capsys, point=len("difftop rl tas")) == ["task="]
    assert "task=" in _complete("difftop rl ta", monkeypatch, capsys, shell="fish")
    assert _complete("difftop pl", monkeypatch, capsys, shell="fish") == ["plot"]


def test_completion_install_registers_difftop_itself(capsys):
    """Hydra's script registers the program it is given: `difftop`, not `difftop rl` (two words)."""
    assert cli.main(["rl", "--shell-completion", "install=bash"]) == 0
    script = capsys.readouterr().out
    assert "$helper -sc query=bash" in script  # what the script runs: `difftop -sc query=bash`
    assert script.rstrip().endswith("-F hydra_bash_completion difftop")
    assert cli.main(["-sc", "install=bash"]) == 0
    assert capsys.readouterr().out == script  # the same script from any command
    assert cli.main(["rl", "-sc"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1


@pytest.mark.skipif(_venv_difftop() is None, reason=".venv/bin/difftop not installed (pip install -e .)")
def test_installed_bash_completion_completes_keys(tmp_path):
    """End to end: source the installed script in bash and run its completion function on a typed line."""
    bin_dir = _venv_difftop().parent
    script = textwrap.dedent(
        """
        eval "$(difftop rl --shell-completion install=bash)"
        COMP_LINE="difftop rl tas"; COMP_POINT=${#COMP_LINE}; COMP_CWORD=2
        hydra_bash_completion; echo "rl: ${COMPREPLY[*]}"
        COMP_LINE="difftop eval chec"; COMP_POINT=${#COMP_LINE}; COMP_CWORD=2
        hydra_bash_completion; echo "eval: ${COMPREPLY[*]}"
        """
    )
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=120)
    assert proc.stdout.splitlines() == ["rl: task=", "eval: checkpoint="], proc.stdout + proc.stderr
