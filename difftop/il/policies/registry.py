"""The imitation-policy registry: one ``@register_policy("name")`` per policy class.

A new policy is its module in this package (its class decorated with ``@register_policy("name")``)
and its hyper-parameters in ``difftop/configs/il_policy/<name>.yaml``; no list to edit.

Why the names are read from the modules' source: a policy module is imported only when its policy
is built, so ``difftop il policy=bc`` never imports diffusers, and a module that cannot be imported
(a missing optional dependency) breaks only its own names. :func:`declared_policies` therefore
parses this package's modules (no import) for the decorator with a literal name. A policy
defined elsewhere (a plugin, a test) registers when its module is imported.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import TypeVar

from difftop.errors import UserError
from difftop.il.policies.base import Policy

__all__ = ["POLICIES", "declared_policies", "policy_class", "register_policy"]

_PACKAGE = __name__.rpartition(".")[0]
_registered: dict[str, type[Policy]] = {}  # name -> class, filled as policy modules are imported

C = TypeVar("C", bound=type[Policy])


def _path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def register_policy(name: str) -> Callable[[C], C]:
    """Class decorator: build the class as policy ``name`` (``difftop il policy=<name>``).

    In this package the name must be a string literal (it is read from the source)."""

    def deco(cls: C) -> C:
        if not (isinstance(cls, type) and issubclass(cls, Policy)):
            raise TypeError(f"@register_policy({name!r}) needs a Policy subclass, got {cls!r}")
        taken = _path(_registered[name]) if name in _registered else declared_policies().get(name)
        if taken is not None and taken != _path(cls):  # the same class again: a module reload
            raise ValueError(f"policy name {name!r} is already registered by {taken}")
        _registered[name] = cls
        return cls

    return deco


def _decorated_names(tree: ast.Module) -> Iterator[tuple[str, str]]:
    """(policy name, class name) of each ``@register_policy("...")`` class of a module."""
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        for dec in node.decorator_list:
            func = dec.func if isinstance(dec, ast.Call) else None
            called = getattr(func, "id", None) or getattr(func, "attr", None)
            if called == "register_policy" and dec.args and isinstance(dec.args[0], ast.Constant) \
                    and isinstance(dec.args[0].value, str):
                yield dec.args[0].value, node.name


@cache
def declared_policies() -> dict[str, str]:
    """name -> ``"module:Class"`` of every policy this package's modules register (read, not imported)."""
    out: dict[str, str] = {}
    for path in sorted(Path(__file__).parent.glob("*.py")):
        source = path.read_text(encoding="utf-8")
        if "register_policy(" not in source or path.stem == "registry":
            continue
        for name, cls in _decorated_names(ast.parse(source, filename=str(path))):
            if name in out:
                raise ValueError(f"policy {name!r} is registered twice: {out[name]}, {path.stem}:{cls}")
            out[name] = f"{_PACKAGE}.{path.stem}:{cls}"
    return out


class _Policies(Mapping[str, str]):
    """name -> ``"module:Class"`` of every policy: this package's, and any registered at run time."""

    def _all(self) -> dict[str, str]:
        return {**declared_policies(), **{n: _path(c) for n, c in _registered.items()}}

    def __getitem__(self, name: str) -> str:
        return self._all()[name]

    def __contains__(self, name: object) -> bool:
        return name in _registered or name in declared_policies()

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._all()))

    def __len__(self) -> int:
        return len(self._all())

    def __repr__(self) -> str:
        return f"POLICIES({self._all()!r})"


POLICIES: Mapping[str, str] = _Policies()


def policy_class(name: str) -> type[Policy]:
    """The class registered as ``name``, importing its module on first use (UserError for an
    unknown or unimportable one)."""
    if name in _registered:
        return _registered[name]
    if name not in POLICIES:
        raise UserError(f"unknown policy {name!r}; choose one of: {', '.join(POLICIES)}")
    module = POLICIES[name].partition(":")[0]
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise UserError(f"policy {name!r} is not available ({type(e).__name__}: {e})") from None
    if name not in _registered:  # the source says it registers the name, the import did not
        raise UserError(f"policy {name!r}: importing {module} did not register it")
    return _registered[name]
