"""The latent prior: a frame's latent drawn given the pixels of the frames before it.

Without it a frame's latent tokens z (the deep block's output) are scored and drawn as
N(0, I). `ModelConfig.prior_depth > 0` adds one more affine autoregressive flow block
(TARFlow, `worldflow.flow.FlowBlock`) over each frame's latent tokens alone, in natural
order, after the deep block:

    a_j, b_j = net(z_0 .. z_{j-1} of the frame, what token j reads of the past, action)
    eps_j = (z_j - b_j) / a_j ~ N(0, I),    log|det| = -sum log a_j

What token j reads of the past (`prior_frames = K > 0`): the pixels at its place in the K
frames before it, and frame t-1's pixels left and right of it, as the block's per-slot
history; and the action that led to the frame, as the block's condition. It reads only
earlier frames and earlier tokens of its own frame, so it stays exactly invertible, by
the same sequential or Jacobi solvers as the shallow blocks. A frame without earlier
frames (a video's first) reads zeros with a 0 flag where a frame is missing.
`prior_frames = 0` gives the same block with nothing of the past: a frame-independent
model of the same size, the fair baseline of one that reads the past.

Its output projection and history projection start at zero: at init the prior is
N(0, I), and a model that gains one scores and samples exactly as before, so it can be
trained alone on a frozen flow (`train_parts=[prior]`).

Why pixels and not latents: a frame-independent flow's latents are a sharp function of
each frame's noise, and a net reading them memorises it; the earlier frames' pixels say
what the next frame holds (which patches are empty, where the cart is) and generalise.
Why autoregressive over the frame's tokens: a prior that drew each latent number on its
own (an earlier version) scattered the cart at temperature 1; drawing token by token, each
given the ones before, was meant to make a frame's numbers agree. On CartPole's
frame-independent flow it did not mend the dreams (README, sixth attempt): it learns where
the past says a patch is empty, not where the cart goes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .flow import FlowBlock


class LatentPrior(nn.Module):
    """A flow block over each frame's latent tokens (B F, N, c), reading the frame's past.

    `grid` (rows, columns) of tokens, `token_dim` c, `frames` K earlier frames read (0:
    none), `width`, `depth`, `head_dim` of the block's Transformer, `cond_dim` width of
    the frame's condition embedding (0: none; unused without earlier frames).
    """

    def __init__(self, grid: tuple[int, int], token_dim: int, frames: int, width: int, depth: int,
                 head_dim: int, cond_dim: int = 0, soft_clip: float = 4.0):
        super().__init__()
        self.grid, self.frames = tuple(grid), frames
        history_dim = (frames + 2) * (token_dim + 1) if frames else 0  # + left, right; + flags
        self.block = FlowBlock(token_dim, width, depth, head_dim, soft_clip=soft_clip,
                               history_dim=history_dim)
        self.proj_cond = nn.Linear(cond_dim, width, bias=False) if cond_dim and frames else None

    def features(self, past: Tensor) -> Tensor:
        """What frames read of their past: `past` (B, F, N, K (c + 1)), the tokens at each
        token's place in the K frames before it (`worldflow.model.history_features`, the
        nearest first), followed by the previous frame's tokens left and right of it in its
        row (zeros past the edge): (B F, N, (K + 2)(c + 1))."""
        rows, cols = self.grid
        last = past[..., : past.shape[-1] // self.frames].unflatten(2, (rows, cols))  # (B, F, h, w, c + 1)
        pad = torch.zeros_like(last[:, :, :, :1])
        left = torch.cat([pad, last[:, :, :, :-1]], dim=3).flatten(2, 3)
        right = torch.cat([last[:, :, :, 1:], pad], dim=3).flatten(2, 3)
        return torch.cat([past, left, right], dim=-1).flatten(0, 1)

    def slot_cond(self, cond: Tensor | None, tokens: int) -> Tensor | None:
        """The frames' condition embeddings (B, F, cond_dim) -> per slot (B F, N, width)."""
        if self.proj_cond is None or cond is None:
            return None
        return self.proj_cond(cond).flatten(0, 1)[:, None].expand(-1, tokens, -1)
