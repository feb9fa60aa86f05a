"""Frames in and out of files people look at: videos and images (imageio), grids."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np

from .errors import WorldFlowError


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


IMAGES = (".png", ".jpg", ".jpeg", ".bmp")
VIDEOS = (".mp4", ".gif")


def read_frames(path: str | Path, frame_size: tuple[int, int], name: str = "context") -> np.ndarray:
    """uint8 frames (B, T, H, W, 3) from a .npy ((T, H, W, 3) or (B, T, H, W, 3)), an image
    (one frame) or a video. A file an integer factor larger than `frame_size` (a video
    `write_video` upscaled) is brought back by taking every factor-th pixel."""
    path = Path(path)
    kinds = (".npy", *IMAGES, *VIDEOS)
    if path.suffix.lower() not in kinds or not path.is_file():
        raise WorldFlowError(f"{name}: expected an existing {'/'.join(kinds)} file, got {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        frames = np.load(path)
    else:
        frames = np.asarray(iio.imread(path, index=None if suffix in VIDEOS else 0))
        frames = frames[None] if suffix in IMAGES else frames
        frames = np.repeat(frames[..., None], 3, -1) if frames.ndim == 3 else frames[..., :3]
    frames = frames[None] if frames.ndim == 4 else frames
    h, w = frame_size
    if frames.ndim != 5 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise WorldFlowError(f"{name}: expected uint8 frames (T, {h}, {w}, 3), got {frames.dtype} "
                             f"{tuple(frames.shape)} from {str(path)!r}")
    fy, fx = frames.shape[2] // h, frames.shape[3] // w
    if fy == fx >= 1 and frames.shape[2] in (fy * h, fy * h + 1) and frames.shape[3] in (fx * w, fx * w + 1):
        frames = frames[:, :, : fy * h : fy, : fx * w : fx]  # +1: write_video's even-size padding
    if frames.shape[2:4] != (h, w):
        raise WorldFlowError(f"{name}: expected {h}x{w} frames (or an integer multiple), got "
                             f"{frames.shape[2]}x{frames.shape[3]} from {str(path)!r}")
    return np.ascontiguousarray(frames)
