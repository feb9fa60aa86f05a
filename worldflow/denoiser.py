"""The light causal denoiser and its flow-score-matching target (reference section 7).

A model trained on `x + sigma * eps` samples noisy frames. The denoiser predicts
`sigma * grad_x NLL(x)` — the flow's own score, scaled — so one step
`x - sigma * prediction = x + sigma^2 * grad_x log p(x)` (Tweedie) cleans a sample.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .nn import Transformer, zero_linear


def denoiser_mask(text_len: int, frames: int, tokens: int, window: int, lookahead: int, device=None):
    """(S + T N, S + T N) bool visibility, True = may attend.

    Key k is visible to query q iff k is text, or its frame f(k) satisfies
    f(q) + A - 1 - G <= f(k) <= f(q) + A - 1 with A = lookahead + 1, G = window: a frame
    sees itself, `lookahead` future frames and `window - 1 - lookahead` past frames.
    Text queries see the text and the first A frames (the reference's formula).
    """
    size = text_len + frames * tokens
    j = torch.arange(size, device=device)
    frame = torch.div(j - text_len, tokens, rounding_mode="floor")  # text slots: negative
    q_frame = torch.div((j - text_len).clamp_min(0), tokens, rounding_mode="floor")
    a = lookahead + 1
    lower = frame[:, None] + a - 1 - window <= frame[None, :]
    upper = frame[None, :] <= q_frame[:, None] + a - 1
    return (j[None, :] < text_len) | (lower & upper)


class Denoiser(nn.Module):
    """Transformer over all frames' tokens: full attention within a frame, a window of
    past frames, `lookahead` future ones (0 in environments: strictly causal).

    tokens: (B, T, N, c) -> prediction (B, T, N, c) of sigma * grad NLL; no soft clip.
    With `sigma` given the network predicts the clean tokens x_hat instead and the
    prediction is (tokens - x_hat) / sigma: the noise passes through exactly, and the
    network only has to model clean content (one step then returns x_hat itself).
    """

    def __init__(
        self,
        token_dim: int,
        width: int,
        depth: int,
        head_dim: int,
        window: int,
        lookahead: int = 0,
        text_dim: int = 0,
        sigma: float | None = None,
    ):
        super().__init__()
        self.window, self.lookahead, self.sigma = window, lookahead, sigma
        self.proj_in = nn.Linear(token_dim, width)
        self.proj_txt = nn.Linear(text_dim, width) if text_dim else None
        self.transformer = Transformer(width, depth, head_dim)
        self.proj_out = zero_linear(width, token_dim)

    def forward(self, tokens: Tensor, cos: Tensor, sin: Tensor, text: Tensor | None = None) -> Tensor:
        b, t, n, _ = tokens.shape
        h = self.proj_in(tokens.flatten(1, 2))
        text_len = 0
        if text is not None and self.proj_txt is not None:
            text_len = text.shape[1]
            h = torch.cat([self.proj_txt(text), h], dim=1)
        mask = denoiser_mask(text_len, t, n, self.window, self.lookahead, h.device)
        h = self.transformer(h, cos, sin, mask=mask)[:, text_len:]
        out = self.proj_out(h).view(b, t, n, -1)
        return out if self.sigma is None else (tokens - out) / self.sigma


def score_target(nll_per_dim: Tensor, x: Tensor, sigma: float, retain_graph: bool = False) -> Tensor:
    """Flow-score-matching target: sigma * d(total NLL of each item)/dx, detached.

    `nll_per_dim` is the batch-mean per-dimension loss of the reference (section 4); its
    gradient times `x.numel()` is the gradient of each item's total NLL in nats.
    """
    (grad,) = torch.autograd.grad(nll_per_dim, x, retain_graph=retain_graph)
    return (grad * x.numel() * sigma).detach()
