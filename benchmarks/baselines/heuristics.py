"""Scores and predictions that need no training."""

from __future__ import annotations

from torch import Tensor


def mean_squared(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared difference of uint8 frames (..., H, W, 3), in 8-bit pixel units: (...,)."""
    return (a.float() - b.float()).pow(2).mean(dim=(-3, -2, -1))


def frame_difference(clips: Tensor) -> Tensor:
    """Anomaly score of each clip's last frame (n, T, H, W, 3) -> (n,): how much it differs
    from the frame before it. This is also copy-last's prediction error."""
    return mean_squared(clips[:, -1], clips[:, -2])


def copy_last(context: Tensor, horizon: int) -> Tensor:
    """Copy-last's open-loop prediction: the last context frame repeated, (n, horizon, H, W, 3)."""
    return context[:, -1:].expand(-1, horizon, *context.shape[2:])
