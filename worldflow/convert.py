"""Reference STARFlow-V checkpoints -> WorldFlow. The one place that knows foreign names.

    model = from_starflow(state_dict, config_from_starflow(reference_config, frame_size=(3, 4)))

Key names follow the reference description, section 8. Buffers the reference keeps for
old checkpoints (`attn_mask`, `feat_rope.*`, `var`) are ignored.
"""

from __future__ import annotations

import re

import torch

from .config import ModelConfig
from .errors import CheckpointError

IGNORED = re.compile(r"(^|\.)(attn_mask|freqs_cos|freqs_sin|var)$")
LAYER_NAMES = {
    "attention.norm": "attn.norm",
    "attention.qkv": "attn.qkv",
    "attention.proj": "attn.proj",
    "mlp.norm": "mlp.norm",
    "mlp.main.0": "mlp.up",
    "mlp.main.2": "mlp.down",
}


def config_from_starflow(
    reference: dict,
    frame_size: tuple[int, int] | None = None,
    max_frames: int = 8,
    context_frames: int = 1,
    **overrides,
) -> ModelConfig:
    """A ModelConfig from the reference's constructor arguments (its JSON `config`).

    `frame_size` is the latent frame (H, W); default: square `img_size`. The reference
    grid size P is `pt_seq_len` when given, else `img_size / patch_size`.
    """
    patch = reference["patch_size"]
    size = reference["img_size"]
    layers = reference["layers_per_block"]
    if isinstance(layers, int):
        layers = [layers] * reference["num_blocks"]
    shallow = layers[:-1]
    if len(set(shallow)) > 1:
        raise CheckpointError(f"layers_per_block: expected equal shallow depths, got {layers}")
    fields = dict(
        frame_size=tuple(frame_size or (size, size)),
        channels=reference["in_channels"],
        patch_size=patch,
        codec="latent",
        shallow_blocks=reference["num_blocks"] - 1,
        shallow_depth=shallow[0] if shallow else 1,
        shallow_width=reference["channels"],
        deep_depth=layers[-1],
        deep_width=reference.get("top_block_channels") or reference["channels"],
        head_dim=reference["head_dim"],
        rope_grid=float(reference.get("pt_seq_len") or size // patch),
        soft_clip=float(reference.get("soft_clip") or 0.0),
        max_frames=max_frames,
        context_frames=context_frames,
        text_dim=reference.get("txt_dim") or 0,
        text_len=reference.get("txt_size") or 0,
        denoiser_width=reference["channels"],
        denoiser_window=reference.get("denoiser_window", 10),
        denoiser_lookahead=reference.get("temporal_causal", 1) - 1,
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def rename(key: str, num_blocks: int) -> str | None:
    """Reference key -> WorldFlow key (None: an ignored leftover)."""
    if key.startswith("state_dict."):
        key = key[len("state_dict.") :]
    if IGNORED.search(key):
        return None
    m = re.match(r"blocks\.(\d+)\.(.*)", key)
    if m:
        i, rest = int(m.group(1)), m.group(2)
        prefix = "deep_block" if i == num_blocks - 1 else f"shallow_blocks.{i}"
    elif key.startswith("learnable_self_denoiser."):
        prefix, rest = "denoiser", key[len("learnable_self_denoiser.") :]
    else:
        raise CheckpointError(f"state_dict: unexpected reference key {key!r}")
    if rest == "sos_embed":
        return f"{prefix}.sos"
    if rest == "final_norm.weight":
        return f"{prefix}.transformer.final_norm.weight"
    m = re.match(r"attn_blocks\.(\d+)\.(.*)\.(weight|bias)$", rest)
    if m:
        layer, part, kind = m.groups()
        if part not in LAYER_NAMES:
            raise CheckpointError(f"state_dict: unexpected reference key {key!r}")
        return f"{prefix}.transformer.layers.{layer}.{LAYER_NAMES[part]}.{kind}"
    return f"{prefix}.{rest}"  # proj_in, proj_out, proj_txt


def from_starflow(state_dict: dict[str, torch.Tensor], config: ModelConfig):
    """Build a WorldFlow from a reference STARFlow-V state dict. Every parameter must be
    present with the right shape; a missing or extra key is a CheckpointError."""
    from .model import WorldFlow

    denoiser_layers = {
        int(m.group(1))
        for k in state_dict
        if (m := re.search(r"learnable_self_denoiser\.attn_blocks\.(\d+)\.", k))
    }
    if denoiser_layers and len(denoiser_layers) != config.denoiser_depth:
        config = _replace(config, denoiser_depth=len(denoiser_layers))
    model = WorldFlow(config)
    ours = model.state_dict()
    mapped = {}
    for key, value in state_dict.items():
        name = rename(key, config.num_blocks)
        if name is None:
            continue
        if name not in ours:
            raise CheckpointError(f"state_dict: reference key {key!r} -> {name!r} has no place in the model")
        if tuple(ours[name].shape) != tuple(value.shape):
            raise CheckpointError(
                f"state_dict: {key!r} expected shape {tuple(ours[name].shape)}, got {tuple(value.shape)}"
            )
        mapped[name] = value
    foreign = {k for k in ours if not k.startswith(("actions.", "text_encoder.", "heads."))}
    missing = sorted(foreign - set(mapped))
    if missing:
        raise CheckpointError(
            f"state_dict: missing reference weights for {missing[:5]}{'...' if len(missing) > 5 else ''}"
        )
    model.load_state_dict(mapped, strict=False)
    dtypes = {v.dtype for v in mapped.values()}
    if len(dtypes) == 1:
        model.to(dtypes.pop())
    return model


def _replace(config: ModelConfig, **changes) -> ModelConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)
