"""Exact likelihood: the flow from data to noise, per frame and per pixel.

    x (B, T, C, H, W) --patch codec--> tokens (B, T, N, c) --shallow blocks (each frame
    alone)--> --deep block (all frames, causal in time; text prefix; action a_t conditions
    frame t+1)--> z (B, T, N, c)

    -log p(frame t | frames < t) = 0.5 |z_t|^2 + 0.5 D log 2 pi - sum of the blocks'
    log-scales at frame t                                        (nats, model units)

Every block is causal in time, so these terms are the exact conditional NLLs of the
frames. `LikelihoodMixin` gives `WorldFlow` these methods; `LogProb` is what `log_prob`
returns, in the 8-bit pixel convention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .codec import LOG_PIXEL_SCALE, frames_to_model
from .seeding import generator_from

LOG_2PI = math.log(2 * math.pi)


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


class LikelihoodMixin:
    """Data -> noise methods of `WorldFlow` (see the module docstring)."""

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
        nll = 0.5 * z.pow(2).sum(dim=(2, 3)) + 0.5 * self.config.dims_per_frame * LOG_2PI
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
        nll = 0.5 * z.pow(2) + 0.5 * LOG_2PI
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
        frames = self.check_frames(frames, "frames")
        x = frames_to_model(frames).to(self.device, self.dtype)
        if noise:
            gen = generator_from(seed, self.device)
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
