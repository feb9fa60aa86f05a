"""`worldflow generate`: sample a video and write it to a file.

worldflow generate model=cartpole num_frames=32 out=out.mp4 [prompt=...] [context=clip.npy]

    text-to-video   model=shapes prompt="a red circle moving left" guidance=3
    image-to-video  model=shapes context=first.png [prompt=...]
    video-to-video  model=shapes context=source.gif prompt="make the red circle green"
    long video      num_frames= beyond the model's max_frames (the window slides)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional  # OmegaConf reads typing.Optional, not `X | None`

import numpy as np
import torch

from .video import read_frames, write_video


@dataclass
class GenerateConfig:
    model: str = "cartpole"  # a shipped model's name or a directory
    num_frames: int = 32
    out: str = "out.mp4"  # .mp4 / .gif (video) or .npy (uint8 frames (B, T, H, W, 3))
    batch_size: int = 1
    prompt: Optional[str] = None
    # frames to continue: an image (image-to-video), a video (.mp4/.gif; with an instruction
    # as prompt: video-to-video) or .npy of uint8 frames (T, H, W, 3) / (B, T, H, W, 3)
    context: Optional[str] = None
    actions: list = field(default_factory=list)  # C + num_frames - 1 actions (one video)
    sampler: str = "jacobi"
    temperature: float = 1.0
    guidance: float = 0.0
    denoise: Any = "auto"  # "auto" (learned at temperature > 0, none at 0), true, false, "exact"
    seed: int = 0
    fps: int = 15
    scale: int = 4  # nearest-neighbour upscaling of the written video


def run(cfg: GenerateConfig) -> dict:
    from .model import WorldFlow

    model = WorldFlow.from_pretrained(cfg.model)
    context = None
    if cfg.context:
        frames = read_frames(cfg.context, tuple(model.config.frame_size))
        context = torch.from_numpy(frames)
    actions = None
    if cfg.actions:
        b = cfg.batch_size if context is None else context.shape[0]
        actions = torch.tensor(cfg.actions).expand(b, -1)
    t0 = time.perf_counter()
    video = model.generate(
        cfg.num_frames,
        context=context,
        actions=actions,
        prompt=cfg.prompt,
        batch_size=cfg.batch_size,
        sampler=cfg.sampler,
        denoise=cfg.denoise,
        guidance=cfg.guidance,
        temperature=cfg.temperature,
        seed=cfg.seed,
    )
    seconds = time.perf_counter() - t0
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, video.numpy())
    else:
        write_video(out, video.numpy(), fps=cfg.fps, scale=cfg.scale)
    return {
        "command": "generate",
        "out": str(out),
        "frames": cfg.num_frames,
        "batch_size": int(video.shape[0]),
        "frame_size": list(video.shape[2:4]),
        "seconds": round(seconds, 2),
        "ms_per_frame": round(1000 * seconds / cfg.num_frames / video.shape[0], 1),
    }
