"""Learned task heads: the environment's reward and termination, read from a frame.

They let the dream report the real task's reward and end episodes where the real
environment would. A head sees the frame that a transition arrives at (and the one
before it, for velocities): `reward` regresses the reward received on arriving,
`terminated` gives the logit that the episode ended there.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TaskHeads(nn.Module):
    """(previous frame, frame) in model space, each (B, C, H, W) -> reward (B,), logit (B,).

    Three stride-2 convolutions, then a linear map of the whole (4, 12) feature grid: where
    things are matters (a pole past 12 degrees, a cart near the edge end CartPole), so the
    features keep their positions instead of being averaged away.
    """

    def __init__(self, channels: int, width: int = 32, grid: tuple[int, int] = (4, 12)):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(2 * channels, width, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(grid),  # the identity for 32 x 96 frames
            nn.Flatten(),
            nn.Linear(2 * width * grid[0] * grid[1], width),
            nn.GELU(),
        )
        self.reward = nn.Linear(width, 1)
        self.terminated = nn.Linear(width, 1)

    def forward(self, previous: Tensor, frame: Tensor) -> tuple[Tensor, Tensor]:
        h = self.features(torch.cat([previous, frame], dim=1))
        return self.reward(h).squeeze(-1), self.terminated(h).squeeze(-1)
