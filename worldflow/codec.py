"""Frames <-> model space <-> tokens.

`PatchCodec` cuts frames into `p x p` patches. It is exact and invertible, so a
likelihood over tokens is an exact pixel likelihood. A token's vector is ordered
(row in patch, column in patch, channel), frames row-major (reference section 1).
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor

# uint8 pixel v <-> model value x = v / 127.5 - 1 in [-1, 1]
PIXEL_SCALE = 127.5
LOG_PIXEL_SCALE = math.log(PIXEL_SCALE)


def frames_to_model(frames: Tensor) -> Tensor:
    """uint8 (..., T, H, W, C) -> float32 (..., T, C, H, W) in [-1, 1]."""
    return rearrange(frames.float(), "... h w c -> ... c h w") / PIXEL_SCALE - 1.0


def model_to_frames(x: Tensor) -> Tensor:
    """float (..., T, C, H, W) -> uint8 (..., T, H, W, C), rounded and clipped."""
    pixels = ((x.detach().float() + 1.0) * PIXEL_SCALE).round().clamp(0, 255).to(torch.uint8)
    return rearrange(pixels, "... c h w -> ... h w c")


class PatchCodec:
    """(B, T, C, H, W) <-> (B, T, N, p*p*C) tokens, N = (H/p) * (W/p)."""

    def __init__(self, patch_size: int, frame_size: tuple[int, int]):
        self.p = patch_size
        self.h, self.w = frame_size[0] // patch_size, frame_size[1] // patch_size

    def to_tokens(self, x: Tensor) -> Tensor:
        return rearrange(x, "b t c (h p) (w q) -> b t (h w) (p q c)", p=self.p, q=self.p)

    def from_tokens(self, tokens: Tensor) -> Tensor:
        return rearrange(
            tokens, "b t (h w) (p q c) -> b t c (h p) (w q)", h=self.h, w=self.w, p=self.p, q=self.p
        )
