"""`TrainConfig`: every knob of a training run, its checks, and the command that reproduces it."""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass, field

from ..errors import ConfigError

PARTS = ("flow", "denoiser", "heads")  # one optimizer each


@dataclass
class TrainConfig:
    """Every knob of a training run (`worldflow train key=value ...`)."""

    preset: str = "tiny"  # model preset: "tiny", "small", "shapes", "starflow-v-7b"
    model: dict = field(default_factory=dict)  # ModelConfig overrides: +model.deep_depth=2
    data: str = "data/cartpole"  # dataset folder written by `worldflow collect`, or "shapes"
    # (the captioned shapes world, `worldflow.data.shapes`: a text-conditioned video model)
    out: str = "runs/worldflow"  # run folder: log.csv, tb/, checkpoint/, model/
    steps: int = 2000  # total optimizer steps (a resumed run continues up to this)
    batch_size: int = 16  # global: split evenly over the ranks
    clip_len: int = 8  # frames per training clip
    val_fraction: float = 0.1  # fraction of episodes held out
    lr: float = 3e-4  # flow peak learning rate
    denoiser_lr: float = 3e-4
    heads_lr: float = 1e-3
    warmup_steps: int = 100  # linear warmup from lr / warmup_steps
    lr_decay_steps: int | None = None  # cosine horizon; None: steps
    min_lr_ratio: float = 0.1  # cosine floor, as a fraction of the peak
    weight_decay: float = 1e-4  # on matrices only
    grad_clip: float = 1.0  # max gradient norm, per optimizer
    ema_decay: float | None = None  # average the weights, ema = decay * ema + (1 - decay) * w
    # after each step; validation and model/ then use the average (None: the last weights)
    noise_std: float | None = None  # training noise sigma, model units; None: the preset's
    val_every: int = 250
    val_batches: int = 4
    checkpoint_every: int = 500
    log_every: int = 10
    seed: int = 0  # weight init, batch order, noise
    split_seed: int = 0  # the train/val episode split and the validation batches: keep it across
    # runs that continue one another (init=), so validation stays held out and comparable
    resume: bool = False  # continue from out/checkpoint (exactly)
    init: str | None = None  # start from a trained model (a shipped name or a model folder)
    init_parts: list[str] = field(default_factory=lambda: list(PARTS))  # loaded from `init`
    train_parts: list[str] = field(default_factory=lambda: list(PARTS))  # the rest are frozen
    shapes_size: int = 32  # data=shapes: frame side, pixels
    edit_fraction: float = 0.25  # data=shapes: share of recolouring (video-to-video) samples
    caption_dropout: float = 0.1  # data=shapes: share of null prompts (classifier-free guidance)
    heads_batch: int = 64  # global (frame, next frame) pairs a step for the task heads
    heads_terminal_fraction: float = 0.5  # of them, drawn from terminal transitions
    threads: int | None = None  # torch CPU threads; None: torch's default
    fsdp: bool = False  # shard with FSDP2 (large presets, torchrun only)
    device: str = "cpu"
    progress: bool = True  # tqdm bar on rank 0


def check_config(cfg: TrainConfig, world: int) -> None:
    positive = ("steps", "batch_size", "val_every", "val_batches", "checkpoint_every",
                "log_every")
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name}: expected a positive integer, got {getattr(cfg, name)}")
    if cfg.clip_len < 2:
        raise ConfigError(f"clip_len: expected >= 2 (heads learn from frame pairs), "
                          f"got {cfg.clip_len}")
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size: expected a multiple of the {world} ranks, "
                          f"got {cfg.batch_size}")
    for name in ("train_parts", "init_parts"):
        unknown = [p for p in getattr(cfg, name) if p not in PARTS]
        if unknown or (name == "train_parts" and not getattr(cfg, name)):
            raise ConfigError(f"{name}: expected a non-empty list of {list(PARTS)}, "
                              f"got {list(getattr(cfg, name))}")
    if cfg.heads_batch < 1 or cfg.heads_batch % world:
        raise ConfigError(f"heads_batch: expected a positive multiple of the {world} ranks, "
                          f"got {cfg.heads_batch}")
    if not 0.0 <= cfg.heads_terminal_fraction <= 1.0:
        raise ConfigError(f"heads_terminal_fraction: expected a number in [0, 1], "
                          f"got {cfg.heads_terminal_fraction}")
    if cfg.ema_decay is not None and not 0.0 <= cfg.ema_decay < 1.0:
        raise ConfigError(f"ema_decay: expected a number in [0, 1) or null, got {cfg.ema_decay}")
    if cfg.ema_decay is not None and cfg.fsdp:
        raise ConfigError(f"ema_decay: expected null with fsdp=true (the average is not "
                          f"sharded), got {cfg.ema_decay}")
    if cfg.fsdp and world == 1:
        raise ConfigError("fsdp: expected a torchrun launch with WORLD_SIZE > 1, got one process")


def command_line(cfg: TrainConfig) -> str:
    """`worldflow train k=v ...` that reproduces this run from scratch (training is
    deterministic, so a resumed run and a straight one end identical)."""
    def value(v) -> str:
        if isinstance(v, bool) or v is None:
            return {True: "true", False: "false", None: "null"}[v]
        if isinstance(v, (list, tuple)):
            return "[" + ",".join(value(x) for x in v) + "]"
        return str(v)

    default = TrainConfig()
    parts = ["worldflow", "train"]
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.name == "model":
            parts += [f"+model.{k}={value(x)}" for k, x in v.items()]
        elif f.name == "preset" and cfg.init:
            continue  # the model comes from `init`
        elif f.name in ("preset", "data", "out", "steps") or (
                f.name not in ("resume", "progress") and v != getattr(default, f.name)):
            parts.append(f"{f.name}={value(v)}")
    return shlex.join(parts)
