"""`DreamObjective`: the planners' reward, a TorchRL transform over the dream's outputs.

The TorchRL world reports, for each imagined transition, the learned heads' task reward
and termination logit and the frame's surprise; this transform combines them into the
`reward` the planners sum (`AgentConfig`'s docstring has the formula), optionally with the
pole's lean read from the imagined frame by the CartPole pixel reader.
"""

from __future__ import annotations

import math

import torch
from tensordict import TensorDictBase
from torchrl.envs import Transform

from worldflow.data import read_cartpole_state
from worldflow.errors import WorldFlowError

POLE_LIMIT = math.radians(12)  # CartPole-v1 ends an episode when the pole leans further


def pole_lean(pixels: torch.Tensor, frame_size, crop) -> torch.Tensor:
    """(theta / 12 degrees)^2 of CartPole frames uint8 (..., H, W, 3), read from the pixels,
    capped at 1; 1 where no pole is seen (fallen, or out of the picture)."""
    _, theta = read_cartpole_state(pixels, frame_size, crop)
    return torch.nan_to_num((theta / POLE_LIMIT) ** 2, nan=1.0).clamp(max=1.0)


class DreamObjective(Transform):
    """reward = task_reward - termination_weight * termination_logit + likelihood_weight * surprise
    - pole_weight * pole_lean(pixels); `geometry` (frame_size, crop) of the frames, for the lean."""

    def __init__(self, termination_weight: float = 1.0, likelihood_weight: float = 0.0,
                 pole_weight: float = 0.0, geometry: tuple | None = None):
        super().__init__()
        if pole_weight and geometry is None:
            raise ValueError("geometry: the pole term reads frames; give their (frame_size, crop)")
        self.termination_weight = float(termination_weight)
        self.likelihood_weight = float(likelihood_weight)
        self.pole_weight, self.geometry = float(pole_weight), geometry

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        if "task_reward" not in next_tensordict.keys():
            raise WorldFlowError(
                "model: the planning objective needs a model with task heads (config.task_heads)"
            )
        reward = next_tensordict.get("task_reward") - self.termination_weight * next_tensordict.get(
            "termination_logit"
        )
        if self.likelihood_weight:
            reward = reward + self.likelihood_weight * next_tensordict.get("surprise")
        if self.pole_weight:
            reward = reward - self.pole_weight * pole_lean(next_tensordict.get("pixels"), *self.geometry)
        next_tensordict.set("reward", reward.unsqueeze(-1).to(next_tensordict.get("reward").dtype))
        return next_tensordict

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        return tensordict_reset
