"""Checkpoints: the model as safetensors + JSON, the resume state beside it, committed atomically.

A checkpoint is a directory::

    checkpoint/
      model.safetensors   the weights (no pickled code: safe to load from anyone)
      model.json          kind, config, policy spec, counters, last evaluation (plain JSON)
      state.pt            what only resuming needs: optimizers, RNG states, pending work (torch.save)
      <extra files>       e.g. the RL replay buffer (buffer.npz)
      commit.json         written last: the file list and the CSV row counts this state matches

Why a directory committed as a whole: a run killed at any instant must resume to exactly the
uninterrupted run, so the weights, the replay buffer and the logs' row counts must be one commit.
:func:`commit_checkpoint` writes everything into ``.checkpoint.new/``, then swaps it in with two
renames; :func:`recover` finishes or rolls back a swap cut off between them. Readers take
``checkpoint/`` and, only when a swap was cut off, the complete one of ``.checkpoint.new/`` or
``.checkpoint.old/``.

The checkpoint's content is one nested dict (:func:`load_checkpoint` returns it): the subtrees named
by ``weights`` (e.g. ``("agent", "modules")`` or ``("policy",)``) go to safetensors, JSON values to
``model.json``, the rest to ``state.pt``. ``load_checkpoint(..., weights_only=True)`` reads only the
first two. Single-file checkpoints of earlier versions (``checkpoint.pt``, format
``difftop-checkpoint-v1``) still load.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "commit_checkpoint", "find_checkpoint", "recover",
           "CheckpointError", "CHECKPOINT", "FORMAT", "LEGACY_FORMAT"]

FORMAT = "difftop-checkpoint-v2"
LEGACY_FORMAT = "difftop-checkpoint-v1"
CHECKPOINT = "checkpoint"  # the directory's name inside a run folder
LEGACY_FILE = "checkpoint.pt"
_NEW, _OLD = ".checkpoint.new", ".checkpoint.old"
_SEP = "/"  # joins nested dict keys in safetensors names (module keys themselves hold dots)


class CheckpointError(ValueError):
    """A missing, unreadable or foreign checkpoint (the message names the path and the problem)."""


# ---------------------------------------------------------------- writing


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=True)
        return True
    except (TypeError, ValueError):
        return False


def _split(state: Mapping[str, Any], weights: tuple[tuple[str, ...], ...]):
    """(tensors for safetensors, JSON part, pickled part) of a checkpoint dict."""
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    paths = {tuple(p) for p in weights}

    def take(tree: Any, prefix: tuple[str, ...]) -> None:
        for k, v in tree.items():
            if isinstance(v, Mapping):
                take(v, (*prefix, str(k)))
            elif isinstance(v, torch.Tensor):
                tensors[_SEP.join((*prefix, str(k)))] = v.detach().to("cpu").contiguous().clone()
            else:
                raise CheckpointError(f"checkpoint weights {_SEP.join(prefix)}/{k} is not a tensor")

    for key, value in state.items():
        inner = [p for p in paths if p[0] == key]
        if inner and isinstance(value, Mapping):
            for p in inner:
                tree = state
                for part in p:
                    tree = tree[part]
                take(tree, p)
            # what is left of this entry besides its weight subtrees (e.g. agent optimizers) is pickled
            left = _without(dict(value), [p[1:] for p in inner])
            if left:
                rest[key] = left
        elif _jsonable(value):
            meta[key] = value
        else:
            rest[key] = value
    return tensors, meta, rest


def _without(tree: dict, paths: list[tuple[str, ...]]) -> dict:
    out = dict(tree)
    for p in paths:
        if not p:
            return {}
        if len(p) == 1:
            out.pop(p[0], None)
        elif p[0] in out:
            out[p[0]] = _without(dict(out[p[0]]), [p[1:]])
    return out


def _write_dir(d: Path, state: Mapping[str, Any], weights, files, extra_commit) -> None:
    from safetensors.torch import save_file

    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    tensors, meta, rest = _split(state, tuple(weights))
    save_file(tensors, str(d / "model.safetensors"))
    meta = {"format": FORMAT, **meta, "weights": [list(p) for p in weights]}
    (d / "model.json").write_text(json.dumps(meta, indent=1, allow_nan=True))
    torch.save(rest, d / "state.pt")
    names = ["model.safetensors", "model.json", "state.pt"]
    for name, write in (files or {}).items():
        write(d / name)
        names.append(name)
    for name in names:
        _fsync(d / name)
    (d / "commit.json").write_text(json.dumps({"files": names, **(extra_commit or {})}))
    _fsync(d / "commit.json")


def save_checkpoint(path: str | Path, state: Mapping[str, Any], *, weights=(), files=None) -> Path:
    """Write ``state`` as a checkpoint directory ``path`` (replacing it atomically)."""
    path = Path(path)
    if path.suffix == ".pt":  # a v1 file name: write the directory beside it
        path = path.with_suffix("")
    tmp = path.with_name(f".{path.name}.new")
    _write_dir(tmp, state, weights, files, None)
    old = path.with_name(f".{path.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def commit_checkpoint(run_dir: str | Path, state: Mapping[str, Any], *, weights=(),
                      files: Mapping[str, Callable[[Path], None]] | None = None,
                      logs: Mapping[str, int] | None = None,
                      crash: Callable[[str], None] | None = None) -> Path:
    """Commit ``state`` (and ``files``, and the CSV row counts ``logs``) as ``run_dir/checkpoint``.

    ``crash(name)`` is called at named instants (tests kill the process there)."""
    run_dir = Path(run_dir)
    crash = crash or (lambda name: None)
    new, old, cur = run_dir / _NEW, run_dir / _OLD, run_dir / CHECKPOINT
    _write_dir(new, state, weights, files, {"logs": dict(logs or {})})
    crash("checkpoint.written")
    if old.exists():
        shutil.rmtree(old)
    if cur.exists():
        os.replace(cur, old)
    crash("checkpoint.swap")
    os.replace(new, cur)
    _fsync(run_dir)
    crash("checkpoint.swapped")
    shutil.rmtree(old, ignore_errors=True)
    return cur


# ---------------------------------------------------------------- finding


def _complete(d: Path) -> bool:
    try:
        names = json.loads((d / "commit.json").read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return all((d / n).is_file() for n in names)


def recover(run_dir: str | Path) -> None:
    """Finish or roll back a checkpoint swap cut off by a kill; drop half-written leftovers."""
    run_dir = Path(run_dir)
    new, old, cur = run_dir / _NEW, run_dir / _OLD, run_dir / CHECKPOINT
    if not cur.exists():
        if new.exists() and _complete(new):
            os.replace(new, cur)
        elif old.exists() and _complete(old):
            os.replace(old, cur)
    for d in (new, old):
        if d.exists():
            shutil.rmtree(d)


def find_checkpoint(path: str | Path) -> Path | None:
    """The checkpoint that ``path`` names: a run folder, a checkpoint directory, one of its files, or a
    v1 ``checkpoint.pt``; None when there is none. Read-only (a cut-off swap is read, not repaired)."""
    path = Path(path)
    if path.name == LEGACY_FILE and not path.exists():  # `checkpoint=runs/x/checkpoint.pt`, as before v2
        path = path.parent
    if path.is_file():
        if path.parent.joinpath("commit.json").exists() or path.name in ("model.safetensors", "model.json"):
            return path.parent
        return path
    if not path.is_dir():
        return None
    if (path / "commit.json").exists() or (path / "model.json").exists():
        return path
    cur = path / CHECKPOINT
    if cur.is_dir():
        return cur
    for d in (path / _NEW, path / _OLD):
        if d.is_dir() and _complete(d):
            return d
    legacy = path / LEGACY_FILE
    return legacy if legacy.is_file() else None


# ---------------------------------------------------------------- reading


def _nest(tensors: Mapping[str, torch.Tensor]) -> dict:
    out: dict = {}
    for name, t in tensors.items():
        *parents, leaf = name.split(_SEP)
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = t
    return out


def _merge(a: dict, b: Mapping) -> dict:
    for k, v in b.items():
        if isinstance(v, Mapping) and isinstance(a.get(k), dict):
            _merge(a[k], v)
        else:
            a[k] = v
    return a


def _load_legacy(path: Path, kind: str | None) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated / not a torch file
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != LEGACY_FORMAT:
        raise CheckpointError(f"{path} is not a difftop checkpoint")
    return state


def load_checkpoint(path: str | Path, kind: str | None = None, *,
                    weights_only: bool = False) -> dict[str, Any]:
    """The checkpoint dict that ``path`` names (see :func:`find_checkpoint`); ``kind`` ("rl", "il") checks
    what it holds. ``weights_only``: only model.json and the safetensors weights (no pickle is read)."""
    given = Path(path)
    found = find_checkpoint(given)
    if found is None:
        raise CheckpointError(f"checkpoint {given} does not exist")
    if found.is_file():
        state = _load_legacy(found, kind)
        state["path"] = str(found)
    else:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            meta = json.loads((found / "model.json").read_text())
            tensors = load_file(str(found / "model.safetensors"))
        except (OSError, ValueError, SafetensorError) as e:
            raise CheckpointError(f"checkpoint {found} is unreadable ({type(e).__name__}: {e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(f"{found} is not a difftop checkpoint (model.json has format "
                                  f"{meta.get('format') if isinstance(meta, dict) else None!r})")
        state = _merge(dict(meta), _nest(tensors))
        if not weights_only:
            try:
                rest = torch.load(found / "state.pt", map_location="cpu", weights_only=False)
                commit = json.loads((found / "commit.json").read_text())
            except Exception as e:
                raise CheckpointError(f"checkpoint {found}: its resume state is unreadable "
                                      f"({type(e).__name__}: {e})") from None
            _merge(state, rest)
            state["logs"] = commit.get("logs") or {}
        state["path"] = str(found)
    if kind is not None and state.get("kind") != kind:
        raise CheckpointError(f"checkpoint {found} holds a {state.get('kind')!r} run, not {kind!r}")
    return state
