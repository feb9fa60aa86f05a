"""Where a run's clips come from: a collected env dataset, or the captioned shapes world.

A source gives the loop everything that depends on the data: the ModelConfig fields the
data fixes, each step's batch (seeded by (seed, step) alone, so resuming is exact), the
validation figures, and what the saved model records about its data.

- `EpisodeSource` (`data=` a folder from `worldflow collect`): clips with actions, frame
  pairs for the task heads, episodes split into train and validation.
- `ShapesSource` (`data=shapes`): `worldflow.data.shapes.ShapesClips`, captioned clips,
  recolouring edit samples and null prompts; items at index >= `HELD_OUT` are validation.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.distributed as dist

from ..codec import LOG_PIXEL_SCALE, frames_to_model
from ..data import ClipDataset, load_dataset
from ..data.shapes import ShapesClips, ShapesConfig
from ..errors import ConfigError
from ..metrics import noise_floor_bits
from .batches import (
    BATCH_STREAM,
    HEADS_STREAM,
    VAL_STREAM,
    first_frames,
    sample_batch,
    sample_pairs,
    step_generator,
    transitions,
)
from .config import TrainConfig
from .validation import evaluate

SHAPES = "shapes"
HELD_OUT = 2**31  # ShapesClips items below this index train, the rest validate
TEXT_DEFAULTS = {"text_dim": 64, "text_len": 72, "text_layers": 2}  # when a preset has no text


def make_source(cfg: TrainConfig):
    return ShapesSource(cfg) if cfg.data == SHAPES else EpisodeSource(cfg)


class EpisodeSource:
    """Clips and (frame, next frame) pairs of a collected dataset."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.tensordict, self.meta = load_dataset(cfg.data)
        td = self.tensordict
        self.train = ClipDataset(td, cfg.clip_len, "train", cfg.val_fraction, cfg.split_seed)
        self.val = ClipDataset(td, cfg.clip_len, "val", cfg.val_fraction, cfg.split_seed)
        if not len(self.train) or not len(self.val):
            raise ConfigError(f"data: expected train and val clips of {cfg.clip_len} frames in "
                              f"{cfg.data!r}, got {len(self.train)} and {len(self.val)}")
        self.train_pairs = transitions(td, self.train.episodes)
        self.val_pairs, _ = transitions(td, self.val.episodes)

    def model_fields(self) -> dict:
        """The ModelConfig fields a dataset fixes: frame size, crop, env id, action space."""
        space, crop = self.meta["action_space"], self.meta.get("crop")
        discrete = space["type"] == "discrete"
        return {"frame_size": tuple(self.meta["frame_size"]),
                "crop": None if crop is None else tuple(crop), "env_id": self.meta.get("env_id"),
                "num_actions": int(space["n"]) if discrete else None,
                "action_dim": None if discrete else int(np.prod(space["shape"])),
                "task_heads": True}

    def batch(self, step: int, rank: int, world: int) -> dict:
        cfg = self.cfg
        batch = sample_batch(self.train, cfg.batch_size,
                             step_generator(cfg.seed, step, BATCH_STREAM), rank, world)
        batch["pairs"] = sample_pairs(self.tensordict, self.train_pairs, cfg.heads_batch,
                                      cfg.heads_terminal_fraction,
                                      step_generator(cfg.seed, step, HEADS_STREAM), rank, world)
        return batch

    def evaluate(self, model, rank: int, world: int) -> dict:
        cfg = self.cfg
        return evaluate(model, self.val, cfg.batch_size, cfg.val_batches, cfg.split_seed,
                        self.tensordict, self.val_pairs, rank, world)

    def start_frames(self):
        return first_frames(self.tensordict, self.train.episodes)

    def record(self) -> dict:
        meta = self.meta
        return {"path": self.cfg.data, **{k: meta.get(k) for k in ("episodes", "frames", "policy")},
                "chunks": [{k: v for k, v in chunk.items() if k not in ("seeds", "episode_ids")}
                           for chunk in meta.get("chunks", [])]}


class ShapesSource:
    """Captioned shapes clips (text-to-video and video-to-video samples) for a text model."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        if "heads" in cfg.train_parts and len(cfg.train_parts) == 1:
            raise ConfigError(f"train_parts: data=shapes trains no task heads; expected flow or "
                              f"denoiser among them, got {list(cfg.train_parts)}")
        try:
            self.world = ShapesConfig(size=cfg.shapes_size, clip_len=cfg.clip_len)
            self.clips = ShapesClips(self.world, cfg.split_seed, cfg.edit_fraction, cfg.caption_dropout)
            # validation scores every prompt as given: no dropout, the same edit share
            self.val = ShapesClips(self.world, cfg.split_seed, cfg.edit_fraction, 0.0)
        except ValueError as err:  # the world names its own fields: name the training config's
            field, _, rest = str(err).partition(":")
            field = "shapes_size" if field == "size" else field
            raise ConfigError(f"{field}:{rest}") from err

    def model_fields(self) -> dict:
        size = (self.world.size, self.world.size)
        overrides = self.cfg.model
        if "frame_size" in overrides and tuple(overrides["frame_size"]) != size:
            raise ConfigError(f"model.frame_size: data=shapes renders {list(size)} frames "
                              f"(shapes_size={self.world.size}), got {list(overrides['frame_size'])}")
        return {"frame_size": size, "crop": None, "env_id": None, "num_actions": None,
                "action_dim": None, "task_heads": False}

    def text_fields(self, config) -> dict:
        """Text fields to add when the chosen preset has none (a shapes model needs text)."""
        return {} if config.has_text else dict(TEXT_DEFAULTS)

    def _batch(self, clips: ShapesClips, indices, gen: torch.Generator, rank: int, world: int):
        size = len(indices)
        part = slice(rank * size // world, (rank + 1) * size // world)
        frames, prompts = clips.batch(indices[part].tolist())
        t, h, w, c = frames.shape[1:]
        noise = torch.randn((size, t, c, h, w), generator=gen)[part]
        return {"frames": torch.from_numpy(frames), "prompts": prompts, "noise": noise}

    def batch(self, step: int, rank: int, world: int) -> dict:
        gen = step_generator(self.cfg.seed, step, BATCH_STREAM)
        indices = torch.randint(HELD_OUT, (self.cfg.batch_size,), generator=gen)
        return self._batch(self.clips, indices, gen, rank, world)

    @torch.no_grad()
    def evaluate(self, model, rank: int, world: int) -> dict:
        """bits/dim of held-out clips under their prompts and under the null prompt: the
        difference is what the text tells the model (`val_text_gain_bits_per_dim`)."""
        cfg, sigma, dims = self.cfg, model.config.noise_std, model.config.dims_per_frame
        sums = torch.zeros(3, dtype=torch.float64)  # nll/dim with prompt, with "", frames
        for i in range(cfg.val_batches):
            gen = step_generator(cfg.split_seed, i, VAL_STREAM)
            indices = HELD_OUT + i * cfg.batch_size + torch.arange(cfg.batch_size)
            batch = self._batch(self.val, indices, gen, rank, world)
            x = frames_to_model(batch["frames"].to(model.device))
            x = x + sigma * batch["noise"].to(x.device)
            b = x.shape[0]
            own = model.frame_nll(x, None, model.encode_prompt(batch["prompts"], b))
            null = model.frame_nll(x, None, model.encode_prompt([""] * b, b))
            sums += torch.tensor([float(own.sum()) / dims, float(null.sum()) / dims, own.numel()],
                                 dtype=sums.dtype)
        if dist.is_initialized():
            dist.all_reduce(sums)
        own, null, frames = sums.tolist()
        bits = (own / frames + LOG_PIXEL_SCALE) / math.log(2)
        floor = noise_floor_bits(sigma)
        return {"val_bits_per_dim": bits, "noise_floor_bits_per_dim": floor,
                "val_excess_bits_per_dim": bits - floor,
                "val_text_gain_bits_per_dim": (null - own) / frames / math.log(2)}

    def start_frames(self):
        return None

    def record(self) -> dict:
        cfg = self.cfg
        return {"path": SHAPES, "world": dataclasses.asdict(self.world), "edit_fraction": cfg.edit_fraction,
                "caption_dropout": cfg.caption_dropout}
