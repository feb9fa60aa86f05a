"""Generation: the flow inverted frame by frame over the KV cache, then denoised.

For frame t the deep block's N tokens are solved over its KV cache (text prefix + the
frames in the attention window, `worldflow.video_state`), by sequential or video-aware
block-Jacobi iteration (`worldflow.jacobi`); then the frame's shallow blocks are inverted
last to first, each over a fresh per-frame cache; then the causal denoiser cleans the
frame in one step. `GenerationMixin` gives `WorldFlow` `start`, `push_context`, `step`,
`decode` and `generate`; `next_frame` is one frame's inversion.

Denoising (`denoise=`, default "auto"): the model is a density of noised frames
`x + sigma * eps`, so a sample at temperature > 0 carries that noise and the one-step
Tweedie correction `x - sigma^2 * grad NLL` removes it. At temperature 0 the frame is the
flow's mode path (z = 0): each affine step outputs its conditional mean given what came
before, which already estimates the clean frame, and the score there is near zero; the
learned denoiser adds only its own error (`benchmarks/consistency.py` on the shipped
CartPole model: open-loop horizon-1 PSNR 43.1 dB raw vs 42.9 dB denoised, and a closed-loop
1,000-frame dream drifts up to 0.014 levels below the darkest real frame with it and stays
in the real range without). "auto" is therefore the learned denoiser for samples and
none on the mode path; True / "learned", "exact" and False force a choice.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .codec import LOG_PIXEL_SCALE, frames_to_model, model_to_frames
from .config import SamplerConfig
from .errors import WorldFlowError
from .jacobi import affine_guess, pack_affine, solve_frame
from .likelihood import LOG_2PI
from .seeding import generator_from
from .video_state import VideoState, append_frames, new_state, slide_window


def denoising_at(denoise, temperature: float) -> bool | str:
    """The denoising a frame drawn at `temperature` gets (see the module docstring): "auto"
    is "learned" for temperature > 0 and False at 0; other choices are returned as given."""
    if not (isinstance(denoise, bool) or denoise in ("auto", "learned", "exact")):
        raise WorldFlowError(f"denoise: expected 'auto', True, False, 'learned' or 'exact', got {denoise!r}")
    if denoise == "auto":
        return "learned" if temperature > 0 else False
    return denoise


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

    u_deep, a, c = solve_frame(deep_step, first, init, state.cache, sampler, n)
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
    nll = 0.5 * z_sq + 0.5 * cfg.dims_per_frame * LOG_2PI + log_scale
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
    return solve_frame(step, first, init, cache, sampler, n)


class GenerationMixin:
    """Noise -> data methods of `WorldFlow` (see the module docstring)."""

    def start(
        self,
        batch_size: int = 1,
        context: Tensor | None = None,
        actions=None,
        prompt=None,
        guidance: float = 0.0,
        null_prompt=None,
        context_noise: bool = True,
        seed=None,
    ) -> VideoState:
        """A new video state, optionally continuing uint8 `context` frames (B, C, H, W, 3).

        Context frames are noised like training data (`context_noise`) and encoded in one
        parallel pass into the cache; `actions[:, t]` (t < C - 1) condition them. With
        `guidance > 0` the unconditional branch uses `null_prompt` (default: the prompt "").
        """
        if context is not None:
            context = self.check_frames(context, "context")
            batch_size = context.shape[0]
        text = self.encode_prompt(prompt, batch_size)
        if guidance > 0:
            if text is None:
                raise WorldFlowError("guidance: classifier-free guidance needs a text model; expected 0")
            null = self.encode_prompt([""] * batch_size if null_prompt is None else null_prompt, batch_size)
            text = torch.cat([text, null])
        state = new_state(self, batch_size, text, guidance, self.deep_block.sos)
        if context is not None:
            x = frames_to_model(context).to(self.device, self.dtype)
            if context_noise:
                gen = generator_from(seed, self.device)
                x = x + self.config.noise_std * torch.randn(
                    x.shape, generator=gen, device=self.device, dtype=x.dtype
                )
            actions = self.check_actions(actions, batch_size, x.shape[1], "actions")
            self.push_context(state, x, actions)
        return state

    def push_context(
        self, state: VideoState, x: Tensor, actions: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Encode known frames x (B, F, C, H, W) (model space) into the state in one pass.

        The first frame continues the state's video: its condition is `actions[:, 0]`
        when the state already has frames and F actions are given (else the null
        action); `actions[:, t]` conditions frame t + 1. Returns the frames' latents
        z (B, F, C, H, W) and NLLs (B, F) in nats, model units — exactly what a full
        `frame_nll` pass gives when the video fits the window.
        """
        cfg = self.config
        b, f = x.shape[:2]
        tokens = self.codec.to_tokens(x)
        outputs, _, maps = self._shallow_forward(tokens)
        log_scale = x.new_zeros(b, f)
        for i, (u, v, logdet) in enumerate(maps):
            affine = pack_affine(u, v, torch.exp(-logdet))  # (B F, N, 2c)
            state.prev_affine[i] = affine.unflatten(0, (b, f))[:, -1:]
            log_scale -= logdet.view(b, f, -1).sum(-1)
        tokens = outputs[-1]
        cond = None
        if self.actions is not None:
            if state.frames_in_window and actions is not None and actions.shape[1] == f:
                cond = self.actions.embed(actions)
            else:
                cond = self.actions.per_frame(actions, f, b)
        deep = self.deep_order(tokens)
        zs, done = [], 0
        while done < f:  # as in generation: slide the window only when it is full
            if state.frames_in_window == cfg.max_frames:
                slide_window(self, state)
            n = min(cfg.max_frames - state.frames_in_window, f - done)
            part = None if cond is None else cond[:, done : done + n]
            v, log_a = append_frames(self, state, deep[:, done : done + n], part)
            zs.append(v)
            log_scale[:, done : done + n] += log_a.sum(dim=(2, 3))
            done += n
        v = torch.cat(zs, dim=1)
        state.prev_affine[-1] = pack_affine(deep[:, -1], v[:, -1], log_a[:, -1].exp())[:, None]
        z = self.deep_order(v)
        nll = 0.5 * z.pow(2).sum(dim=(2, 3)) + 0.5 * cfg.dims_per_frame * LOG_2PI + log_scale
        state.recent = torch.cat([state.recent, x], dim=1)[:, -cfg.denoiser_window :]
        state.frame_index += f
        return self.codec.from_tokens(z), nll

    def step(
        self,
        state: VideoState,
        action=None,
        z: Tensor | None = None,
        temperature: float = 1.0,
        sampler: SamplerConfig | str = "jacobi",
        denoise: bool | str = "auto",
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict]:
        """Append one frame to `state`; returns it (B, C, H, W) in model space and info.

        `action` (B,) or (B, A) is the action taken after the latest frame (ignored for
        a video's first frame). `z` (B, N, c) gives the frame's latent tokens explicitly
        (then `generator` is unused and `temperature` only says what z is for "auto"
        denoising); by default z = temperature * eps. `denoise`: see the module docstring.
        info: nll (B,) nats per frame in pixel units of the flow's sample, iterations (B,)
        network calls per item, the raw sample `x_noisy`.
        """
        cfg = self.config
        sampler = SamplerConfig(name=sampler) if isinstance(sampler, str) else sampler
        b = state.batch_size
        if z is None:
            shape = (b, cfg.tokens_per_frame, cfg.token_dim)
            z = torch.randn(shape, generator=generator, device=self.device, dtype=self.dtype) * temperature
        cond = None
        if self.actions is not None:
            if state.frames_in_window == 0 or action is None:
                cond = self.actions.null.expand(b, -1)
            else:
                cond = self.actions.embed(torch.as_tensor(action, device=self.device))
        denoise = denoising_at(denoise, temperature)
        before = state.clone() if denoise == "exact" else None
        x, nll, calls = next_frame(self, state, z, cond, sampler)
        info = {"nll": nll + cfg.dims_per_frame * LOG_PIXEL_SCALE, "iterations": calls, "x_noisy": x}
        if denoise == "exact":
            x = self._exact_denoise_next(before, x, action)
        elif denoise:
            x = self.denoise_recent(state)
        return x, info

    def _exact_denoise_next(self, before: VideoState, x: Tensor, action) -> Tensor:
        """x + sigma^2 grad log p(x | history): the frame's own conditional score."""
        act = None
        if self.actions is not None and before.frames_in_window and action is not None:
            act = torch.as_tensor(action, device=self.device)[:, None]
        with torch.enable_grad():
            xg = x.detach()[:, None].requires_grad_(True)
            _, nll = self.push_context(before, xg, act)
            (grad,) = torch.autograd.grad(nll.sum(), xg)
        return x - self.config.noise_std**2 * grad[:, 0]

    def denoise_recent(self, state: VideoState) -> Tensor:
        """Learned one-step denoising of the state's latest frame: x - sigma * D(window)."""
        text = None if state.text is None else state.text[: state.batch_size]  # conditional half
        pred = self.codec.from_tokens(self.denoiser_tokens(state.recent, text))
        return state.recent[:, -1] - self.config.noise_std * pred[:, -1]

    @torch.no_grad()
    def decode(
        self,
        z: Tensor,
        actions=None,
        prompt=None,
        sampler: SamplerConfig | str = "jacobi",
        guidance: float = 0.0,
        null_prompt=None,
    ) -> Tensor:
        """Invert the flow: z (B, T, C, H, W) -> x (B, T, C, H, W), frame by frame."""
        z = self._check_video(z, "z")
        b, t = z.shape[:2]
        actions = self.check_actions(actions, b, t)
        state = self.start(b, prompt=prompt, guidance=guidance, null_prompt=null_prompt)
        tokens = self.codec.to_tokens(z)
        frames = []
        for i in range(t):
            action = None if actions is None or i == 0 else actions[:, i - 1]
            x, _ = self.step(state, action, z=tokens[:, i], sampler=sampler, denoise=False)
            frames.append(x)
        return torch.stack(frames, dim=1)

    @torch.no_grad()
    def generate(
        self,
        num_frames: int,
        context: Tensor | None = None,
        actions=None,
        prompt=None,
        batch_size: int = 1,
        sampler: SamplerConfig | str = "jacobi",
        denoise: bool | str = "auto",
        guidance: float = 0.0,
        temperature: float = 1.0,
        seed: int | torch.Generator | None = None,
        null_prompt=None,
    ) -> Tensor:
        """Sample `num_frames` new frames, uint8 (B, num_frames, H, W, 3).

        `context` (uint8 (B, C, H, W, 3)) is continued; `actions` are counted from the first
        context frame (`actions[:, t]` conditions frame t + 1), so C context frames and
        num_frames new ones need C + num_frames - 1 actions. `temperature=0` decodes z = 0
        (and by default is not denoised, see the module docstring).
        Longer than `max_frames`: the window slides (context re-encoded).
        """
        if not isinstance(num_frames, int) or num_frames < 1:
            raise WorldFlowError(f"num_frames: expected a positive int, got {num_frames!r}")
        denoise = denoising_at(denoise, temperature)  # a bad choice fails before any work
        gen = generator_from(seed, self.device)
        n_ctx = 0 if context is None else self.check_frames(context, "context").shape[1]
        b = batch_size if context is None else context.shape[0]
        total = n_ctx + num_frames
        actions = self.check_actions(actions, b, total)
        ctx_actions = None if actions is None or n_ctx == 0 else actions[:, : max(n_ctx - 1, 0)]
        state = self.start(b, context, ctx_actions, prompt, guidance, null_prompt, seed=gen)
        frames = []
        for i in range(num_frames):
            t = n_ctx + i  # index of the frame being generated
            action = None if actions is None or t == 0 else actions[:, t - 1]
            x, _ = self.step(
                state, action, temperature=temperature, sampler=sampler, denoise=denoise, generator=gen
            )
            frames.append(x)
        return model_to_frames(torch.stack(frames, dim=1))
