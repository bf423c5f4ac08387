"""The ``difftop`` command line.

Usage::

    difftop <command words> [Hydra overrides and flags]
    difftop bench trajopt key=value ...        # one run
    difftop bench trajopt --cfg job            # print the composed config, run nothing
    difftop bench trajopt --help               # the command's config and Hydra help
    difftop bench trajopt -m key=1,2           # multirun: one job per value
    eval "$(difftop rl -sc install=bash)"      # shell completion of commands and keys (bash, zsh, fish)

Every command is a Hydra app. :data:`COMMANDS` maps the command words to the Hydra config
name (relative to ``difftop/configs``) and a ``"module.path:function"`` target. The target is
imported only when the command runs, so ``difftop --help`` stays fast and each command imports
only its own dependencies. The target takes the composed ``DictConfig`` and returns an int exit
code (or ``None`` for success).

A command may take positional words (``difftop plot runs/a runs/b``): :data:`POSITIONAL` names the
config key that receives them as a list of strings.

To add a command, add one entry to :data:`COMMANDS` (and optionally a line to :data:`HELP`),
and write ``difftop/configs/<config name>.yaml`` starting with::

    defaults:
      - _hydra      # shared Hydra settings: no chdir, no outputs/ dir (see configs/_hydra.yaml)
      - _self_

Errors in user input should be raised as :class:`difftop.errors.UserError`; they come out as one line
``error: <message>`` on stderr and exit code 2 (set ``HYDRA_FULL_ERROR=1`` for the traceback).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: Directory holding the Hydra configs of all commands (tests may point it elsewhere).
CONFIG_DIR: Path = Path(__file__).resolve().parent / "configs"

#: command words -> (Hydra config name relative to CONFIG_DIR, "module.path:function")
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("bench", "trajopt"): ("bench_trajopt", "difftop.bench.trajopt:main"),
    ("bench", "trajopt-family"): ("bench_trajopt_family", "difftop.bench.trajopt_family:main"),
    ("demos",): ("demos", "difftop.il.demos:main"),
    ("il",): ("il", "difftop.il.train:main"),
    ("il-landscape",): ("il_landscape", "difftop.il.landscape:main"),
    ("plot",): ("plot", "difftop.plot:main"),
    ("rl",): ("rl", "difftop.rl.trainer:main"),
    ("bench", "rl"): ("bench_rl", "difftop.bench.rl:main"),
    ("bench", "il"): ("bench_il", "difftop.bench.il:main"),
    ("eval",): ("rl_eval", "difftop.evaluate:main"),
    ("data", "convert"): ("data_convert", "difftop.data.convert:main"),
}

#: Optional one-line descriptions shown by ``difftop --help``.
HELP: dict[tuple[str, ...], str] = {
    ("bench", "trajopt"): "benchmark the differentiable trajectory-optimization layer",
    ("bench", "trajopt-family"): "the layer with its defaults vs Theseus on a held-out family of problems",
    ("demos",): "generate successful expert demonstrations (task=pusht) into a zarr replay buffer",
    ("il",): "train an imitation policy (difftop, bc, bc_rnn, diffusion, ibc, residual) on demos (resumable)",
    ("il-landscape",): "plot a DiffTOP IL policy's learned objective over a 2-D action (paper Fig. 5)",
    ("bench", "rl"): "training env-steps/s of TD-MPC and DiffTOP agents, in one process",
    ("bench", "il"): "training steps/s of each imitation policy on images, and where a step's time goes",
    ("rl",): "train TD-MPC / DiffTOP on a DeepMind Control task (resumable)",
    ("eval",): "evaluate a saved checkpoint (RL: mean +- std return; IL: success rate, coverage) with videos",
    ("plot",): "learning curves (mean +- std over seeds): RL returns vs env steps and wall-clock, IL metrics",
    ("data", "convert"): "convert a dataset between LeRobot v3, diffusion_policy zarr and robomimic hdf5",
}

#: command words -> config key that takes the command's positional words: ``difftop plot a b`` runs
#: ``plot`` with the override ``runs=['a','b']``. Positional words are the words right after the
#: command, before the first ``key=value`` or flag; a word holding ``=`` or starting with ``-``
#: cannot be one (pass ``key=[...]`` instead).
POSITIONAL: dict[tuple[str, ...], str] = {
    ("plot",): "runs",
}

from difftop.errors import EXIT_USAGE, UserError  # noqa: E402,F401  (re-exported: older imports)


def _name(cmd: Sequence[str]) -> str:
    return " ".join(cmd)


def _usage() -> str:
    cmds = sorted(COMMANDS)
    width = max((len(_name(c)) for c in cmds), default=0)
    lines = [
        "usage: difftop <command> [key=value ...] [Hydra flags: --cfg job, --help, -m/--multirun]",
        "",
        "commands:",
    ]
    for c in cmds:
        lines.append(f"  {_name(c):<{width}}  {HELP.get(c, '')}".rstrip())
    lines += [
        "",
        "Each command is a Hydra app: `difftop <command> key=value` overrides its config,",
        "`--cfg job` prints the composed config, `--help` shows it, `-m key=a,b` runs a sweep.",
    ]
    return "\n".join(lines)


def _valid_commands() -> str:
    return ", ".join(_name(c) for c in sorted(COMMANDS))


def _split_command(argv: Sequence[str]) -> tuple[tuple[str, ...], list[str]]:
    """Split ``argv`` into the leading command words and the rest (Hydra's arguments)."""
    n = 0
    while n < len(argv) and not argv[n].startswith("-") and "=" not in argv[n]:
        n += 1
    return tuple(argv[:n]), list(argv[n:])


def _quote(word: str) -> str:
    """``word`` as a quoted string in Hydra's override grammar, read back unchanged.

    OmegaConf would resolve ``${...}`` even in a quoted value, so it is escaped (``\\${``, with the
    backslashes before it doubled); Hydra unescapes only backslashes before a quote or the closing
    quote, so those are doubled and the quotes escaped.
    """
    word = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", word)
    word = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, word)
    return "'" + word.replace("'", "\\'") + "'"


def positional_override(key: str, words: Sequence[str]) -> str:
    """The Hydra override ``key=['w1','w2',...]`` that passes ``words`` verbatim as a list of strings."""
    return f"{key}=[{','.join(_quote(w) for w in words)}]"


def _with_positional(key: str, words: list[str], rest: list[str]) -> list[str]:
    """Hydra's arguments with the positional words' override placed beside the other overrides.

    Hydra's argparse takes the overrides as one run of positional arguments, so the new one goes
    just before the first ``key=value`` of ``rest`` (after flags such as ``-m``), else first.
    """
    i = next((j for j, w in enumerate(rest) if "=" in w and not w.startswith("-")), 0)
    return [*rest[:i], positional_override(key, words), *rest[i:]]


def _load_target(target: str) -> Callable[[Any], Any]:
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _as_exit_code(rc: Any) -> int:
    if rc is None or isinstance(rc, bool):
        return 0 if not rc else 1
    if isinstance(rc, int):
        return rc
    return 0  # a command may return e.g. a dict of results: success


def _system_exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


#: settings whose default is a number but which also take a schedule string (``linear(a, b, steps)``);
#: the command itself checks them
SCHEDULES = frozenset({"explore_std"})


def _check_number_types(cfg: Any, config_name: str) -> None:
    """A setting whose default is a number must stay one: ``lr=abc`` is a one-line error here, not a
    ``float('abc')`` traceback from deep inside a run. The defaults are the command's config composed
    without the user's overrides (keys only a non-default group brings are not checked)."""
    from hydra import compose
    from omegaconf import DictConfig, OmegaConf

    defaults = compose(config_name=config_name)

    def walk(default: Any, given: Any, path: str) -> None:
        for key, value in default.items_ex(resolve=False) if isinstance(default, DictConfig) else ():
            if key not in given or key == "hydra" or OmegaConf.is_missing(given, key) \
                    or OmegaConf.is_interpolation(given, key):
                continue
            here = f"{path}{key}"
            got = given[key]  # no interpolation here: plain access returns the value as given
            if isinstance(value, DictConfig):
                if isinstance(got, DictConfig):
                    walk(value, got, here + ".")
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                if isinstance(got, str) and here not in SCHEDULES:
                    raise UserError(f"{here} must be a number, got {got!r}")

    walk(defaults, cfg, "")


def _store_il_policies() -> None:
    """The config ``il_policies``: ``policies.<name>`` from every ``il_policy/<name>.yaml``, so that a new
    IL policy is its module and its YAML (Hydra's defaults list cannot glob)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    node = {p.stem: OmegaConf.load(p) for p in sorted((CONFIG_DIR / "il_policy").glob("*.yaml"))}
    ConfigStore.instance().store(name="il_policies", node={"policies": node})


def run_command(cmd: tuple[str, ...], args: Sequence[str], prog: str | None = None) -> int:
    """Run the registered command ``cmd`` as a Hydra app with the arguments ``args`` (``prog``: the
    program name Hydra sees, by default ``difftop <command>``)."""
    import hydra
    from hydra.core.global_hydra import GlobalHydra

    from difftop.launch import JobFailed, job_config, register_launchers, sweep_args

    _store_il_policies()
    register_launchers()
    config_name, target = COMMANDS[cmd]
    codes: list[int] = []
    command_pid = os.getpid()  # launchers that run jobs in other processes lose `codes`

    def task(cfg: Any) -> Any:
        fn = _load_target(target)
        try:
            cfg = job_config(cfg)  # a multirun job's run goes to its own folder in the sweep
            _check_number_types(cfg, config_name)
            rc = fn(cfg)
        except UserError as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {e}", file=sys.stderr)
            if os.getpid() != command_pid:  # a sweep job in its own process (submitit): fail it visibly
                raise JobFailed(f"error: {e}") from None
            codes.append(EXIT_USAGE)
            return None
        codes.append(_as_exit_code(rc))
        if codes[-1] and os.getpid() != command_pid:
            raise JobFailed(f"exit code {codes[-1]}")
        return rc

    # Hydra names the job after the last component of the task function's module.
    task.__module__ = f"difftop.cli.{config_name}"
    app = hydra.main(config_path=str(CONFIG_DIR), config_name=config_name, version_base=None)(task)

    saved_argv = sys.argv
    # Hydra parses sys.argv[1:]; argv[0] (no slash) becomes the program name in its usage text.
    sys.argv = [prog or f"difftop {_name(cmd)}", *sweep_args(args)]
    try:
        app()
        code = 0
    except SystemExit as e:  # Hydra reports composition errors, argparse errors this way
        code = _system_exit_code(e)
    finally:
        sys.argv = saved_argv
        GlobalHydra.instance().clear()
    if code == 0:
        code = next((c for c in codes if c != 0), 0)
    return code


#: Hydra's shell-completion flag. The script that ``difftop <command> -sc install=bash`` prints asks
#: for completions by running ``difftop -sc query=bash`` with the line typed so far in ``COMP_LINE``.
COMPLETION_FLAGS = ("-sc", "--shell-completion")


def _is_word(word: str) -> bool:
    """A command word or positional word: neither a flag nor a ``key=value``."""
    return not word.startswith("-") and "=" not in word


def _command_of(words: Sequence[str]) -> tuple[str, ...] | None:
    """The longest registered command that ``words`` start with."""
    return next((tuple(words[:n]) for n in range(len(words), 0, -1) if tuple(words[:n]) in COMMANDS), None)


def shell_completion(argv: Sequence[str]) -> int:
    """Hydra's shell completion through the ``difftop`` dispatcher.

    Why here: Hydra's script calls the program without the command words (``difftop -sc query=bash``),
    so only the dispatcher can tell which command's config to complete: it reads the command from the
    typed line (``COMP_LINE``, up to ``COMP_POINT``), completes command words itself, and hands the
    rest of the line to that command's Hydra app with the command words (and positional words, which
    are not overrides) removed. ``install``/``uninstall`` run through Hydra as ``difftop``, so the
    script it prints registers the ``difftop`` program (the same script for every command).
    """
    words, rest = _split_command(argv)
    cmd = _command_of(words) or min(COMMANDS)
    asked = [w for w in rest if w.partition("=")[0] in ("install", "uninstall", "query")]
    if len(asked) != 1:
        print(f"error: {' / '.join(COMPLETION_FLAGS)} takes one of install=<shell>, uninstall=<shell>, "
              f"query=<shell> (shells: bash, zsh, fish)", file=sys.stderr)
        return EXIT_USAGE
    query = asked[0].partition("=")[2] if asked[0].startswith("query=") else None
    if query is None:  # install= / uninstall=: Hydra's own script
        return run_command(cmd, rest, prog="difftop")
    line = os.environ.get("COMP_LINE", "")
    point = os.environ.get("COMP_POINT", "")
    if point.isdigit() and int(point) <= len(line):
        line = line[: int(point)]
    new_word = not line or line[-1].isspace()
    typed = line.split()[1:]  # the first word is the program
    done, current = (typed, "") if new_word else (typed[:-1], typed[-1])
    n = 0
    while n < len(done) and _is_word(done[n]):
        n += 1
    cmd = _command_of(done[:n])
    if cmd is None:  # still typing the command: complete its words
        choices = sorted({c[n] for c in COMMANDS if len(c) > n and c[:n] == tuple(done) and
                          c[n].startswith(current)}) if n == len(done) and _is_word(current) else []
        print(("\n" if query == "fish" else " ").join(choices))
        return 0
    after = done[len(cmd):]
    k = 0
    while k < len(after) and _is_word(after[k]):  # positional words: not Hydra overrides
        k += 1
    hydra_words = ["difftop", *after[k:], *([current] if current else [])]
    hydra_line = " ".join(hydra_words) + (" " if new_word else "")
    saved = {key: os.environ.get(key) for key in ("COMP_LINE", "COMP_POINT")}
    os.environ["COMP_LINE"], os.environ["COMP_POINT"] = hydra_line, str(len(hydra_line))
    try:
        return run_command(cmd, ["-sc", f"query={query}"], prog="difftop")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``difftop`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(_usage())
        return EXIT_USAGE
    if argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from difftop import __version__

        print(f"difftop {__version__}")
        return 0

    if any(w in COMPLETION_FLAGS for w in argv):
        return shell_completion(argv)

    words, rest = _split_command(argv)
    # the longest registered command that the leading words start with
    for n in range(len(words), 0, -1):
        if words[:n] in COMMANDS:
            cmd = words[:n]
            args = [*words[n:], *rest]
            if words[n:] and cmd in POSITIONAL:
                args = _with_positional(POSITIONAL[cmd], list(words[n:]), rest)
            try:
                return run_command(cmd, args)
            except KeyboardInterrupt:
                print("interrupted", file=sys.stderr)
                return 130

    sub = [c for c in sorted(COMMANDS) if words and c[: len(words)] == words]
    if sub and (not rest or rest[0] in ("-h", "--help")):
        msg = f"difftop {_name(words)}: choose one of: {', '.join(_name(c) for c in sub)}"
        if rest:  # asked for help
            print(msg)
            return 0
        print(msg, file=sys.stderr)
        return EXIT_USAGE
    what = _name(words) if words else argv[0]
    print(f"difftop: unknown command '{what}'; valid commands: {_valid_commands()}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
