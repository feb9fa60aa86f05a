"""Inverting the flow, frame by frame: sequential and video-aware block Jacobi.

A video is produced one frame at a time. For frame t the deep block's N tokens are
solved over its KV cache (text prefix + the frames in the attention window), then the
frame's shallow blocks are inverted, each over a fresh per-frame cache.

Both samplers solve u_j = v_j * a_j(u_<j) + b_j(u_<j) for a chunk of tokens:
- `sequential`: token by token, one cached network call per token (the reference);
- `jacobi`: all tokens of a chunk in parallel, iterated to the fixed point. The first
  guess is video-aware: each block's scale and shift at the same positions of the
  previous frame applied to this frame's latents, u = v * a_prev + b_prev (the noise
  itself for a video's first frame). A token has settled when its latest update would
  move its latent by `mean(((new - old) / a)^2) <= threshold` (latent units, where
  z ~ N(0, I): a data-space test is fooled by small scales a). Settled leading tokens
  are final and not recomputed; each item of the batch stops on its own once all its
  tokens settle. A chunk of m tokens is exact after m iterations, the default cap.
  Rejected iterates are rewound from the cache.

Long videos: when the window holds `max_frames` frames, the cache is cleared, the text
re-run and the last `context_frames` frames re-encoded in one pass as the start of a new
window (positions restart), as in STARFlow-V (reference section 9).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .config import SamplerConfig
from .kv_cache import KVCache

Step = Callable[[int, int, Tensor], tuple[Tensor, Tensor]]  # (lo, hi, inputs) -> (u, a)


# ------------------------------------------------------------------------- solvers
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


# ------------------------------------------------------------------------- state
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


def next_frame(
    model,
    state: VideoState,
    v: Tensor,
    cond: Tensor | None,
    sampler: SamplerConfig,
) -> tuple[Tensor, Tensor, Tensor]:
    """Invert one frame from its latent tokens v (B, N, c), natural order, and push it.

    cond: (B, width) the frame's condition embedding (the deep block reads the null one
    at a window's first frame, as the full pass does). Returns the frame x (B, C, H, W) —
    the flow's sample, before any denoising — its NLL in model units (B,) and the network
    calls per item (B,) summed over blocks.
    """
    cfg = model.config
    n = cfg.tokens_per_frame
    if state.frames_in_window == cfg.max_frames:
        slide_window(model, state)
    f = state.frames_in_window
    text_len = 0 if state.text is None else state.text.shape[1]
    log_scale = v.new_zeros(v.shape[0])
    z_sq = v.pow(2).sum(dim=(1, 2))
    calls = v.new_zeros(v.shape[0], dtype=torch.long)

    # deep block, over the window's cache
    cos, sin = model.deep_rope(f + 1, text_len)
    base = text_len + f * n
    deep_cond = cond if cond is None or f else model.actions.null.expand_as(cond)
    slot_cond = None if cond is None else deep_cond[:, None].expand(-1, n, -1)
    v_deep = model.deep_order(v)
    first = model.deep_block.first_input(state.tokens[:, -1, -1:] if f else None, v)
    init = affine_guess(state.prev_affine[-1], v_deep, state.tokens[:, -1] if f else v_deep)

    def deep_step(lo: int, hi: int, inputs: Tensor) -> tuple[Tensor, Tensor]:
        c = None if slot_cond is None else slot_cond[:, lo:hi]
        rows = slice(base + lo, base + hi)
        return model.deep_block.inverse(
            v_deep[:, lo:hi], inputs, cos[rows], sin[rows], state.cache, c, state.guidance
        )

    u_deep, a, c = _solve_frame(deep_step, first, init, state.cache, sampler, n)
    calls += c
    state.prev_affine[-1] = pack_affine(u_deep, v_deep, a)[:, None]
    log_scale += a.log().sum(dim=(1, 2))
    state.tokens = torch.cat([state.tokens, u_deep[:, None]], dim=1)
    if state.cond is not None:
        state.cond = torch.cat([state.cond, deep_cond[:, None]], dim=1)

    # shallow blocks, last to first, each over a fresh per-frame cache
    u = model.deep_order(u_deep)
    rope = model.shallow_rope()
    for i in reversed(range(len(model.shallow_blocks))):
        block, flip = model.shallow_blocks[i], model.flips(i)
        vi = u.flip(1) if flip else u
        init = affine_guess(state.prev_affine[i], vi, vi)
        ui, a, c = invert_frame_block(block, vi, rope, sampler, init)
        log_scale += a.log().sum(dim=(1, 2))
        calls += c
        state.prev_affine[i] = pack_affine(ui, vi, a)[:, None]
        u = ui.flip(1) if flip else ui
    x = model.codec.from_tokens(u[:, None])[:, 0]
    nll = 0.5 * z_sq + 0.5 * cfg.dims_per_frame * model.LOG_2PI + log_scale
    state.recent = torch.cat([state.recent, x[:, None]], dim=1)[:, -cfg.denoiser_window :]  # denoiser window
    state.frame_index += 1
    return x, nll, calls


def invert_frame_block(
    block, v: Tensor, rope: tuple[Tensor, Tensor], sampler: SamplerConfig, init: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Invert a shallow block over one frame's tokens alone: v (B, N, c) in the block's
    order, over a fresh cache, from the Jacobi guess `init`. Returns u, a, calls."""
    n = v.shape[1]
    cos, sin = rope
    cache = block.new_cache(v.shape[0], n, v)

    def step(lo: int, hi: int, inputs: Tensor) -> tuple[Tensor, Tensor]:
        return block.inverse(v[:, lo:hi], inputs, cos[lo:hi], sin[lo:hi], cache)

    first = block.start_token(v.shape[0], v)
    return _solve_frame(step, first, init, cache, sampler, n)


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


def _solve_frame(step: Step, first: Tensor, init: Tensor, cache: KVCache, sampler: SamplerConfig, n: int):
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
