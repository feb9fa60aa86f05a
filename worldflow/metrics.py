"""Likelihood units shared by training, benchmarks and environments."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def noise_floor_bits(sigma: float) -> float:
    """Entropy of Gaussian noise of std `sigma` (model units) per dimension, in 8-bit bits.

    A model trained on `x + sigma * eps` cannot score noisy data below it:
    0.5 * log2(2 pi e (127.5 sigma)^2) bits/dim (4.72 at sigma = 0.05).
    """
    return 0.5 * math.log2(2 * math.pi * math.e * (127.5 * sigma) ** 2)


def frame_entropy_bits(frames: Tensor) -> dict:
    """Entropy of the distribution of distinct frames (N, ...) of any dtype, in bits a frame.

    Clean frames of a rendered environment are a discrete function of its state, so their
    entropy H bounds what any past can tell an ideal model about a frame: a frame-independent
    model's ideal excess above the noise floor is I(state; noisy frame) <= H, a model that
    knows the state exactly has none. Returned: the plug-in estimate (biased low) and the
    Chao-Shen (2003) coverage-adjusted one, which corrects for frames not yet seen but still
    creeps up while many frames are seen only once (reported beside it as `singletons`).
    """
    if frames.dim() < 2 or frames.shape[0] < 2:
        raise ValueError(
            f"frames: expected a batch of at least 2 frames (N, ...), got shape {tuple(frames.shape)}"
        )
    _, counts = torch.unique(frames.reshape(frames.shape[0], -1), dim=0, return_counts=True)
    n = frames.shape[0]
    p = counts.double() / n
    plug_in = -(p * p.log2()).sum().item()
    singletons = int((counts == 1).sum())
    coverage = 1 - min(singletons, n - 1) / n  # Good-Turing; never 0
    pa = coverage * p
    chao_shen = -(pa * pa.log2() / (1 - (1 - pa) ** n)).sum().item()
    return {
        "frames": n,
        "distinct": int(counts.numel()),
        "singletons": singletons,
        "plug_in_bits": plug_in,
        "chao_shen_bits": chao_shen,
    }
