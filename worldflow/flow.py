"""One affine autoregressive flow block (TARFlow), forward and inverse side by side.

Data to noise, for a token sequence u_0 .. u_{L-1} (already in the block's order):

    inputs = [sos, u_0, ..., u_{L-2}]          (shift right with the start token)
    a_j, b_j = net(inputs[: j + 1], text, cond)  (causal Transformer)
    v_j = (u_j - b_j) / a_j,   log|det| = -sum log a_j

`a = softplus(a_raw + log(e - 1))` so that a zero network output is the identity, and
the network output is soft-clipped to +-soft_clip (reference section 3). Because a_j, b_j
see only u_<j, the inverse u_j = v_j * a_j + b_j can be solved token by token, or in
parallel by fixed-point (Jacobi) iteration — see `worldflow.jacobi`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .kv_cache import KVCache
from .nn import Transformer, zero_linear

LOG_E_MINUS_1 = math.log(math.e - 1)


def guided_scale_shift(a_c: Tensor, b_c: Tensor, a_u: Tensor, b_u: Tensor, weight: float):
    """Classifier-free guidance of an affine step (reference section 6).

    r = min(a_c / a_u, 1)^2;  a = a_c / sqrt(1 + w - w r);  b = ((1 + w) b_c - w r b_u) / (1 + w - w r)
    """
    r = torch.clamp(a_c / a_u, max=1.0) ** 2
    denom = 1 + weight - weight * r
    return a_c / denom.sqrt(), ((1 + weight) * b_c - weight * r * b_u) / denom


class FlowBlock(nn.Module):
    """Affine autoregressive flow over `(B, L, token_dim)` token sequences.

    `text_dim > 0` prepends projected text embeddings (deep block); `cond` is an additive
    per-slot embedding (the actions of the deep block). Neither enters the affine map
    itself, only the network that produces its scale and shift, so the block stays
    exactly invertible.

    """

    def __init__(
        self,
        token_dim: int,
        width: int,
        depth: int,
        head_dim: int,
        text_dim: int = 0,
        soft_clip: float = 4.0,
    ):
        super().__init__()
        self.soft_clip = soft_clip
        self.sos = nn.Parameter(torch.randn(1, 1, token_dim) * 0.02)
        self.proj_in = nn.Linear(token_dim, width)
        self.proj_txt = nn.Linear(text_dim, width) if text_dim else None
        self.transformer = Transformer(width, depth, head_dim)
        self.proj_out = zero_linear(width, 2 * token_dim)  # start as the identity map (TARFlow)

    @property
    def heads(self) -> int:
        return self.proj_in.out_features // self.transformer.layers[0].attn.head_dim

    def new_cache(self, batch: int, capacity: int, like: Tensor) -> KVCache:
        head_dim = self.transformer.layers[0].attn.head_dim
        return KVCache.empty(
            batch, self.transformer.depth, self.heads, capacity, head_dim, like.dtype, like.device
        )

    def _scale_shift(self, h: Tensor) -> tuple[Tensor, Tensor]:
        out = self.proj_out(h)
        out = self.soft_clip * torch.tanh(out / self.soft_clip)
        a_raw, b = out.chunk(2, dim=-1)
        return F.softplus(a_raw + LOG_E_MINUS_1), b

    def start_token(self, batch: int, like: Tensor) -> Tensor:
        """The network input of the first slot, (batch, 1, c)."""
        return self.sos.expand(batch, 1, -1).to(like.dtype)

    def first_input(self, previous: Tensor | None, like: Tensor) -> Tensor:
        """The network input of a frame's first slot, (batch, 1, c): the previous frame's
        last token `previous`, or the start token at a video's start."""
        return self.start_token(like.shape[0], like) if previous is None else previous

    def shifted(self, u: Tensor, previous: Tensor | None = None) -> Tensor:
        """The network inputs for a sequence starting at a frame boundary:
        [first_input(previous), u_0, ..., u_{L-2}]."""
        return torch.cat([self.first_input(previous, u), u[:, :-1]], dim=1)

    def slot_inputs(self, inputs: Tensor, cond: Tensor | None) -> Tensor:
        """The network's input stream (B, L, width): shifted tokens plus the slots'
        condition embeddings where given."""
        h = self.proj_in(inputs)
        return h if cond is None else h + cond

    # ------------------------------------------------------------------ data -> noise
    def forward(
        self,
        u: Tensor,
        cos: Tensor,
        sin: Tensor,
        text: Tensor | None = None,
        cond: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """u: (B, L, c) -> v: (B, L, c), elementwise log-det (B, L, c). No cache.

        cos/sin cover the text slots then the L token slots; cond: (B, L, width).
        """
        h = self.slot_inputs(self.shifted(u), cond)
        text_len = 0
        if text is not None:
            text_len = text.shape[1]
            h = torch.cat([self.proj_txt(text), h], dim=1)
        h = self.transformer(h, cos, sin)[:, text_len:]
        a, b = self._scale_shift(h)
        return (u - b) / a, -torch.log(a)

    # ------------------------------------------------------------------ noise -> data
    def inverse(
        self,
        v: Tensor,
        inputs: Tensor,
        cos: Tensor,
        sin: Tensor,
        cache: KVCache,
        cond: Tensor | None = None,
        guidance: float = 0.0,
    ) -> tuple[Tensor, Tensor]:
        """One inversion step of a chunk: u = v * a + b, with a, b computed from `inputs`.

        v, inputs: (B, m, c) — inputs are the chunk's shifted tokens (exact in sequential
        inversion, a guess in Jacobi). The chunk's keys are appended to `cache` (rewind to
        reject them). With `guidance > 0` the cache holds 2B items, the conditional half
        first; both halves get the same input and the guided a, b. Returns u and a.
        """
        h = self.slot_inputs(inputs, cond)
        guided = guidance > 0
        if guided:
            h = torch.cat([h, h])
        a, b = self._scale_shift(self.transformer(h, cos, sin, cache))
        if guided:
            (a_c, a_u), (b_c, b_u) = a.chunk(2), b.chunk(2)
            a, b = guided_scale_shift(a_c, b_c, a_u, b_u, guidance)
        return v * a + b, a

    def prefill(self, text: Tensor, cos: Tensor, sin: Tensor, cache: KVCache) -> None:
        """Run the text prefix (B, S, text_dim) into the cache."""
        self.transformer(self.proj_txt(text), cos, sin, cache)
