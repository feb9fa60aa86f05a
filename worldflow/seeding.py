"""Seeded randomness: every sampling entry point takes a seed or a `torch.Generator`."""

from __future__ import annotations

import torch


def generator_from(seed, device) -> torch.Generator | None:
    """None or a generator as given; an int seeds a new generator on `device`."""
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen
