"""Record the golden files: ``python -m tests.golden.record [name ...]`` (all cases when none given).

Run only when a change of results is intended; commit the JSON files with the reason.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")


def main(names: list[str]) -> int:
    import torch

    from difftop.cli import main as difftop
    from tests.golden.cases import IL_CASES, RL_CASES, golden_path, il_args, il_data, rl_args, snapshot

    torch.set_num_threads(1)
    names = names or [*RL_CASES, *IL_CASES]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = il_data(tmp / "data.zarr")
        base = tmp / "il-base"
        if any(IL_CASES.get(n) in ("residual", "difftop") for n in names):
            assert difftop(il_args("il-bc", base, data, None)) == 0
        for name in names:
            out = tmp / name
            args = rl_args(name, out) if name in RL_CASES else il_args(name, out, data, base)
            if difftop(args) != 0:
                print(f"{name}: run failed", file=sys.stderr)
                return 1
            snap = snapshot(out, "rl" if name in RL_CASES else "il")
            golden_path(name).write_text(json.dumps(snap, indent=1) + "\n")
            print(f"{name}: recorded")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
