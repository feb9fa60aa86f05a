"""`WorldFlow`: the STARFlow-V video flow as a world model.

    x (B, T, C, H, W) --patch codec--> tokens (B, T, N, c)
      --shallow blocks (each frame alone)--> --deep block (all frames, causal in time;
      text prefix; action a_t conditions frame t+1)--> z ~ N(0, I)

log p(x) = log N(z; 0, I) + sum of the blocks' log-dets, exact. Generation inverts it
frame by frame (`worldflow.sampling`); a causal denoiser cleans each frame in one step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from . import sampling
from .codec import LOG_PIXEL_SCALE, PatchCodec, frames_to_model, model_to_frames
from .conditioning import ActionEmbedding, ByteTextEncoder, PretrainedTextEncoder
from .config import ModelConfig, SamplerConfig, preset
from .denoiser import Denoiser
from .errors import WorldFlowError
from .flow import FlowBlock
from .heads import TaskHeads
from .nn import rope_table
from .sampling import VideoState


@dataclass
class LogProb:
    """Per-frame likelihood of frames, in the 8-bit pixel convention.

    nll: (B, T) nats per frame, -log p(frame | earlier frames, actions, prompt) as a
        density over pixel values in [0, 255]: the model-space NLL plus D log 127.5.
    bits_per_dim: (B, T) nll / (D ln 2), D = C H W.
    dim_bits: (B, T, C, H, W) with `log_prob(per_dim=True)`: the bits of each pixel and
        channel (`WorldFlow.dim_nll` plus log 127.5, over ln 2); their mean over a frame is
        its bits_per_dim. A map of where a frame surprised the model.
    """

    nll: Tensor
    bits_per_dim: Tensor
    dim_bits: Tensor | None = None


class WorldFlow(nn.Module):
    LOG_2PI = math.log(2 * math.pi)

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = cfg = config
        self.codec = PatchCodec(cfg.patch_size, cfg.frame_size)
        c = cfg.token_dim
        self.shallow_blocks = nn.ModuleList(
            FlowBlock(c, cfg.shallow_width, cfg.shallow_depth, cfg.head_dim, soft_clip=cfg.soft_clip)
            for _ in range(cfg.shallow_blocks)
        )
        self.deep_block = FlowBlock(
            c, cfg.deep_width, cfg.deep_depth, cfg.head_dim, text_dim=cfg.text_dim, soft_clip=cfg.soft_clip
        )
        self.actions = (
            ActionEmbedding(cfg.deep_width, cfg.num_actions, cfg.action_dim) if cfg.has_actions else None
        )
        self.text_encoder = (
            ByteTextEncoder(cfg.text_dim, cfg.text_len) if cfg.has_text and cfg.text_encoder is None else None
        )
        self._external_text_encoder = None  # a local pretrained encoder, loaded on first use
        self.denoiser = Denoiser(
            c,
            cfg.denoiser_width,
            cfg.denoiser_depth,
            cfg.head_dim,
            window=cfg.denoiser_window,
            lookahead=cfg.denoiser_lookahead,
            text_dim=cfg.text_dim,
            sigma=cfg.noise_std if cfg.denoiser_predicts == "clean" else None,
        )
        self.heads = TaskHeads(cfg.channels) if cfg.task_heads else None
        self.info: dict = {}  # what from_pretrained read beside the weights (training record)
        self.start_frames: Tensor | None = None  # real first frames (K, H, W, 3) uint8, if any

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_preset(cls, name: str, **overrides) -> WorldFlow:
        """A randomly initialised model: `"tiny"`, `"small"` or `"starflow-v-7b"`."""
        return cls(preset(name, **overrides))

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: str | torch.device = "cpu") -> WorldFlow:
        """A shipped model by name (e.g. `"cartpole"`) or a directory from `save_pretrained`."""
        from .checkpoint import load_pretrained

        return load_pretrained(cls, name_or_path, device)

    def save_pretrained(self, path: str | Path, extra: dict | None = None) -> Path:
        """Write `model.safetensors` and `config.json` (atomically) into `path`."""
        from .checkpoint import save_pretrained

        return save_pretrained(self, path, extra)

    # ---------------------------------------------------------------- layout helpers
    @staticmethod
    def flips(block: int) -> bool:
        """Block i reads each frame's tokens in reverse when i is even (reference section 2)."""
        return block % 2 == 0

    def deep_order(self, tokens: Tensor) -> Tensor:
        """Natural <-> deep-block token order within frames, (..., N, c) (an involution)."""
        return tokens.flip(-2) if self.flips(self.config.shallow_blocks) else tokens

    def _shallow_forward(self, tokens: Tensor):
        """Shallow blocks over pixel tokens (B, F, N, c), each frame alone: block outputs
        and elementwise log-dets, natural order, and each block's input, output and log-det
        in its own order (B F, N, c)."""
        cos, sin = self.shallow_rope()
        outputs, logdets, maps = [], [], []
        for i, block in enumerate(self.shallow_blocks):
            u = tokens.flatten(0, 1)
            if self.flips(i):
                u = u.flip(1)
            v, logdet = block(u, cos, sin)
            maps.append((u, v, logdet))
            tokens = (v.flip(1) if self.flips(i) else v).view_as(tokens)
            outputs.append(tokens)
            logdets.append(logdet.view_as(tokens))
        return outputs, logdets, maps

    def _rope(self, text_len: int, frames: int, temporal: bool, like: Tensor):
        cfg = self.config
        return rope_table(
            text_len, frames, cfg.grid, float(cfg.rope_scale), temporal, cfg.head_dim, like.dtype, like.device
        )

    def deep_rope(self, frames: int, text_len: int = 0) -> tuple[Tensor, Tensor]:
        return self._rope(text_len, frames, True, self.deep_block.sos)

    def shallow_rope(self) -> tuple[Tensor, Tensor]:
        return self._rope(0, 1, False, self.deep_block.sos)

    @property
    def device(self) -> torch.device:
        return self.deep_block.sos.device

    @property
    def dtype(self) -> torch.dtype:
        return self.deep_block.sos.dtype

    # ---------------------------------------------------------------- conditions
    def encode_prompt(self, prompt, batch: int) -> Tensor | None:
        """str | list[str] | (B, S, text_dim) tensor | None -> text embeddings or None."""
        cfg = self.config
        if prompt is None:
            return (
                self.encode_prompt([""] * batch, batch) if cfg.has_text and self._can_encode_text() else None
            )
        if not cfg.has_text:
            raise WorldFlowError(
                f"prompt: this model was trained without text; expected None, got {type(prompt).__name__}"
            )
        if isinstance(prompt, Tensor):
            expected = (batch, cfg.text_len, cfg.text_dim)
            if prompt.dim() != 3 or prompt.shape[0] != batch or prompt.shape[2] != cfg.text_dim:
                raise WorldFlowError(
                    f"prompt: expected a float tensor of shape {expected}, got {tuple(prompt.shape)}"
                )
            if not prompt.is_floating_point():
                raise WorldFlowError(f"prompt: expected a float tensor, got dtype {prompt.dtype}")
            return prompt.to(self.device, self.dtype)
        prompts = [prompt] * batch if isinstance(prompt, str) else list(prompt)
        if len(prompts) != batch or not all(isinstance(p, str) for p in prompts):
            raise WorldFlowError(f"prompt: expected a string or {batch} strings, got {prompt!r}")
        encoder = self.text_encoder
        if encoder is None:
            if self._external_text_encoder is None:
                self._external_text_encoder = PretrainedTextEncoder(cfg.text_encoder, cfg.text_len)
            encoder = self._external_text_encoder
        return encoder(prompts).to(self.device, self.dtype)

    def _can_encode_text(self) -> bool:
        return self.text_encoder is not None or self.config.text_encoder is not None

    def check_actions(self, actions, batch: int, frames: int, name: str = "actions") -> Tensor | None:
        """Validate actions for `frames` frames: length frames or frames - 1."""
        cfg = self.config
        if actions is None:
            return None
        if not cfg.has_actions:
            raise WorldFlowError(f"{name}: this model was trained without actions; expected None")
        actions = torch.as_tensor(actions, device=self.device)
        lengths = (frames, frames - 1) if frames > 1 else (1, 0)
        if cfg.num_actions is not None:
            if actions.dim() != 2 or actions.shape[0] != batch or actions.shape[1] not in lengths:
                raise WorldFlowError(
                    f"{name}: expected integer actions of shape ({batch}, {frames}) or "
                    f"({batch}, {frames - 1}), got {tuple(actions.shape)}"
                )
            if actions.is_floating_point() or actions.dtype == torch.bool:
                raise WorldFlowError(
                    f"{name}: expected integer dtype (discrete actions), got {actions.dtype}"
                )
            if actions.numel() and (actions.min() < 0 or actions.max() >= cfg.num_actions):
                raise WorldFlowError(
                    f"{name}: expected values in [0, {cfg.num_actions}), got range "
                    f"[{int(actions.min())}, {int(actions.max())}]"
                )
            return actions.long()
        if (
            actions.dim() != 3
            or actions.shape[0] != batch
            or actions.shape[1] not in lengths
            or actions.shape[2] != cfg.action_dim
        ):
            raise WorldFlowError(
                f"{name}: expected float actions of shape ({batch}, {frames}, {cfg.action_dim}) or "
                f"({batch}, {frames - 1}, {cfg.action_dim}), got {tuple(actions.shape)}"
            )
        if not torch.isfinite(actions.float()).all():
            raise WorldFlowError(f"{name}: expected finite values, got NaN or inf")
        return actions.to(self.dtype)

    def _frame_cond(self, actions: Tensor | None, batch: int, frames: int) -> Tensor | None:
        if self.actions is None:
            return None
        return self.actions.per_frame(actions, frames, batch)

    # ---------------------------------------------------------------- data -> noise
    def flow_forward(self, x: Tensor, actions: Tensor | None = None, text: Tensor | None = None):
        """x (B, T, C, H, W) -> z tokens (B, T, N, c), log-dets, block outputs.

        logdets[i]: (B, T, N, c) elementwise, in block i's token order. outputs[0] is the
        patchified input, outputs[i + 1] block i's output, natural order.
        """
        b, t = x.shape[:2]
        tokens = self.codec.to_tokens(x)
        shallow, logdets, _ = self._shallow_forward(tokens)
        outputs = [tokens, *shallow]
        tokens = outputs[-1]
        cond = self._frame_cond(actions, b, t)
        v, logdet = self._deep_forward(self.deep_order(tokens), text, cond)
        tokens = self.deep_order(v)
        outputs.append(tokens)
        logdets.append(logdet)
        return tokens, logdets, outputs

    def _deep_forward(self, u: Tensor, text: Tensor | None, cond: Tensor | None):
        """Deep block over (B, T, N, c) tokens in deep order; windows of `max_frames`
        frames, each later window re-encoding `context_frames` frames (as generation)."""
        cfg = self.config
        b, t, n, c = u.shape
        text_len = 0 if text is None else text.shape[1]
        window, keep = cfg.max_frames, cfg.context_frames
        outs, logdets, start = [], [], 0
        while start < t:
            lo = 0 if start == 0 else start - keep  # frames re-encoded as context
            hi = min(t, lo + window)
            seg_cond = None
            if cond is not None:
                seg_cond = cond[:, lo:hi].clone()
                seg_cond[:, 0] = self.actions.null
                seg_cond = seg_cond.repeat_interleave(n, dim=1)
            cos, sin = self.deep_rope(hi - lo, text_len)
            v, logdet = self.deep_block(u[:, lo:hi].flatten(1, 2), cos, sin, text, seg_cond)
            new = start - lo
            outs.append(v.view(b, hi - lo, n, c)[:, new:])
            logdets.append(logdet.view(b, hi - lo, n, c)[:, new:])
            start = hi
        return torch.cat(outs, dim=1), torch.cat(logdets, dim=1)

    def reference_loss(self, z_tokens: Tensor, logdets: list[Tensor]) -> Tensor:
        """The reference training loss: mean_b[0.5 mean(z^2) - sum_i mean(logdet_i)],
        model units, per dimension, without the 0.5 log(2 pi) constant."""
        dims = tuple(range(1, z_tokens.dim()))
        loss = 0.5 * z_tokens.pow(2).mean(dim=dims)
        for logdet in logdets:
            loss = loss - logdet.mean(dim=dims)
        return loss.mean()

    def frame_nll(self, x: Tensor, actions: Tensor | None = None, text: Tensor | None = None) -> Tensor:
        """(B, T) NLL of each frame in nats, MODEL units (density over [-1, 1] values)."""
        z, logdets, _ = self.flow_forward(x, actions, text)
        nll = 0.5 * z.pow(2).sum(dim=(2, 3)) + 0.5 * self.config.dims_per_frame * self.LOG_2PI
        for logdet in logdets:
            nll = nll - logdet.sum(dim=(2, 3))
        return nll

    def dim_nll(self, x: Tensor, actions: Tensor | None = None, text: Tensor | None = None) -> Tensor:
        """(B, T, C, H, W) terms of `frame_nll`, one per pixel and channel, nats, model units.

        Every block scales each dimension by its own factor and N(0, I) factorises, so the
        frame's NLL is exactly the sum over dimensions of 0.5 z_d^2 + 0.5 log 2 pi minus the
        blocks' log-scales at d. Where the frame's cost lies (the cart, the background)
        shows in this map; how it shares out depends on the flow's token orders.
        """
        z, logdets, _ = self.flow_forward(x, actions, text)
        nll = 0.5 * z.pow(2) + 0.5 * self.LOG_2PI
        for i, logdet in enumerate(logdets):  # each in its block's token order
            if i < len(self.shallow_blocks):
                nll = nll - (logdet.flip(2) if self.flips(i) else logdet)
            else:
                nll = nll - self.deep_order(logdet)
        return self.codec.from_tokens(nll)

    def encode(self, x: Tensor, actions=None, prompt=None) -> tuple[Tensor, Tensor]:
        """x float (B, T, C, H, W) in [-1, 1] -> z (B, T, C, H, W), log|det dz/dx| (B, T)."""
        x = self._check_video(x, "x")
        actions = self.check_actions(actions, x.shape[0], x.shape[1])
        text = self.encode_prompt(prompt, x.shape[0])
        z, logdets, _ = self.flow_forward(x, actions, text)
        logdet = sum(ld.sum(dim=(2, 3)) for ld in logdets)
        return self.codec.from_tokens(z), logdet

    def log_prob(
        self, frames: Tensor, actions=None, prompt=None, *, noise: bool = False, seed=None,
        per_dim: bool = False,
    ) -> LogProb:
        """Exact per-frame log-likelihood of uint8 frames (B, T, H, W, C).

        With the frames' model values x = v / 127.5 - 1, the flow's density p(x) is that of
        training data x + sigma * eps (noise augmentation). nll = -log p(x) + D log 127.5
        (the change of variables to pixel units), bits_per_dim = nll / (D ln 2). By default
        p is evaluated at the clean frame (deterministic: rewards, anomaly scores);
        `noise=True` adds sigma * eps first (seeded): its mean over frames estimates the
        cross-entropy of noisy data, bounded below by the noise floor
        0.5 log2(2 pi e (127.5 sigma)^2) bits/dim — report the two together.
        `per_dim=True` also returns each pixel's and channel's share (`LogProb.dim_bits`).
        """
        frames = self._check_frames(frames, "frames")
        x = frames_to_model(frames).to(self.device, self.dtype)
        if noise:
            gen = _generator(seed, self.device)
            x = x + self.config.noise_std * torch.randn(
                x.shape, generator=gen, device=self.device, dtype=x.dtype
            )
        actions = self.check_actions(actions, x.shape[0], x.shape[1])
        text = self.encode_prompt(prompt, x.shape[0])
        dims = self.config.dims_per_frame
        if per_dim:
            dim_bits = (self.dim_nll(x, actions, text) + LOG_PIXEL_SCALE) / math.log(2)
            nll = dim_bits.sum(dim=(2, 3, 4)) * math.log(2)
            return LogProb(nll, nll / (dims * math.log(2)), dim_bits)
        nll = self.frame_nll(x, actions, text) + dims * LOG_PIXEL_SCALE
        return LogProb(nll, nll / (dims * math.log(2)))

    # ---------------------------------------------------------------- noise -> data
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
            context = self._check_frames(context, "context")
            batch_size = context.shape[0]
        text = self.encode_prompt(prompt, batch_size)
        if guidance > 0:
            if text is None:
                raise WorldFlowError("guidance: classifier-free guidance needs a text model; expected 0")
            null = self.encode_prompt([""] * batch_size if null_prompt is None else null_prompt, batch_size)
            text = torch.cat([text, null])
        state = sampling.new_state(self, batch_size, text, guidance, self.deep_block.sos)
        if context is not None:
            x = frames_to_model(context).to(self.device, self.dtype)
            if context_noise:
                gen = _generator(seed, self.device)
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
            affine = sampling.pack_affine(u, v, torch.exp(-logdet))  # (B F, N, 2c)
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
                sampling.slide_window(self, state)
            n = min(cfg.max_frames - state.frames_in_window, f - done)
            part = None if cond is None else cond[:, done : done + n]
            v, log_a = sampling.append_frames(self, state, deep[:, done : done + n], part)
            zs.append(v)
            log_scale[:, done : done + n] += log_a.sum(dim=(2, 3))
            done += n
        v = torch.cat(zs, dim=1)
        state.prev_affine[-1] = sampling.pack_affine(deep[:, -1], v[:, -1], log_a[:, -1].exp())[:, None]
        z = self.deep_order(v)
        nll = 0.5 * z.pow(2).sum(dim=(2, 3)) + 0.5 * cfg.dims_per_frame * self.LOG_2PI + log_scale
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
        denoise: bool | str = True,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict]:
        """Append one frame to `state`; returns it (B, C, H, W) in model space and info.

        `action` (B,) or (B, A) is the action taken after the latest frame (ignored for
        a video's first frame). `z` (B, N, c) gives the frame's latent tokens explicitly
        (then `temperature` and `generator` are unused); by default z = temperature * eps.
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
        if denoise not in (True, False, "learned", "exact"):
            raise WorldFlowError(f"denoise: expected True, False, 'learned' or 'exact', got {denoise!r}")
        before = state.clone() if denoise == "exact" else None
        x, nll, calls = sampling.next_frame(self, state, z, cond, sampler)
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

    def denoiser_tokens(self, x: Tensor, text: Tensor | None = None) -> Tensor:
        """The denoiser's prediction of sigma * grad NLL for frames x (B, T, C, H, W), as
        tokens (B, T, N, c). Time positions are relative, so any window of frames works."""
        s = 0 if text is None else text.shape[1]
        cos, sin = self._rope(s, x.shape[1], True, x)
        return self.denoiser(self.codec.to_tokens(x), cos, sin, text)

    def denoise_recent(self, state: VideoState) -> Tensor:
        """Learned one-step denoising of the state's latest frame: x - sigma * D(window)."""
        text = None if state.text is None else state.text[: state.batch_size]  # conditional half
        pred = self.codec.from_tokens(self.denoiser_tokens(state.recent, text))
        return state.recent[:, -1] - self.config.noise_std * pred[:, -1]

    def denoise(self, x: Tensor, actions=None, prompt=None, method: str = "learned") -> Tensor:
        """One-step flow-score denoising of noisy frames x (B, T, C, H, W) in model space.

        x + sigma^2 grad_x log p(x) (Tweedie's formula for Gaussian noise of std sigma):
        `"learned"` predicts sigma * grad NLL with the denoiser (one cheap pass);
        `"exact"` takes the flow's own gradient by autograd (slow; for comparison and for
        models without a trained denoiser).
        """
        x = self._check_video(x, "x")
        if method not in ("learned", "exact"):
            raise WorldFlowError(f"method: expected 'learned' or 'exact', got {method!r}")
        actions = self.check_actions(actions, x.shape[0], x.shape[1])
        text = self.encode_prompt(prompt, x.shape[0]) if self.config.has_text else None
        sigma = self.config.noise_std
        if method == "exact":
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(self.frame_nll(xg, actions, text).sum(), xg)
            return x - sigma**2 * grad
        return x - sigma * self.codec.from_tokens(self.denoiser_tokens(x, text))

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
        denoise: bool | str = True,
        guidance: float = 0.0,
        temperature: float = 1.0,
        seed: int | torch.Generator | None = None,
        null_prompt=None,
    ) -> Tensor:
        """Sample `num_frames` new frames, uint8 (B, num_frames, H, W, 3).

        `context` (uint8 (B, C, H, W, 3)) is continued; `actions` are counted from the first
        context frame (`actions[:, t]` conditions frame t + 1), so C context frames and
        num_frames new ones need C + num_frames - 1 actions. `temperature=0` decodes z = 0.
        Longer than `max_frames`: the window slides (context re-encoded).
        """
        if not isinstance(num_frames, int) or num_frames < 1:
            raise WorldFlowError(f"num_frames: expected a positive int, got {num_frames!r}")
        gen = _generator(seed, self.device)
        n_ctx = 0 if context is None else self._check_frames(context, "context").shape[1]
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

    # ---------------------------------------------------------------- boundary checks
    def preprocess(self, raw) -> Tensor:
        """Raw env renders uint8 (..., H0, W0, 3) -> model frames (..., H, W, 3)."""
        from .data.preprocess import preprocess_frames

        return preprocess_frames(raw, self.config.frame_size, self.config.crop)

    def _check_frames(self, frames, name: str) -> Tensor:
        cfg = self.config
        if cfg.codec != "patch":
            raise WorldFlowError(
                f"{name}: this model works on codec latents; pass latents to encode()/decode()"
            )
        frames = torch.as_tensor(frames)
        expected = (*cfg.frame_size, cfg.channels)
        if frames.dtype != torch.uint8:
            raise WorldFlowError(
                f"{name}: expected uint8 frames (B, T, {', '.join(map(str, expected))}), "
                f"got dtype {frames.dtype}"
            )
        if frames.dim() != 5 or tuple(frames.shape[2:]) != expected or frames.shape[1] == 0:
            raise WorldFlowError(
                f"{name}: expected shape (B, T, {', '.join(map(str, expected))}), got {tuple(frames.shape)}"
            )
        return frames

    def _check_video(self, x: Tensor, name: str) -> Tensor:
        cfg = self.config
        expected = (cfg.channels, *cfg.frame_size)
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise WorldFlowError(f"{name}: expected a float tensor (B, T, {', '.join(map(str, expected))})")
        if x.dim() != 5 or tuple(x.shape[2:]) != expected or x.shape[1] == 0:
            raise WorldFlowError(
                f"{name}: expected shape (B, T, {', '.join(map(str, expected))}), got {tuple(x.shape)}"
            )
        return x.to(self.device, self.dtype)


def _generator(seed, device) -> torch.Generator | None:
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen
