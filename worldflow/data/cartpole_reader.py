"""Read CartPole's state (cart position, pole angle) back from model-resolution frames.

Benchmarks use it to check that frames a world model dreams are physically right: read
``(x, theta)`` from generated frames and compare them with the real environment, or check
consistency across a rollout. It inverts Gymnasium's CartPole render
(gymnasium/envs/classic_control/cartpole.py, 400 x 600 px, 125 px per metre):

| drawn            | colour           | where (image rows, after the render's vertical flip) |
|------------------|------------------|------------------------------------------------------|
| background       | (255, 255, 255)  | everywhere else                                      |
| cart, track line | (0, 0, 0)        | cart: 51 px wide, rows 284-314, centred on column    |
|                  |                  | 300 + 125 x; track: row 299, full width              |
| pole             | (202, 152, 101)  | 10 px wide, from 5 px below to 120 px above the axle |
| axle             | (129, 132, 203)  | disc of radius 5 at row 292, on the cart's centre    |

Every model pixel is an area average of such colours, so it is unmixed exactly into the
fractions of the four colours (four unknowns, three channels plus "fractions sum to one").
The cart's position is the centroid of its black fraction in rows that hold only the cart
(below the track line); the pole's angle is the slope of a line fitted through the pole's
centre in each row above the cart, in raw pixel coordinates so that a non-square
crop-and-resize does not skew it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from worldflow.data.preprocess import CARTPOLE_CROP, CARTPOLE_FRAME_SIZE

RENDER_HEIGHT, RENDER_WIDTH = 400, 600
PIXELS_PER_METRE = RENDER_WIDTH / (2 * 2.4)  # the render spans the +-2.4 m track
CART_WIDTH_PX = 51.0  # gfxdraw fills the 50 px polygon's end columns too
CART_ONLY_ROWS = (300, 315)  # raw rows below the track line (299) down to the cart's bottom
CART_TOP_ROW = 284  # the pole is only unobstructed above this raw row

# Columns: white, black, pole, axle colour; last row: the fractions sum to one.
_COLOURS = torch.tensor(
    [
        [255.0, 0.0, 202.0, 129.0],
        [255.0, 0.0, 152.0, 132.0],
        [255.0, 0.0, 101.0, 203.0],
        [1.0, 1.0, 1.0, 1.0],
    ],
    dtype=torch.float64,
)
_UNMIX = torch.linalg.inv(_COLOURS).float()  # (4, 4): [r, g, b, 1] -> fractions
_MIN_FRACTION = 0.1  # below this a pixel's fraction is uint8 rounding noise
_MIN_CART_PIXELS = 0.5  # model pixels of cart needed to report a position
_MIN_POLE_ROWS = 4  # model rows of uncut pole needed to report an angle
_BATCH = 2048  # frames unmixed at once


def cartpole_pixels_per_unit(
    frame_size: tuple[int, int] = CARTPOLE_FRAME_SIZE,
    crop: tuple[int, int, int, int] | None = CARTPOLE_CROP,
) -> float:
    """Model pixels (horizontal) per metre of cart position, for frames made with this
    ``frame_size`` and ``crop``: ``x_error * cartpole_pixels_per_unit()`` is in model pixels.

    Example:
        >>> cartpole_pixels_per_unit()  # 125 px/m raw, 600 raw px -> 96 model columns
        20.0
    """
    left, right = (crop[2], crop[3]) if crop is not None else (0, RENDER_WIDTH)
    return PIXELS_PER_METRE * frame_size[1] / (right - left)


def read_cartpole_state(
    frames: np.ndarray | torch.Tensor,
    frame_size: tuple[int, int] = CARTPOLE_FRAME_SIZE,
    crop: tuple[int, int, int, int] | None = CARTPOLE_CROP,
) -> tuple[np.ndarray, np.ndarray] | tuple[torch.Tensor, torch.Tensor]:
    """Cart position and pole angle of CartPole model frames.

    Args:
        frames: uint8 ``(..., H, W, 3)`` frames made by ``preprocess_frames`` with
            ``frame_size`` and ``crop`` (numpy array or torch tensor).
        frame_size: ``(H, W)`` the frames were resized to.
        crop: ``(top, bottom, left, right)`` of the 400 x 600 render they were cut from,
            or None for the full render.

    Returns:
        ``(x, theta)``, float32 ``(...)`` each, numpy if ``frames`` is numpy, else torch:
        ``x`` in metres (as ``state[0]``: 0 at the screen centre, +-2.4 at its edges),
        ``theta`` in radians (as ``state[2]``: positive leans right). NaN where the cart
        (for ``x``) is not in the frame, or where fewer than 4 model rows of pole are seen
        whole (for ``theta``: off screen, or leaning out of the picture at |x| > ~2.25).

    Raises:
        TypeError: ``frames`` is not uint8.
        ValueError: ``frames`` does not have shape ``(..., *frame_size, 3)``.

    Example:
        >>> x, theta = read_cartpole_state(frames)  # doctest: +SKIP
        >>> x_error_px = abs(x - state[:, 0]) * cartpole_pixels_per_unit()  # doctest: +SKIP
    """
    as_numpy = isinstance(frames, np.ndarray)
    images = torch.from_numpy(np.ascontiguousarray(frames)) if as_numpy else frames
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        found = getattr(frames, "dtype", type(frames).__name__)
        raise TypeError(f"frames: expected a uint8 numpy array or torch tensor, got {found}")
    height, width = frame_size
    if images.ndim < 3 or tuple(images.shape[-3:]) != (height, width, 3):
        raise ValueError(
            f"frames: expected shape (..., {height}, {width}, 3) for frame_size={frame_size}, "
            f"got {tuple(images.shape)}"
        )
    top, bottom, left, right = crop if crop is not None else (0, RENDER_HEIGHT, 0, RENDER_WIDTH)
    row_scale, col_scale = (bottom - top) / height, (right - left) / width
    # Raw-pixel coordinates of model pixel centres (continuous: raw pixel i spans [i, i+1)).
    rows_raw = top + (torch.arange(height, dtype=torch.float32) + 0.5) * row_scale  # (H,)
    cols_raw = left + (torch.arange(width, dtype=torch.float32) + 0.5) * col_scale  # (W,)
    # Raw rows each model row averages, as F.interpolate(mode="area") draws its bins.
    row_starts = top + np.floor(np.arange(height) * row_scale)  # (H,)
    row_ends = top + np.ceil((np.arange(height) + 1) * row_scale)  # (H,)
    above_cart = torch.from_numpy(row_ends <= CART_TOP_ROW)  # (H,)

    xs, thetas = [], []
    for batch in images.reshape(-1, height, width, 3).split(_BATCH):  # bounded memory
        rgb = batch.float()  # (n, H, W, 3)
        rgb1 = torch.cat([rgb, torch.ones_like(rgb[..., :1])], dim=-1)  # (n, H, W, 4)
        fractions = (rgb1 @ _UNMIX.T).clamp(0, 1)  # (n, H, W, 4): white, black, pole, axle
        fractions = fractions * (fractions > _MIN_FRACTION)
        xs.append(_cart_position(fractions[..., 1], row_starts, row_ends, cols_raw, col_scale))
        thetas.append(_pole_angle(fractions[..., 2] * above_cart[:, None], rows_raw, cols_raw))
    batch_shape = images.shape[:-3]
    x = torch.cat(xs).reshape(batch_shape) if xs else torch.empty(batch_shape)
    theta = torch.cat(thetas).reshape(batch_shape) if thetas else torch.empty(batch_shape)
    return (x.numpy(), theta.numpy()) if as_numpy else (x, theta)


def _cart_position(
    black: torch.Tensor,
    starts: np.ndarray,
    ends: np.ndarray,
    cols_raw: torch.Tensor,
    col_scale: float,
) -> torch.Tensor:
    """Cart centre in metres from black fractions ``(N, H, W)``; returns ``(N,)``."""
    width = black.shape[-1]
    # Model rows whose raw bin lies in the cart-only band: there the black fraction is the
    # cart's coverage of each column.
    inside = (starts >= CART_ONLY_ROWS[0]) & (ends <= CART_ONLY_ROWS[1])
    if not inside.any():  # coarse rows: take those mostly in the band
        overlap = np.minimum(ends, CART_ONLY_ROWS[1]) - np.maximum(starts, CART_ONLY_ROWS[0])
        inside = overlap >= 0.5 * (ends - starts)
    black = black[:, torch.from_numpy(inside)]  # (N, h, W)
    # A row that also holds the track line (coarse rows only) has it as a uniform background.
    background = black.median(dim=-1, keepdim=True).values  # (N, h, 1)
    coverage = ((black - background) / (1 - background).clamp_min(1e-3)).clamp(0, 1)
    coverage = coverage.mean(dim=1)  # (N, W), in [0, 1]
    visible = coverage.sum(-1)  # (N,) cart width seen, model px
    centre = (coverage * cols_raw).sum(-1) / visible.clamp_min(1e-9)  # (N,) raw px
    # A cart cut by the frame's edge: its centre is half a cart from the edge it does show,
    # located to sub-pixel precision by the coverage of the column it falls in.
    columns = torch.arange(width)
    seen = coverage > _MIN_FRACTION  # (N, W)
    first = torch.where(seen, columns, width).amin(-1).clamp_max(width - 1)  # (N,)
    last = torch.where(seen, columns, -1).amax(-1).clamp_min(0)
    first_cover = coverage.gather(-1, first[:, None])[:, 0]
    last_cover = coverage.gather(-1, last[:, None])[:, 0]
    right_end = cols_raw[last] + (last_cover - 0.5) * col_scale  # (N,) raw px
    left_end = cols_raw[first] + (0.5 - first_cover) * col_scale
    half_cart = CART_WIDTH_PX / 2
    centre = torch.where(seen[:, 0], right_end - half_cart, centre)
    centre = torch.where(seen[:, -1], left_end + half_cart, centre)
    x = (centre - RENDER_WIDTH / 2) / PIXELS_PER_METRE
    return torch.where(visible >= _MIN_CART_PIXELS, x, math.nan)


def _pole_angle(pole: torch.Tensor, rows_raw: torch.Tensor, cols_raw: torch.Tensor) -> torch.Tensor:
    """Pole angle in radians from pole fractions ``(N, H, W)``; returns ``(N,)``.

    Fits a line through the pole's centre in each row (weighted least squares of column on
    row). The caller zeroes rows at the cart, where the axle and the cart hide the pole's
    foot; rows where the pole runs into the frame's left or right edge are left out: near
    the ends of the track the pole can lean out of the picture, and a centroid or principal
    axis of the cut-off part would be skewed by the slanted cut.
    """
    row_mass = pole.sum(-1)  # (N, H)
    row_centre = (pole * cols_raw).sum(-1) / row_mass.clamp_min(1e-9)  # (N, H) raw px
    cut = (pole[..., 0] > 0) | (pole[..., -1] > 0)
    weights = row_mass * ~cut  # (N, H)
    total = weights.sum(-1)  # (N,)
    mean_row = (weights * rows_raw).sum(-1) / total.clamp_min(1e-9)
    mean_centre = (weights * row_centre).sum(-1) / total.clamp_min(1e-9)
    d_row = rows_raw - mean_row[:, None]  # (N, H)
    slope = (weights * d_row * (row_centre - mean_centre[:, None])).sum(-1) / (
        (weights * d_row**2).sum(-1).clamp_min(1e-9)
    )  # raw columns per raw row, rows growing downwards
    theta = torch.atan(-slope)
    enough = (weights > 0).sum(-1) >= _MIN_POLE_ROWS
    return torch.where(enough, theta, math.nan)
