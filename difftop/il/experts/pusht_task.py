"""Push-T demonstrations from :class:`~difftop.il.experts.pusht.PushTExpert`."""

from __future__ import annotations

import dataclasses
from typing import Any

from difftop.envs.pusht import make_pusht
from difftop.errors import UserError
from difftop.il.experts import Rollout
from difftop.il.experts.pusht import PushTExpert, PushTExpertConfig, run_expert_episode


class PushTDemoTask:
    """Roll the planner out from ``reset(seed)``; record state, keypoint, img and action per step.

    An attempt that has not succeeded within ``max_steps`` fails (the evaluation time limit),
    so every kept episode is solvable within it.
    """

    name = "pusht"

    def __init__(
        self, max_steps: int = 300, images: bool = True, image_size: int = 96, **expert: Any
    ) -> None:
        fields = {f.name for f in dataclasses.fields(PushTExpertConfig)}
        unknown = sorted(set(expert) - fields)
        if unknown:
            raise UserError(f"unknown Push-T expert option(s) {unknown}; valid: {', '.join(sorted(fields))}")
        if int(max_steps) < 1:
            raise UserError(f"max_steps must be >= 1, got {max_steps}")
        self.max_steps, self.images, self.image_size = int(max_steps), bool(images), int(image_size)
        self.config = PushTExpertConfig(**expert)
        self.env = make_pusht("state", seed=None, max_steps=self.max_steps, render_size=self.image_size)
        self.expert = PushTExpert(self.config)

    def rollout(self, seed: int) -> Rollout:
        # the planner's own randomness depends on the episode seed only: results do not depend on
        # the order in which seeds are tried or on the worker that runs them
        self.expert.reseed(seed)
        steps, success, coverage = run_expert_episode(
            self.env, self.expert, seed, self.max_steps, self.images
        )
        return Rollout(steps, success, {"episode_coverage": coverage})

    def attrs(self) -> dict[str, Any]:
        return {
            "env": "gym_pusht/PushT-v0 (gym-pusht 0.1.8)",
            "max_steps": self.max_steps,
            "image_size": self.image_size if self.images else None,
            "expert": dataclasses.asdict(self.config),
            "keys": {
                "state": "(5,) float32 agent_x, agent_y, block_x, block_y, block_angle",
                "keypoint": "(8, 2) float32 T corners (gym-pusht get_keypoints order)",
                "img": "(H, W, 3) uint8 RGB before the action" if self.images else None,
                "action": "(2,) float32 agent target in [0, 512]^2",
            },
        }
