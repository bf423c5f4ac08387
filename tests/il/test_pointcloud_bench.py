"""``difftop bench il obs=pointcloud``: the point encoders' time is its own column, the CPU preset's point
section reaches every row, and a Hydra-style ``+key=`` override is taken (a smoke run: no timing asserted)."""

from __future__ import annotations

import csv
import os

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")


def test_bench_il_times_point_clouds(tmp_path):
    from difftop.cli import main
    from difftop.data import EpisodeData, save_zarr

    rng = np.random.default_rng(0)
    eps = [{"point_cloud": rng.normal(size=(10, 300, 3)).astype(np.float32),
            "agent_pos": rng.normal(size=(10, 9)).astype(np.float32),
            "action": rng.uniform(-1, 1, (10, 4)).astype(np.float32)} for _ in range(2)]
    data = tmp_path / "pc.zarr"
    save_zarr(EpisodeData.from_episodes(eps), data)
    tiny = ['"+policies.bc.encoder.point_encoder=dp3"', '"policies.bc.hidden=[16]"',
            '"policies.difftop.mlp_hidden=16"', '"policies.difftop.latent_dim=8"', '"batch_size=4"']
    assert main(["bench", "il", "obs=pointcloud", "task=metaworld-reach", f"data={data}",
                 "policies=[bc,difftop]", "rounds=1", "steps_per_round=1", "warmup=0", f"out_dir={tmp_path}",
                 f"overrides=[{','.join(tiny)}]"]) == 0
    with open(tmp_path / "il_pointcloud.csv", newline="") as f:
        rows = {r["policy"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"bc", "difftop"}
    assert all(float(r["points"]) > 0 and float(r["conv"]) == 0 for r in rows.values())
    text = (tmp_path / "il_pointcloud.md").read_text()
    assert "metaworld-reach (pointcloud, {'point_cloud': (300, 3)})" in text
    bc_note = next(line for line in text.splitlines() if line.startswith("- bc: encoder"))
    assert "'point_encoder': 'dp3'" in bc_note and "'num_points': 256" in bc_note
