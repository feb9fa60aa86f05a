"""Raw environment renders -> model frames: crop, then area-average down to the model size.

Every frame the model sees passes through :func:`preprocess_frames`, both when a dataset is
collected and when a world model is fed real observations, so the two always agree.

Per-environment defaults (:func:`default_preprocessing`; a model's own: :func:`model_preprocessing`):

| env_id              | raw render | crop (top, bottom, left, right) | frame_size (H, W) |
|---------------------|------------|---------------------------------|-------------------|
| CartPole-v0/v1      | 400 x 600  | (168, 318, 0, 600)              | (32, 96)          |
| any other           | any        | None (full frame)               | (32, 32)          |

CartPole's crop is the horizontal band in which the cart, the track line and the pole can
ever appear (see :data:`CARTPOLE_CROP` for the derivation); the rest of its render is white.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

# CartPole's render (gymnasium/envs/classic_control/cartpole.py, 400 x 600 px): scale 125 px
# per metre, cart 50 x 30 px with its top at y=100, axle at y=107.5, pole 10 px wide reaching
# 120 px above the axle, all drawn bottom-up and then flipped. In image rows that puts the
# pole's top at row 172 (upright pole; any tilt, e.g. past the 12 degree termination angle,
# only lowers it), the track line at row 299 and the cart's bottom at row 314. The whole
# width is needed: the track spans +-2.4 m = the full 600 px. Rows 168..317 (150 rows, a few
# pixels margin) at 32 x 96 give 6.25 px per model column and 4.69 px per model row: a mild
# 4:3 vertical stretch that spends the model's rows on the band instead of on white.
CARTPOLE_CROP: tuple[int, int, int, int] = (168, 318, 0, 600)
CARTPOLE_FRAME_SIZE: tuple[int, int] = (32, 96)

DEFAULT_FRAME_SIZE: tuple[int, int] = (32, 32)

# env_id -> (frame_size, crop); environments not listed use (DEFAULT_FRAME_SIZE, None).
_PREPROCESSING: dict[str, tuple[tuple[int, int], tuple[int, int, int, int] | None]] = {
    "CartPole-v0": (CARTPOLE_FRAME_SIZE, CARTPOLE_CROP),
    "CartPole-v1": (CARTPOLE_FRAME_SIZE, CARTPOLE_CROP),
}


def default_preprocessing(
    env_id: str,
) -> tuple[tuple[int, int], tuple[int, int, int, int] | None]:
    """The default ``(frame_size, crop)`` for an environment.

    Args:
        env_id: Gymnasium id, e.g. ``"CartPole-v1"``.

    Returns:
        ``frame_size`` as ``(H, W)`` and ``crop`` as ``(top, bottom, left, right)`` in raw
        render pixels, or ``None`` for the full frame.

    Example:
        >>> default_preprocessing("CartPole-v1")
        ((32, 96), (168, 318, 0, 600))
        >>> default_preprocessing("Pendulum-v1")
        ((32, 32), None)
    """
    return _PREPROCESSING.get(env_id, (DEFAULT_FRAME_SIZE, None))


def model_preprocessing(config) -> tuple[tuple[int, int], tuple[int, int, int, int] | None]:
    """The ``(frame_size, crop)`` a world model's frames are made with: its config's, a crop
    of ``None`` standing for its environment's default (as ``record_episode`` reads it)."""
    crop = config.crop if config.crop is not None else default_preprocessing(config.env_id)[1]
    return tuple(config.frame_size), crop


def preprocess_frames(
    raw: np.ndarray | torch.Tensor,
    frame_size: tuple[int, int],
    crop: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:
    """Crop and downsample raw renders to model frames.

    Downsampling averages each output pixel's area of the input
    (``F.interpolate(mode="area")``): a box filter, so a thin line such as CartPole's 10 px
    pole stays a sharp, full-contrast line instead of being blurred away or aliased.

    Args:
        raw: uint8 renders ``(..., H0, W0, 3)``, numpy array or torch tensor.
        frame_size: output ``(H, W)``.
        crop: ``(top, bottom, left, right)`` in raw pixels, bottom/right exclusive, applied
            before resizing; ``None`` keeps the full frame.

    Returns:
        uint8 tensor ``(..., H, W, 3)``.

    Raises:
        TypeError: ``raw`` is not a uint8 array/tensor.
        ValueError: bad shape, ``frame_size`` or ``crop``.

    Example:
        >>> raw = np.full((400, 600, 3), 255, dtype=np.uint8)
        >>> preprocess_frames(raw, (32, 96), (168, 318, 0, 600)).shape
        torch.Size([32, 96, 3])
    """
    frames = _as_uint8_tensor(raw)
    height, width = _check_frame_size(frame_size)
    raw_height, raw_width = frames.shape[-3], frames.shape[-2]
    if crop is not None:
        top, bottom, left, right = _check_crop(crop, raw_height, raw_width)
        frames = frames[..., top:bottom, left:right, :]
    batch_shape = frames.shape[:-3]
    x = rearrange(frames, "... h w c -> (...) c h w").float()  # (N, 3, h, w)
    if x.shape[0] == 0:
        return torch.empty((*batch_shape, height, width, 3), dtype=torch.uint8)
    x = F.interpolate(x, size=(height, width), mode="area")  # (N, 3, H, W)
    x = x.round_().clamp_(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).reshape(*batch_shape, height, width, 3)


def _as_uint8_tensor(raw: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(raw, np.ndarray):
        if raw.dtype != np.uint8:
            raise TypeError(f"raw: expected dtype uint8, got {raw.dtype}")
        frames = torch.from_numpy(np.ascontiguousarray(raw))
    elif isinstance(raw, torch.Tensor):
        if raw.dtype != torch.uint8:
            raise TypeError(f"raw: expected dtype torch.uint8, got {raw.dtype}")
        frames = raw
    else:
        raise TypeError(f"raw: expected a numpy array or torch tensor, got {type(raw).__name__}")
    if frames.ndim < 3 or frames.shape[-1] != 3:
        raise ValueError(f"raw: expected shape (..., H0, W0, 3), got {tuple(frames.shape)}")
    return frames


def _check_frame_size(frame_size: tuple[int, int]) -> tuple[int, int]:
    if (
        not isinstance(frame_size, (tuple, list))
        or len(frame_size) != 2
        or not all(isinstance(s, (int, np.integer)) and s > 0 for s in frame_size)
    ):
        raise ValueError(f"frame_size: expected two positive ints (H, W), got {frame_size!r}")
    return int(frame_size[0]), int(frame_size[1])


def _check_crop(
    crop: tuple[int, int, int, int], raw_height: int, raw_width: int
) -> tuple[int, int, int, int]:
    if not isinstance(crop, (tuple, list)) or len(crop) != 4:
        raise ValueError(f"crop: expected (top, bottom, left, right) or None, got {crop!r}")
    if not all(isinstance(c, (int, np.integer)) for c in crop):
        raise ValueError(f"crop: expected integer pixel coordinates, got {crop!r}")
    top, bottom, left, right = (int(c) for c in crop)
    if not (0 <= top < bottom <= raw_height and 0 <= left < right <= raw_width):
        raise ValueError(
            f"crop: expected 0 <= top < bottom <= {raw_height} and 0 <= left < right <= "
            f"{raw_width} for a {raw_height} x {raw_width} frame, got {crop!r}"
        )
    return top, bottom, left, right
