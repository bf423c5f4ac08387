"""Short fixed-seed RL and IL runs give the numbers and actions recorded before the run engine (golden
files in this folder; ``python -m tests.golden.record`` re-records them when a change is meant to
alter results)."""

from __future__ import annotations

import pytest

from difftop.cli import main
from tests.golden.cases import IL_CASES, RL_CASES, compare, il_args, il_data, load_golden, rl_args, snapshot


@pytest.fixture(scope="module")
def il_setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("golden-il")
    data = il_data(tmp / "data.zarr")
    base = tmp / "base"
    assert main(il_args("il-bc", base, data, None)) == 0
    return data, base


@pytest.mark.parametrize("name", sorted(RL_CASES))
def test_rl_run_matches_its_golden_file(name, tmp_path):
    assert main(rl_args(name, tmp_path / "run")) == 0
    diffs = compare(snapshot(tmp_path / "run", "rl"), load_golden(name))
    assert not diffs, "\n".join(diffs[:20])


@pytest.mark.parametrize("name", sorted(IL_CASES))
def test_il_run_matches_its_golden_file(name, tmp_path, il_setup):
    data, base = il_setup
    assert main(il_args(name, tmp_path / "run", data, base)) == 0
    diffs = compare(snapshot(tmp_path / "run", "il"), load_golden(name))
    assert not diffs, "\n".join(diffs[:20])
