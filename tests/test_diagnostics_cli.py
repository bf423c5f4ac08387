"""difftop.diagnostics: every probe imports without running anything and answers --help."""
import importlib
import pkgutil

import pytest

import difftop.diagnostics

MODULES = sorted(m.name for m in pkgutil.iter_modules(difftop.diagnostics.__path__)
                 if not m.name.startswith("_"))


def test_the_package_lists_every_probe():
    assert len(MODULES) >= 18
    for name in MODULES:
        assert f"``{name}``" in difftop.diagnostics.__doc__, name


@pytest.mark.parametrize("name", MODULES)
def test_a_probe_answers_help(name, capsys):
    mod = importlib.import_module(f"difftop.diagnostics.{name}")
    with pytest.raises(SystemExit) as exit_:
        mod.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and mod.__doc__.splitlines()[0].split()[0] in out
