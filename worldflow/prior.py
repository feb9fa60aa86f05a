"""The latent prior: each frame's latent drawn given the pixels of the frames before it.

Without it a frame's latent tokens z (the deep block's output) are scored and drawn as
N(0, I). `ModelConfig.prior_frames = K > 0` makes the prior of frame t a Gaussian whose
mean and scale per token and channel come from what came before:

    m, log s = net(pixels of frames t-1 .. t-K at the token's place, frame t-1's pixels
                   at the places left and right of it, the frame's condition, the place)
    eps = (z - m) / s ~ N(0, I),    log|det| = -sum log s

It reads only earlier frames, so it is one more affine flow step, exactly invertible
(z = m + s eps) and needs no iteration. A frame without earlier frames (a video's first)
reads zeros with a 0 flag where a frame is missing. The last layer starts at zero: at init
the prior is N(0, I) and a model that gains one scores and samples as before.

Why pixels and not latents: a frame-independent flow's latents are a sharp function of
each frame's noise, and a net reading them memorises it; the earlier frames' pixels say
what the next frame holds (which patches are empty, where the cart is) and generalise.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .nn import zero_linear


class LatentPrior(nn.Module):
    """m, log s of each frame's latent tokens (B, F, N, c) from its past.

    `grid` (rows, columns) of tokens, `token_dim` c, `frames` K earlier frames read,
    `width` of the network, `cond_dim` width of the frame's condition embedding (0: none),
    `max_log_scale`: log s is soft-clipped to +-max_log_scale.
    """

    def __init__(self, grid: tuple[int, int], token_dim: int, frames: int, width: int,
                 cond_dim: int = 0, max_log_scale: float = 2.0):
        super().__init__()
        self.grid, self.frames, self.max_log_scale = tuple(grid), frames, max_log_scale
        per_frame = token_dim + 1  # a token and its "frame present" flag
        self.proj_in = nn.Linear((frames + 2) * per_frame, width)
        self.place = nn.Parameter(torch.zeros(grid[0] * grid[1], width))
        self.proj_cond = nn.Linear(cond_dim, width, bias=False) if cond_dim else None
        self.mlp = nn.Sequential(nn.GELU(), nn.Linear(width, width), nn.GELU())
        self.proj_out = zero_linear(width, 2 * token_dim)

    def features(self, past: Tensor) -> Tensor:
        """What frames read of their past: `past` (B, F, N, K (c + 1)), the tokens at each
        token's place in the K frames before it (`worldflow.model.history_features`, the
        nearest first), followed by the previous frame's tokens left and right of it in its
        row (zeros past the edge): (B, F, N, (K + 2)(c + 1))."""
        rows, cols = self.grid
        last = past[..., : past.shape[-1] // self.frames].unflatten(2, (rows, cols))  # (B, F, h, w, c + 1)
        pad = torch.zeros_like(last[:, :, :, :1])
        left = torch.cat([pad, last[:, :, :, :-1]], dim=3).flatten(2, 3)
        right = torch.cat([last[:, :, :, 1:], pad], dim=3).flatten(2, 3)
        return torch.cat([past, left, right], dim=-1)

    def forward(self, features: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """features (B, F, N, in), cond (B, F, cond_dim) -> m, log s, (B, F, N, c) each."""
        h = self.proj_in(features) + self.place
        if self.proj_cond is not None and cond is not None:
            h = h + self.proj_cond(cond)[:, :, None]
        m, log_s = self.proj_out(self.mlp(h)).chunk(2, dim=-1)
        return m, self.max_log_scale * torch.tanh(log_s / self.max_log_scale)
