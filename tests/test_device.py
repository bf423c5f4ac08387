"""``device=`` is resolved up front: typos and missing CUDA devices are one-line errors."""

import pytest
import torch

from difftop.cli import main
from difftop.errors import UserError
from difftop.utils.device import resolve_device


def test_resolve_device():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(UserError, match="device must be auto, cpu, cuda or cuda:N, got 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(UserError, match="got 'mps'"):
        resolve_device("mps")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            resolve_device("cuda")
    else:
        with pytest.raises(UserError, match="CUDA devices"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.parametrize("command", [["rl", "steps=10"], ["il", "task=pusht", "policy=bc", "steps=1"]])
def test_commands_reject_a_bad_device_in_one_line(tmp_path, capsys, command):
    assert main([*command, "device=tpu", f"out_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: device must be auto, cpu, cuda or cuda:N, got 'tpu'"
    assert not (tmp_path / "run").exists()
