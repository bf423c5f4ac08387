"""Tiny RL configs shared by the agent and trainer tests."""

import pytest
from omegaconf import OmegaConf

from difftop.cli import CONFIG_DIR

TINY = dict(mlp_dim=32, enc_dim=16, latent_dim=8, num_channels=4, num_samples=16, num_elites=4,
            iterations=2, batch_size=16, pg_batch_size=4, seed_steps=0, horizon=3, lr=1e-2)


def _tiny_cfg(**over):
    """The real rl.yaml with tiny networks (no Hydra: plain OmegaConf, ${} resolved)."""
    cfg = OmegaConf.load(CONFIG_DIR / "rl.yaml")
    cfg.pop("defaults")
    cfg = OmegaConf.merge(cfg, TINY, over)
    if cfg.batch_size is None:
        cfg.batch_size = 16
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))




@pytest.fixture
def tiny_cfg():
    """``tiny_cfg(**overrides)`` -> a resolved tiny run config."""
    return _tiny_cfg
