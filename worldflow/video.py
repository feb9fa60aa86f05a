"""Writing frames for people to look at: videos (imageio) and side-by-side grids."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np


def upscale(frames: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling of uint8 (..., H, W, 3) frames."""
    return frames.repeat(scale, axis=-3).repeat(scale, axis=-2) if scale > 1 else frames


def side_by_side(*videos: np.ndarray, gap: int = 2) -> np.ndarray:
    """(T, H, W, 3) videos of equal T and H -> one (T, H, sum W + gaps, 3) video."""
    t, h = videos[0].shape[:2]
    spacer = np.full((t, h, gap, 3), 255, dtype=np.uint8)
    parts = [videos[0]]
    for video in videos[1:]:
        parts += [spacer, video]
    return np.concatenate(parts, axis=2)


def write_video(path: str | Path, frames: np.ndarray, fps: int = 15, scale: int = 4) -> Path:
    """Write uint8 frames (T, H, W, 3), or a batch (B, T, H, W, 3) stacked vertically.

    The format follows the suffix (.mp4 needs imageio-ffmpeg; .gif always works).
    """
    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim == 5:
        frames = np.concatenate(list(frames), axis=1)
    frames = upscale(frames, scale)
    h, w = frames.shape[1:3]
    if Path(path).suffix == ".mp4" and (h % 2 or w % 2):  # yuv420p needs even sizes
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=255)
    if Path(path).suffix == ".mp4":
        iio.imwrite(path, frames, fps=fps, codec="libx264", macro_block_size=1)
    else:
        iio.imwrite(path, frames, duration=1000 / fps, loop=0)
    return Path(path)
