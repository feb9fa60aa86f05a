"""Transformer parts shared by the flow blocks and the denoiser.

Pre-norm layers (LayerNorm -> attention, LayerNorm -> MLP), 3-D rotary positions
(x, y within a frame; t across frames and text) and a final RMSNorm, as in the
reference STARFlow-V computation (../shared/reference, sections 3 and 5).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .kv_cache import KVCache

try:  # flash attention makes long CUDA sequences fast; optional, CPU never needs it
    from flash_attn import flash_attn_func
except ImportError:  # pragma: no cover - depends on the machine
    flash_attn_func = None

TIME_FREQS = 8  # the last 8 rotary frequencies of a head serve the time axis


# ---------------------------------------------------------------------------- positions
def video_positions(frames: int, grid: tuple[int, int], scale: float, temporal: bool) -> Tensor:
    """(frames * h * w, 3) positions (px, py, pt) in raster order (frame, row, column).

    px = row * scale / sqrt(h w), py = column * scale / sqrt(h w), pt = frame (0 when
    `temporal` is False: shallow blocks see one frame at a time). float64.
    """
    h, w = grid
    step = scale / math.sqrt(h * w)
    t, r, s = torch.meshgrid(
        torch.arange(frames, dtype=torch.float64),
        torch.arange(h, dtype=torch.float64),
        torch.arange(w, dtype=torch.float64),
        indexing="ij",
    )
    pt = t if temporal else torch.zeros_like(t)
    return torch.stack([r * step, s * step, pt], dim=-1).reshape(-1, 3)


def text_positions(length: int, scale: float) -> Tensor:
    """(length, 3) positions of text tokens: px = py = 0, pt = k * scale / length."""
    pos = torch.zeros(length, 3, dtype=torch.float64)
    if length:
        pos[:, 2] = torch.arange(length, dtype=torch.float64) * scale / length
    return pos


def rope_frequencies(head_dim: int) -> tuple[Tensor, Tensor]:
    """Spatial frequencies (shared by x and y) and the 8 time frequencies, float64."""
    half = head_dim // 2
    spatial = half - TIME_FREQS
    f_xy = 1.0 / 10000 ** (torch.arange(0, spatial, 2, dtype=torch.float64) / spatial)
    f_t = 1.0 / 10000 ** (torch.arange(TIME_FREQS, dtype=torch.float64) / TIME_FREQS)
    return f_xy, f_t


@functools.lru_cache(maxsize=64)
def rope_table(
    text_len: int,
    frames: int,
    grid: tuple[int, int],
    scale: float,
    temporal: bool,
    head_dim: int,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """cos, sin tables (text_len + frames * h * w, head_dim) for sequence slots.

    Slot j of a (possibly reversed, start-token shifted) sequence gets row j, whatever
    token sits there: the reference's behaviour, which its weights were trained with.
    Computed in `dtype` (the reference computes angles in the model's precision).
    """
    pos = torch.cat([text_positions(text_len, scale), video_positions(frames, grid, scale, temporal)])
    f_xy, f_t = rope_frequencies(head_dim)
    pos, f_xy, f_t = pos.to(dtype), f_xy.to(dtype), f_t.to(dtype)
    angles = torch.cat([pos[:, :1] * f_xy, pos[:, 1:2] * f_xy, pos[:, 2:] * f_t], dim=-1)
    angles = angles.repeat_interleave(2, dim=-1)  # (a0, a0, a1, a1, ...)
    return angles.cos().to(device), angles.sin().to(device)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate adjacent pairs: x: (B, heads, L, D); cos, sin: (L, D), each angle twice.

    Pair (x0, x1) becomes (x0 cos - x1 sin, x1 cos + x0 sin): one complex product in
    float32 / float64 (about 10x faster on CPU than the real form, kept for other dtypes).
    """
    if x.dtype in (torch.float32, torch.float64):
        turn = torch.complex(cos[..., ::2], sin[..., ::2])
        pairs = torch.view_as_complex(x.unflatten(-1, (-1, 2)).contiguous())
        return torch.view_as_real(pairs * turn).flatten(-2)
    pairs = x.unflatten(-1, (-1, 2))
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return x * cos + rotated * sin


# ---------------------------------------------------------------------------- layers
def zero_linear(d_in: int, d_out: int) -> nn.Linear:
    """A linear layer that starts at zero: whatever it feeds is unchanged until it learns."""
    layer = nn.Linear(d_in, d_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class RMSNorm(nn.Module):
    """h * rsqrt(mean(h^2) + eps) * (1 + weight), in at least float32."""

    def __init__(self, width: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(width))
        self.eps = eps

    def forward(self, h: Tensor) -> Tensor:
        dtype = torch.promote_types(h.dtype, torch.float32)
        hf = h.to(dtype)
        out = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (out * (1 + self.weight.to(dtype))).to(h.dtype)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool) -> Tensor:
    """Scaled dot-product attention; q: (B, heads, Lq, D), k, v: (B, heads, Lk, D).

    `causal` aligns the last query with the last key (queries are the newest slots);
    `mask` (Lq, Lk) bool, True = visible, overrides it. flash-attn is used on CUDA in
    half precision when installed; it aligns causal masks the same way.
    """
    if (
        flash_attn_func is not None
        and q.is_cuda
        and mask is None
        and q.dtype in (torch.float16, torch.bfloat16)
    ):
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=causal)
        return out.transpose(1, 2)
    lq, lk = q.shape[-2], k.shape[-2]
    if mask is None and causal and lq > 1:
        if lq == lk:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class SelfAttention(nn.Module):
    """Causal multi-head self-attention with rotary positions."""

    def __init__(self, width: int, head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        self.norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(
        self,
        h: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | None,
        cache: KVCache | None,
        layer: int,
    ) -> Tensor:
        # h: (B, L, width); cos/sin: rows of the new slots
        q, k, v = rearrange(
            self.qkv(self.norm(h)), "b l (three n d) -> three b n l d", three=3, d=self.head_dim
        )
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:  # keys are cached after rotation: a slot's angle never changes
            k, v = cache.write(layer, k, v)
        out = attention(q, k, v, mask, causal=True)
        return self.proj(rearrange(out, "b n l d -> b l (n d)"))


class MLP(nn.Module):
    def __init__(self, width: int, ratio: int = 4):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, ratio * width)
        self.down = nn.Linear(ratio * width, width)

    def forward(self, h: Tensor) -> Tensor:
        return self.down(F.gelu(self.up(self.norm(h))))


class Layer(nn.Module):
    def __init__(self, width: int, head_dim: int):
        super().__init__()
        self.attn = SelfAttention(width, head_dim)
        self.mlp = MLP(width)

    def forward(self, h, cos, sin, mask, cache, layer):
        h = h + self.attn(h, cos, sin, mask, cache, layer)
        return h + self.mlp(h)


class Transformer(nn.Module):
    """A stack of pre-norm layers and a final RMSNorm.

    With a `cache`, `h` holds the newest slots only; their keys and values are written
    after the cached ones and `cache.length` advances by `h.shape[1]`.
    """

    def __init__(self, width: int, depth: int, head_dim: int):
        super().__init__()
        self.layers = nn.ModuleList(Layer(width, head_dim) for _ in range(depth))
        self.final_norm = RMSNorm(width)

    @property
    def depth(self) -> int:
        return len(self.layers)

    def forward(
        self,
        h: Tensor,
        cos: Tensor,
        sin: Tensor,
        cache: KVCache | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, mask, cache, i)
        if cache is not None:
            cache.advance(h.shape[1])
        return self.final_norm(h)
