"""Typed configuration: the model, sampling and the presets.

Configs are plain dataclasses (data, not behaviour). `register_configs()` puts them in
Hydra's ConfigStore for the command line; the library itself never imports Hydra.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .errors import ConfigError


@dataclass
class ModelConfig:
    """Shape of a WorldFlow model.

    Frames are `frame_size = (H, W)` pixels with `channels` channels (or, with
    `codec="latent"`, latents of an external codec). A frame is cut into
    `patch_size x patch_size` patches: `tokens_per_frame = (H / p) * (W / p)` tokens
    of `token_dim = p * p * channels` numbers each.

    Flow blocks, in the data-to-noise order: `shallow_blocks` per-frame blocks
    (`shallow_depth` layers of width `shallow_width`), then one deep block over the
    whole video (`deep_depth` layers of width `deep_width`, text prefix and actions).
    """

    frame_size: tuple[int, int] = (16, 16)
    channels: int = 3
    patch_size: int = 4
    codec: str = "patch"  # "patch": exact pixel likelihoods; "latent": inputs are latents
    shallow_blocks: int = 2
    shallow_depth: int = 1
    shallow_width: int = 64
    deep_depth: int = 2
    deep_width: int = 64
    head_dim: int = 32
    rope_grid: float | None = None  # reference grid size P; None: sqrt(tokens_per_frame)
    soft_clip: float = 4.0
    max_frames: int = 8  # deep-block attention window, in frames (1: frames independent)
    context_frames: int = 4  # frames re-encoded when a long video slides its window
    text_dim: int = 0  # width of text embeddings; 0: no text conditioning
    text_len: int = 0  # text tokens (prompts are padded / cut to this length)
    text_encoder: str | None = None  # None: built-in byte encoder; else a local path
    text_layers: int = 0  # Transformer layers of the built-in byte encoder (0: embeddings only)
    num_actions: int | None = None  # discrete action space size
    action_dim: int | None = None  # continuous action vector size
    noise_std: float = 0.05  # training noise, in model units ([-1, 1] pixels)
    denoiser_depth: int = 1
    denoiser_width: int = 64
    denoiser_window: int = 4  # frames the denoiser sees (itself and window - 1 past ones)
    denoiser_lookahead: int = 0  # future frames the denoiser sees (0: strictly causal)
    # "score": the network's output is sigma * grad NLL (the reference); "clean": it is the
    # clean tokens x_hat and the score is (x - x_hat) / sigma, so the per-pixel noise
    # reaches the output by an exact skip instead of through a stream narrower than a token
    denoiser_predicts: str = "score"
    task_heads: bool = False  # learned reward / termination heads (world models of an env)
    env_id: str | None = None  # the Gymnasium env a world model was trained on
    crop: tuple[int, int, int, int] | None = None  # raw render crop (top, bottom, left, right)

    def __post_init__(self) -> None:
        self.frame_size = tuple(self.frame_size)
        if self.crop is not None:
            self.crop = tuple(self.crop)
        self.validate()

    # -- derived sizes ---------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, int]:
        return self.frame_size[0] // self.patch_size, self.frame_size[1] // self.patch_size

    @property
    def tokens_per_frame(self) -> int:
        h, w = self.grid
        return h * w

    @property
    def token_dim(self) -> int:
        return self.patch_size * self.patch_size * self.channels

    @property
    def dims_per_frame(self) -> int:
        return self.channels * self.frame_size[0] * self.frame_size[1]

    @property
    def num_blocks(self) -> int:
        return self.shallow_blocks + 1

    @property
    def rope_scale(self) -> float:
        return self.rope_grid if self.rope_grid is not None else math.sqrt(self.tokens_per_frame)

    @property
    def has_actions(self) -> bool:
        return self.num_actions is not None or self.action_dim is not None

    @property
    def has_text(self) -> bool:
        return self.text_dim > 0

    def validate(self) -> None:
        h, w = self.frame_size
        p = self.patch_size
        if h % p or w % p:
            raise ConfigError(f"frame_size: expected multiples of patch_size={p}, got {self.frame_size}")
        for name in ("shallow_width", "deep_width", "denoiser_width"):
            if getattr(self, name) % self.head_dim:
                raise ConfigError(
                    f"{name}: expected a multiple of head_dim={self.head_dim}, got {getattr(self, name)}"
                )
        if self.head_dim % 4 or self.head_dim // 2 <= 8:
            raise ConfigError(
                f"head_dim: expected a multiple of 4 above 16 (8 rotary frequencies serve time), "
                f"got {self.head_dim}"
            )
        if (self.head_dim // 2 - 8) % 2:
            raise ConfigError(f"head_dim: expected head_dim/2 - 8 to be even, got {self.head_dim}")
        if self.num_actions is not None and self.action_dim is not None:
            raise ConfigError("num_actions / action_dim: expected at most one of them, got both")
        if self.has_text != (self.text_len > 0):
            raise ConfigError(
                f"text_dim / text_len: expected both zero or both positive, got "
                f"{self.text_dim} / {self.text_len}"
            )
        if self.text_layers < 0 or (self.text_layers and self.text_dim % self.head_dim):
            raise ConfigError(
                f"text_layers: expected >= 0, and text_dim a multiple of head_dim={self.head_dim} "
                f"when positive, got {self.text_layers} (text_dim {self.text_dim})"
            )
        if self.max_frames < 1 or not 0 <= self.context_frames < self.max_frames:
            raise ConfigError(
                f"max_frames / context_frames: expected max_frames >= 1 and 0 <= context_frames < "
                f"max_frames, got {self.max_frames} / {self.context_frames}"
            )
        if self.codec not in ("patch", "latent"):
            raise ConfigError(f"codec: expected 'patch' or 'latent', got {self.codec!r}")
        if self.noise_std < 0:
            raise ConfigError(f"noise_std: expected >= 0, got {self.noise_std}")
        if self.denoiser_predicts not in ("score", "clean"):
            raise ConfigError(
                f"denoiser_predicts: expected 'score' or 'clean', got {self.denoiser_predicts!r}"
            )
        if self.denoiser_predicts == "clean" and self.noise_std <= 0:
            raise ConfigError(
                f"denoiser_predicts: 'clean' needs noise_std > 0 (score = (x - x_hat) / sigma), "
                f"got noise_std={self.noise_std}"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"config: unknown fields {unknown}; known fields are {sorted(known)}")
        return cls(**data)


@dataclass
class SamplerConfig:
    """How the flow is inverted.

    `jacobi`: each frame's tokens are solved in parallel, block by block, by fixed-point
    iteration initialised from the previous frame (video-aware); a token has settled when
    its update moves its latent by `mean(((new - old) / a)^2) <= threshold` (latent units),
    an item's block stops when all its tokens settled or after `max_iterations` (None: the
    block length, after which the fixed point is exact). `sequential`: token by token.
    """

    name: str = "jacobi"
    threshold: float = 1e-4  # RMS latent change 0.01: a hundredth of the noise's std
    max_iterations: int | None = None
    block_size: int | None = None  # tokens per Jacobi block; None: a whole frame

    def __post_init__(self) -> None:
        if self.name not in ("jacobi", "sequential"):
            raise ConfigError(f"sampler: expected 'jacobi' or 'sequential', got {self.name!r}")


PRESETS: dict[str, ModelConfig] = {
    # Unit tests and smoke runs: 16 tokens a frame, ~0.2M parameters.
    "tiny": ModelConfig(),
    # The CartPole world model: 32x96 frames (the band where cart and pole move),
    # 8x8 patches -> 48 tokens a frame; trains on one CPU.
    "small": ModelConfig(
        frame_size=(32, 96),
        patch_size=8,
        shallow_blocks=2,
        shallow_depth=1,
        shallow_width=128,
        deep_depth=4,
        deep_width=192,
        head_dim=32,
        max_frames=8,  # = the training clip length: time offsets stay within what was seen
        context_frames=4,
        denoiser_depth=2,
        denoiser_width=128,  # narrower than a token (8 x 8 x 3 = 192): predict clean tokens
        denoiser_window=4,
        denoiser_predicts="clean",
    ),
    # The reference STARFlow-V text-to-video shape: 5 shallow blocks of 2 layers at width
    # 3072, a deep block of 24 layers at 4096, head size 64, 48 latent channels, text
    # width 2048 with 256 tokens, a denoiser of 8 layers at 3072. Latents come from an
    # external video codec; the latent grid here is illustrative.
    "starflow-v-7b": ModelConfig(
        frame_size=(60, 104),
        channels=48,
        patch_size=1,
        codec="latent",
        shallow_blocks=5,
        shallow_depth=2,
        shallow_width=3072,
        deep_depth=24,
        deep_width=4096,
        head_dim=64,
        max_frames=21,
        context_frames=10,
        text_dim=2048,
        text_len=256,
        noise_std=0.3,
        denoiser_depth=8,
        denoiser_width=3072,
        denoiser_window=10,
        denoiser_lookahead=1,
    ),
}
# The captioned shapes world's text-to-video model: the small model on 32x32 frames
# (16 tokens a frame) with a 2-layer byte Transformer reading the prompt; ~3M parameters.
PRESETS["shapes"] = dataclasses.replace(
    PRESETS["small"], frame_size=(32, 32), text_dim=64, text_len=72, text_layers=2
)


def preset(name: str, **overrides) -> ModelConfig:
    """A preset's config with fields overridden, e.g. `preset("tiny", num_actions=2)`."""
    if name not in PRESETS:
        raise ConfigError(f"preset: expected one of {sorted(PRESETS)}, got {name!r}")
    return dataclasses.replace(PRESETS[name], **overrides)


@dataclass
class PresetChoice:
    """Hydra schema for choosing a preset by name plus field overrides."""

    preset: str = "tiny"
    overrides: dict = field(default_factory=dict)


def register_configs() -> None:
    """Register the schemas with Hydra's ConfigStore (called by entry points only)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(group="schema", name="model", node=ModelConfig)
    cs.store(group="schema", name="sampler", node=SamplerConfig)
    for name, cfg in PRESETS.items():
        cs.store(group="model", name=name, node=cfg)
