"""Normalizers: ranges, round trips, constant dimensions, state_dict save/restore."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from difftop.data.normalizer import Normalizer, fit_field


def data(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    state = rng.normal([100.0, -3.0, 0.0], [50.0, 0.1, 1.0], size=(200, 3)).astype(np.float32)
    state[:, 2] = 7.0  # a constant dimension
    return {
        "state": state,
        "action": rng.uniform(0, 512, size=(200, 2)).astype(np.float32),
        "kp": rng.uniform(-5, 5, size=(200, 4, 2)).astype(np.float32),
        "img": rng.integers(0, 256, size=(10, 3, 8, 8), dtype=np.uint8),
    }


@pytest.mark.parametrize("mode", ["minmax", "meanstd"])
def test_fit_round_trip_and_constant_dims(mode):
    d = data()
    norm = Normalizer.fit({k: d[k] for k in ("state", "action", "kp")}, mode=mode)
    for k in ("state", "action", "kp"):
        x = torch.from_numpy(d[k])
        y = norm.normalize(k, x)
        assert torch.isfinite(y).all()
        torch.testing.assert_close(norm.unnormalize(k, y), x, rtol=1e-5, atol=1e-3)
    y = norm.normalize("state", torch.from_numpy(d["state"]))
    assert torch.all(y[:, 2] == 0)  # the constant dimension maps to 0, not inf/nan
    live = y[:, :2]
    if mode == "minmax":
        torch.testing.assert_close(live.amin(0), torch.full((2,), -1.0), atol=1e-5, rtol=0)
        torch.testing.assert_close(live.amax(0), torch.full((2,), 1.0), atol=1e-5, rtol=0)
    else:
        torch.testing.assert_close(live.mean(0), torch.zeros(2), atol=1e-4, rtol=0)
        torch.testing.assert_close(live.std(0, unbiased=False), torch.ones(2), atol=1e-4, rtol=0)


def test_broadcast_over_batch_and_time_and_per_key_modes():
    d = data()
    norm = Normalizer.fit({"state": d["state"], "img": d["img"]}, mode={"state": "meanstd", "img": "image"})
    x = torch.from_numpy(d["state"][:12]).reshape(3, 4, 3)  # (B, To, D)
    torch.testing.assert_close(
        norm.normalize("state", x).reshape(12, 3), norm.normalize("state", x.reshape(12, 3))
    )
    img = torch.from_numpy(d["img"])
    y = norm.normalize("img", img)
    assert y.dtype == torch.float32 and y.min() >= -1 and y.max() <= 1
    assert norm.normalize("img", torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [-1.0, 1.0]
    out = norm({"state": x, "other": torch.ones(2)})
    assert torch.equal(out["other"], torch.ones(2))
    with pytest.raises(KeyError, match="no normalizer for 'nope'"):
        norm.normalize("nope", x)
    with pytest.raises(ValueError, match="unknown normalizer mode"):
        fit_field(d["state"], "bogus")


class Policy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(3, 2)
        self.normalizer = Normalizer()


def test_state_dict_restores_into_unfitted_normalizer():
    d = data()
    src = Policy()
    src.normalizer = Normalizer.fit({"state": d["state"], "obs/kp": d["kp"]}, mode="minmax")
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf)
    assert "normalizer.fields.state.scale" in sd and "normalizer.fields.obs/kp.offset" in sd
    dst = Policy()  # as a checkpoint loader builds it: normalizer not fitted
    dst.load_state_dict(sd)  # strict
    x = torch.from_numpy(d["kp"])
    torch.testing.assert_close(dst.normalizer.normalize("obs/kp", x), src.normalizer.normalize("obs/kp", x))
    assert dst.normalizer.keys() == src.normalizer.keys()
    # a mismatched shape is an error, not a silent reshape
    other = Policy()
    other.normalizer = Normalizer.fit({"state": d["action"]})
    with pytest.raises(RuntimeError, match="size mismatch"):
        other.load_state_dict(sd)


def test_bad_key():
    with pytest.raises(ValueError, match="no '.'"):
        Normalizer.fit({"a.b": np.zeros((3, 1))})
