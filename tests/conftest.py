"""Shared test helpers: models with non-trivial random weights.

A freshly built flow is the identity (its output projections start at zero), which
would make invertibility and sampler tests vacuous; `randomize` draws every weight
the way the reference fixtures were made, so every block really transforms.
"""

import pytest
import torch

import worldflow as wf


def randomize(model: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
            if name.endswith("proj_out.weight"):
                p.copy_(noise * scale / p.shape[1] ** 0.5)
            elif name.endswith("proj_out.bias"):
                p.copy_(noise * 0.1)
            elif p.dim() >= 2:
                p.copy_(noise / p[0].numel() ** 0.5)
            elif "norm" in name and name.endswith("weight") and "final_norm" not in name:
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)
    return model


def build(seed: int = 0, dtype=torch.float32, **overrides) -> wf.WorldFlow:
    return randomize(wf.WorldFlow.from_preset("tiny", **overrides), seed).to(dtype).eval()


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread per test: no oversubscription on small CI machines."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny():
    """A randomized `tiny` world model with 2 discrete actions."""
    return build(num_actions=2)
