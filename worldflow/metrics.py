"""Likelihood units shared by training, benchmarks and environments."""

from __future__ import annotations

import math


def noise_floor_bits(sigma: float) -> float:
    """Entropy of Gaussian noise of std `sigma` (model units) per dimension, in 8-bit bits.

    A model trained on `x + sigma * eps` cannot score noisy data below it:
    0.5 * log2(2 pi e (127.5 sigma)^2) bits/dim (4.72 at sigma = 0.05).
    """
    return 0.5 * math.log2(2 * math.pi * math.e * (127.5 * sigma) ** 2)
