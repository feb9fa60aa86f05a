"""Solving an autoregressive flow block's inverse for a frame: sequential and block Jacobi.

Both samplers solve u_j = v_j * a_j(u_<j) + b_j(u_<j) for a chunk of tokens, given a
`step(lo, hi, inputs) -> (u, a)` that runs the block's network over slots [lo, hi) on
its KV cache:
- `sequential`: token by token, one cached network call per token (the reference);
- `jacobi`: all tokens of a chunk in parallel, iterated to the fixed point. The first
  guess is video-aware (`affine_guess`): each block's scale and shift at the same
  positions of the previous frame applied to this frame's latents, u = v * a_prev + b_prev
  (the noise itself for a video's first frame). A token has settled when its latest update
  would move its latent by `mean(((new - old) / a)^2) <= threshold` (latent units, where
  z ~ N(0, I): a data-space test is fooled by small scales a). Settled leading tokens are
  final and not recomputed; each item of the batch stops on its own once all its tokens
  settle. A chunk of m tokens is exact after m iterations, the default cap. Rejected
  iterates are rewound from the cache.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .config import SamplerConfig
from .kv_cache import KVCache

Step = Callable[[int, int, Tensor], tuple[Tensor, Tensor]]  # (lo, hi, inputs) -> (u, a)


def solve_frame(step: Step, first: Tensor, init: Tensor, cache: KVCache, sampler: SamplerConfig, n: int):
    """Solve a frame's n tokens chunk by chunk (`sampler.block_size` tokens a chunk)."""
    size = sampler.block_size or n
    us, scales, calls = [], [], None
    for lo in range(0, n, size):
        hi = min(lo + size, n)
        if sampler.name == "sequential":
            u, a, c = solve_sequential(step, lo, hi, first)
        else:
            u, a, c = solve_jacobi(
                step, lo, hi, first, init[:, lo:hi], cache, sampler.threshold, sampler.max_iterations
            )
        us.append(u)
        scales.append(a)
        calls = c if calls is None else calls + c
        first = u[:, -1:]
    return torch.cat(us, dim=1), torch.cat(scales, dim=1), calls


def solve_sequential(step: Step, lo: int, hi: int, first_input: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Token by token over slots [lo, hi). Returns u, a (B, m, c) and calls per item (B,)."""
    inputs, us, scales = first_input, [], []
    for j in range(lo, hi):
        u, a = step(j, j + 1, inputs)
        us.append(u)
        scales.append(a)
        inputs = u
    calls = torch.full((first_input.shape[0],), hi - lo, dtype=torch.long, device=first_input.device)
    return torch.cat(us, dim=1), torch.cat(scales, dim=1), calls


def solve_jacobi(
    step: Step,
    lo: int,
    hi: int,
    first_input: Tensor,
    init: Tensor,
    cache: KVCache,
    threshold: float,
    max_iterations: int | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Fixed-point iteration over slots [lo, hi), per item. Returns u, a, iterations (B,).

    An item stops when no token's update moves its latent by more than
    mean(((new - old) / a)^2) > threshold. The first token that still moves (in any
    running item) was computed from settled inputs, so it and every token before it are
    final: the next iterate only recomputes the rest, its keys replacing theirs in the
    cache. At least one token becomes final per iteration, so a chunk of m tokens is
    exact after m iterations (the default cap).
    """
    m = hi - lo
    limit = m if max_iterations is None else max(1, min(max_iterations, m))
    guess, scale = init, torch.ones_like(init)
    done = torch.zeros(init.shape[0], dtype=torch.bool, device=init.device)
    iterations = torch.zeros(init.shape[0], dtype=torch.long, device=init.device)
    start = 0  # first token still being solved
    for it in range(1, limit + 1):
        head = first_input if start == 0 else guess[:, start - 1 : start]
        tail, a = step(lo + start, hi, torch.cat([head, guess[:, start:-1]], dim=1))
        tail = torch.where(done[:, None, None], guess[:, start:], tail)  # finished items stay put
        # the change in latent units, (new - old) / a: what it would move z by
        moved = ((tail - guess[:, start:]) / a).pow(2).mean(dim=2)  # (B, m - start)
        guess = torch.cat([guess[:, :start], tail], dim=1)
        scale = torch.cat([scale[:, :start], a], dim=1)
        iterations += (~done).long()
        still = (moved > threshold) & ~done[:, None]  # (B, m - start)
        done = done | ~still.any(1)  # every token of the item has settled
        if bool(done.all()) or it == limit:
            return guess, scale, iterations
        # tokens up to the first one that moved had final inputs: they are final too
        start += int(still.any(0).long().argmax()) + 1
        if start >= m:
            return guess, scale, iterations
        cache.rewind(hi - (lo + start))  # keep the keys of the final prefix
    raise AssertionError("unreachable")


def pack_affine(u: Tensor, v: Tensor, a: Tensor) -> Tensor:
    """[a | b] of a block's affine map u = v * a + b (the next frame's Jacobi init)."""
    return torch.cat([a, u - v * a], dim=-1)


def affine_guess(prev_affine: Tensor, v: Tensor, fallback: Tensor) -> Tensor:
    """Video-aware first guess: the previous frame's affine map applied to this frame's
    latents, u = v * a_prev + b_prev — exact wherever the context of a token is unchanged
    (a static background), so those tokens settle in the first iteration."""
    if not prev_affine.shape[1]:
        return fallback
    a, b = prev_affine[:, -1].chunk(2, dim=-1)
    return v * a + b
