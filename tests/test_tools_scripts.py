"""tools/ and results/: the run, carry and collect scripts parse, name only paths that exist, and no script
reaches difftop through sys.path.insert."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHELL = sorted((ROOT / "tools").glob("*.sh")) + sorted((ROOT / "results").rglob("*.sh"))
PYTHON = sorted((ROOT / "tools").glob("*.py")) + sorted((ROOT / "results").rglob("*.py"))


@pytest.mark.parametrize("script", SHELL, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_shell_script_parses(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.parametrize("script", SHELL + PYTHON, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_script_names_existing_scripts_and_no_sys_path_insert(script):
    text = script.read_text()
    assert "sys.path.insert" not in text
    for path in re.findall(r"\b((?:tools|results)/[\w./-]+\.(?:sh|py))\b", text):
        assert (ROOT / path).is_file(), f"{script.relative_to(ROOT)} names {path}"
    for mod in re.findall(r"-m (difftop\.diagnostics\.\w+)", text):
        assert (ROOT / (mod.replace(".", "/") + ".py")).is_file(), f"{script.relative_to(ROOT)} runs {mod}"


def test_carry_prints_where_a_run_is_collected():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "carry.py"), "dest",
                          "runs/cpu/reacher-easy/difftop/seed2"], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "results/rl/states/runs/reacher-easy/difftop/seed2"
