"""`VideoState`: a video being generated or observed, over the deep block's KV cache.

The caller owns the state and passes it in; nothing else remembers a video. Frames enter
the window in one parallel pass (`append_frames`: context, observed real frames) or one at
a time by inversion (`worldflow.generation.next_frame`). Long videos: when the window holds
`max_frames` frames, `slide_window` clears the cache, re-runs the text and re-encodes the
last `context_frames` frames in one pass as the start of a new window (positions
restart), as in STARFlow-V (reference section 9).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .kv_cache import KVCache


@dataclass
class VideoState:
    """Everything needed to continue a video; owned by the caller.

    With guidance the deep cache and `text` hold 2B items (conditional half first).
    """

    cache: KVCache  # deep block: text prefix + the frames in the window
    tokens: Tensor  # (B, F, N, c) deep-block inputs of the window's frames (deep order)
    cond: Tensor | None  # (B, F, width) condition embeddings of those frames
    text: Tensor | None  # (B or 2B, S, text_dim)
    guidance: float
    prev_affine: list[Tensor]  # per block (shallow ..., deep): the last frame's [a | b] (B, 0|1, N, 2c)
    recent: Tensor  # (B, G, C, H, W) the latest noisy frames (the denoiser's window)
    frame_index: int = 0  # frames so far

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def frames_in_window(self) -> int:
        return self.tokens.shape[1]

    def _map(self, fn_batch: Callable[[Tensor], Tensor]) -> VideoState:
        doubled = self.guidance > 0

        def halves(t: Tensor) -> Tensor:  # apply to both guidance halves alike
            if not doubled:
                return fn_batch(t)
            return torch.cat([fn_batch(h) for h in t.chunk(2)])

        cache = KVCache(halves(self.cache.keys), halves(self.cache.values), self.cache.length)
        return replace(
            self,
            cache=cache,
            tokens=fn_batch(self.tokens),
            cond=None if self.cond is None else fn_batch(self.cond),
            text=None if self.text is None else halves(self.text),
            prev_affine=[fn_batch(p) for p in self.prev_affine],
            recent=fn_batch(self.recent),
        )

    def select(self, index) -> VideoState:
        """The state of a subset or reordering of the batch (index: tensor, list or slice)."""
        return self._map(lambda t: t[index])

    def expand(self, repeats: int) -> VideoState:
        """Each item repeated `repeats` times, consecutively (planning over candidates)."""
        return self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def clone(self) -> VideoState:
        return self._map(lambda t: t.clone())

    @staticmethod
    def cat(states: list[VideoState]) -> VideoState:
        """States concatenated along the batch (the inverse of `select` over a split).

        They must hold the same number of frames in their windows (one cache length), the
        same guidance and equally many denoiser frames. `frame_index`, one counter for the
        batch, becomes the largest of theirs.
        """
        first = states[0]
        layout = {(s.cache.length, s.frames_in_window, s.recent.shape[1], s.guidance) for s in states}
        if len(layout) != 1:
            raise ValueError(
                f"states: expected equal (cache length, frames in window, recent frames, guidance), "
                f"got {sorted(layout)}"
            )

        def halves(ts: list[Tensor]) -> Tensor:  # keep conditional halves before unconditional ones
            if first.guidance <= 0:
                return torch.cat(ts)
            parts = [t.chunk(2) for t in ts]
            return torch.cat([p[0] for p in parts] + [p[1] for p in parts])

        return replace(
            first,
            cache=KVCache(
                halves([s.cache.keys for s in states]), halves([s.cache.values for s in states]),
                first.cache.length,
            ),
            tokens=torch.cat([s.tokens for s in states]),
            cond=None if first.cond is None else torch.cat([s.cond for s in states]),
            text=None if first.text is None else halves([s.text for s in states]),
            prev_affine=[torch.cat(p) for p in zip(*(s.prev_affine for s in states))],
            recent=torch.cat([s.recent for s in states]),
            frame_index=max(s.frame_index for s in states),
        )


def new_state(model, batch: int, text: Tensor | None, guidance: float, like: Tensor) -> VideoState:
    """An empty video: the text prefix (and its null twin with guidance) in the cache."""
    cfg = model.config
    n, c = cfg.tokens_per_frame, cfg.token_dim
    text_len = 0 if text is None else text.shape[1]
    items = 2 * batch if guidance > 0 else batch
    cache = model.deep_block.new_cache(items, text_len + cfg.max_frames * n, like)
    if text is not None:
        cos, sin = model.deep_rope(0, text_len)
        model.deep_block.prefill(text, cos[:text_len], sin[:text_len], cache)
    width = cfg.deep_width
    return VideoState(
        cache=cache,
        tokens=like.new_zeros(batch, 0, n, c),
        cond=like.new_zeros(batch, 0, width) if model.actions is not None else None,
        text=text,
        guidance=guidance,
        prev_affine=[like.new_zeros(batch, 0, n, 2 * c) for _ in range(cfg.num_blocks)],
        recent=like.new_zeros(batch, 0, cfg.channels, *cfg.frame_size),
    )


def append_frames(model, state: VideoState, tokens: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
    """Encode known frames (deep-block inputs, deep order, (B, F', N, c)) into the window
    in one parallel pass — context frames, observed real frames, re-encoded history.

    Returns the deep block's latents and log-scales for them, (B, F', N, c) each, so
    that the caller can score the frames: v = (u - b) / a.
    """
    if tokens.shape[1] == 0:
        return tokens, tokens
    cfg = model.config
    n = cfg.tokens_per_frame
    f0, f1 = state.frames_in_window, state.frames_in_window + tokens.shape[1]
    text_len = 0 if state.text is None else state.text.shape[1]
    seq = tokens.flatten(1, 2)
    if cond is not None and not f0:  # a window's first frame reads no action (as the full pass)
        cond = torch.cat([model.actions.null.expand_as(cond[:, :1]), cond[:, 1:]], dim=1)
    inputs = model.deep_block.shifted(seq, state.tokens[:, -1, -1:] if f0 else None)
    cos, sin = model.deep_rope(f1, text_len)
    rows = slice(text_len + f0 * n, text_len + f1 * n)
    slot_cond = None if cond is None else cond.repeat_interleave(n, dim=1)
    b, a = model.deep_block.inverse(
        torch.zeros_like(seq), inputs, cos[rows], sin[rows], state.cache, slot_cond, state.guidance
    )
    state.tokens = torch.cat([state.tokens, tokens], dim=1)
    if state.cond is not None:
        state.cond = torch.cat([state.cond, cond], dim=1)
    return ((seq - b) / a).view_as(tokens), a.log().view_as(tokens)


def slide_window(model, state: VideoState) -> None:
    """Window full: restart it from the last `context_frames` frames (reference section 9)."""
    keep = model.config.context_frames
    tokens = state.tokens[:, state.frames_in_window - keep :]
    # the first kept frame begins a new window: append_frames gives it the null action
    cond = None if state.cond is None else state.cond[:, state.frames_in_window - keep :]
    text_len = 0 if state.text is None else state.text.shape[1]
    state.cache.clear()
    if state.text is not None:
        cos, sin = model.deep_rope(0, text_len)
        model.deep_block.prefill(state.text, cos[:text_len], sin[:text_len], state.cache)
    state.tokens = tokens[:, :0]
    if state.cond is not None:
        state.cond = cond[:, :0]
    append_frames(model, state, tokens, cond)
