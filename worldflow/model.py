"""`WorldFlow`: the STARFlow-V video flow as a world model — its parts and their layout.

    x (B, T, C, H, W) --patch codec--> tokens (B, T, N, c)
      --shallow blocks (each frame alone)--> --deep block (all frames, causal in time;
      text prefix; action a_t conditions frame t+1)--> z ~ N(0, I)

This module builds the model (codec, `FlowBlock`s, action and text conditioning, the
denoiser, the task heads), checks what comes in and holds the one-step denoising. What it
computes lives beside it, one direction a module:
- `worldflow.likelihood`: data -> noise, the exact per-frame log-likelihood (`log_prob`);
- `worldflow.generation`: noise -> data, frame by frame over the KV cache (`generate`,
  `start` / `step`), with the samplers of `worldflow.jacobi`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from .codec import PatchCodec
from .conditioning import ActionEmbedding, ByteTextEncoder, PretrainedTextEncoder
from .config import ModelConfig, preset
from .denoiser import Denoiser
from .errors import WorldFlowError
from .flow import FlowBlock
from .generation import GenerationMixin
from .heads import TaskHeads
from .likelihood import LikelihoodMixin, LogProb
from .nn import rope_table

__all__ = ["LogProb", "WorldFlow"]


class WorldFlow(LikelihoodMixin, GenerationMixin, nn.Module):
    """A normalizing-flow video world model (see the module docstring for the layout).

    Scoring: `log_prob`, `encode`, `frame_nll`, `dim_nll` (`worldflow.likelihood`).
    Generating: `generate`, `decode`, `start` / `push_context` / `step`
    (`worldflow.generation`). Cleaning: `denoise`. Weights: `from_preset`,
    `from_pretrained`, `save_pretrained`.
    """

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
            ByteTextEncoder(cfg.text_dim, cfg.text_len, cfg.text_layers, cfg.head_dim)
            if cfg.has_text and cfg.text_encoder is None
            else None
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
        self.source_dir = None  # the folder from_pretrained read (files shipped beside the model)

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
        if not isinstance(prompt, (str, list, tuple)):
            raise WorldFlowError(f"prompt: expected a string, {batch} strings or a float tensor, got "
                                 f"{type(prompt).__name__}")
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

    def denoiser_tokens(self, x: Tensor, text: Tensor | None = None) -> Tensor:
        """The denoiser's prediction of sigma * grad NLL for frames x (B, T, C, H, W), as
        tokens (B, T, N, c). Time positions are relative, so any window of frames works."""
        s = 0 if text is None else text.shape[1]
        cos, sin = self._rope(s, x.shape[1], True, x)
        return self.denoiser(self.codec.to_tokens(x), cos, sin, text)

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

    # ---------------------------------------------------------------- boundary checks
    def preprocess(self, raw) -> Tensor:
        """Raw env renders uint8 (..., H0, W0, 3) -> model frames (..., H, W, 3)."""
        from .data.preprocess import preprocess_frames

        return preprocess_frames(raw, self.config.frame_size, self.config.crop)

    def check_frames(self, frames, name: str = "frames") -> Tensor:
        """uint8 frames (B, T, H, W, 3) at the model's size, as a tensor; else a field-named error."""
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


