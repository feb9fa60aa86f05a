"""A rule-based reader of the shapes world: which shapes, which colours, where, and moving how.

Each pixel takes the nearest of the palette's colours and the background (within
`tolerance`, else it is background); each colour's connected pixels (4-connectivity) at least
`min_area` large are one shape. Its position is its bounding box's top-left corner, its kind
the sprite (`shapes.sprite`) that overlaps it best (intersection over union, over corner
offsets of up to one pixel). On ground-truth renders this is exact; on generated frames the
tolerance and the IoU keep it from being fooled by a few stray pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .shapes import BACKGROUND, COLOURS, DEFAULT, DIRECTIONS, KINDS, ShapesConfig, sprite


@dataclass(frozen=True)
class Seen:
    """A shape as read from a frame: colour, kind, top-left corner (y, x), IoU with its sprite."""

    colour: str
    kind: str
    y: int
    x: int
    iou: float


def read_frame(frame: np.ndarray, cfg: ShapesConfig = DEFAULT, tolerance: float = 80.0,
               min_area: int | None = None) -> list[Seen]:
    """The shapes in one uint8 frame (H, W, 3), largest first."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame: expected uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
    s = cfg.shape_size
    min_area = s * s // 4 if min_area is None else min_area
    palette = np.array([BACKGROUND, *COLOURS.values()], np.float32)
    distance = np.linalg.norm(frame[:, :, None, :].astype(np.float32) - palette, axis=-1)
    label = distance.argmin(-1)
    label[distance.min(-1) > tolerance] = 0
    templates = {kind: sprite(kind, s) for kind in KINDS}
    seen = []
    for index, colour in enumerate(COLOURS, start=1):
        components, count = ndimage.label(label == index)
        for c in range(1, count + 1):
            mask = components == c
            if mask.sum() < min_area:
                continue
            ys, xs = np.nonzero(mask)
            kind, y, x, iou = _best_sprite(mask, int(ys.min()), int(xs.min()), templates, s)
            seen.append((int(mask.sum()), Seen(colour, kind, y, x, iou)))
    return [item for _, item in sorted(seen, key=lambda pair: -pair[0])]


def _best_sprite(mask: np.ndarray, top: int, left: int, templates: dict, s: int):
    h, w = mask.shape
    best = ("square", top, left, -1.0)
    for dy in (0, -1, 1):
        for dx in (0, -1, 1):
            y, x = min(max(top + dy, 0), h - s), min(max(left + dx, 0), w - s)
            for kind, template in templates.items():
                placed = np.zeros_like(mask)
                placed[y : y + s, x : x + s] = template
                iou = (placed & mask).sum() / (placed | mask).sum()
                if iou > best[3]:
                    best = (kind, y, x, float(iou))
    return best


@dataclass(frozen=True)
class Track:
    """One shape followed over a clip by its colour: its kind at the first frame, its corner
    in every frame where it was seen (None where not), and the direction it moved between
    the first two frames where it was seen `span` frames apart (None if it did not move)."""

    colour: str
    kind: str
    corners: list[tuple[int, int] | None]
    direction: str | None


def read_clip(frames: np.ndarray, cfg: ShapesConfig = DEFAULT, span: int | None = None,
              **kwargs) -> list[Track]:
    """Track each colour over frames uint8 (T, H, W, 3); colours seen in the first frame only.

    `direction` compares the corner at frame 0 with the one at frame `span` (default
    `cfg.clean_steps`, the steps a caption is guaranteed to describe)."""
    span = cfg.clean_steps if span is None else span
    per_frame = [{seen.colour: seen for seen in read_frame(f, cfg, **kwargs)} for f in frames]
    tracks = []
    for colour, first in per_frame[0].items():
        corners = [(f[colour].y, f[colour].x) if colour in f else None for f in per_frame]
        direction = None
        if span < len(corners) and corners[span] is not None:
            dy, dx = corners[span][0] - first.y, corners[span][1] - first.x
            direction = _direction(dy, dx)
        tracks.append(Track(colour, first.kind, corners, direction))
    return tracks


def _direction(dy: int, dx: int) -> str | None:
    if dy == dx == 0:
        return None
    unit = (int(np.sign(dy)), 0) if abs(dy) > abs(dx) else (0, int(np.sign(dx)))
    return next(name for name, d in DIRECTIONS.items() if d == unit)


def parse_caption(text: str) -> list[tuple[str, str, str]]:
    """"a red circle moving left and ..." -> [("red", "circle", "left"), ...]."""
    parts = []
    for phrase in text.split(" and "):
        words = phrase.split()
        if len(words) != 5 or words[0] != "a" or words[3] != "moving":
            raise ValueError(f"caption: expected 'a <colour> <kind> moving <direction>' phrases, "
                             f"got {phrase!r}")
        parts.append((words[1], words[2], words[4]))
    return parts


def caption_adherence(frames: np.ndarray, text: str, cfg: ShapesConfig = DEFAULT) -> bool:
    """Whether a clip shows exactly the caption's shapes, each of the named colour and kind
    and moving the named direction over the first `cfg.clean_steps` steps."""
    want = sorted(parse_caption(text))
    got = sorted((t.colour, t.kind, t.direction or "still") for t in read_clip(frames, cfg))
    return want == got
