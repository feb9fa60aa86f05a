"""A captioned video world with a known answer: coloured shapes moving on a plain background.

Each clip holds one or two shapes (circle, square, triangle) of distinct colours, each moving
along one axis at a constant `speed` (pixels a frame). A shape that would leave the frame
reverses that axis and stays put for the frame; a shape that would come closer than one
pixel to another reverses and stays put (shapes move in turn, first to last). So shapes
never overlap or touch, and every frame can be read back exactly
(`worldflow.data.shapes_reader`).

The caption names each shape's colour, kind and direction at the first frame: "a red
circle moving left and a blue square moving down". A clip's first `clean_steps` steps are
free of bounces, so the direction the caption names is the one seen. Optional actions push
the first shape (0: none, 1-4: left, right, up, down: its velocity becomes that direction's).
An edit pair (`edit_pair`) is a clip and the same clip with one shape recoloured, and the
instruction that says so: "make the red circle green".

Rendering is pixel-exact (no anti-aliasing): frames are uint8 (T, H, W, 3), the background
`BACKGROUND`, each shape's pixels exactly its colour in `COLOURS`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 70),
    "blue": (60, 100, 240),
    "yellow": (235, 215, 40),
}
KINDS = ("circle", "square", "triangle")
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
ACTIONS = (None, "left", "right", "up", "down")  # action i pushes the first shape that way
BACKGROUND = (16, 16, 16)


def sprite(kind: str, size: int) -> np.ndarray:
    """The boolean mask (size, size) of a shape: a full square, a disc, an upward triangle."""
    y, x = np.mgrid[:size, :size] + 0.5
    c = size / 2
    if kind == "square":
        return np.ones((size, size), bool)
    if kind == "circle":
        return (y - c) ** 2 + (x - c) ** 2 <= c**2
    if kind == "triangle":
        return np.abs(x - c) <= y / 2 + 0.5
    raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")


@dataclass(frozen=True)
class Shape:
    """One shape: its kind, colour, top-left corner (y, x) and velocity (vy, vx)."""

    kind: str
    colour: str
    y: int
    x: int
    vy: int
    vx: int

    @property
    def direction(self) -> str:
        unit = (int(np.sign(self.vy)), int(np.sign(self.vx)))
        return next(name for name, d in DIRECTIONS.items() if d == unit)


@dataclass(frozen=True)
class ShapesConfig:
    """The world's knobs. `size` is the frame side, `shape_size` the shapes' side."""

    size: int = 32
    shape_size: int = 8
    speed: int = 2
    max_shapes: int = 2
    clip_len: int = 8
    clean_steps: int = 3  # steps after the first frame with no bounce (the caption holds)

    def __post_init__(self) -> None:
        for name in ("size", "shape_size", "speed", "max_shapes", "clip_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if self.max_shapes > len(COLOURS):
            raise ValueError(f"max_shapes: expected at most {len(COLOURS)} (one colour each), "
                             f"got {self.max_shapes}")
        room = self.size - self.shape_size
        if room < 2 * (self.speed * self.clean_steps + 1):
            raise ValueError(f"size: expected room for {self.clean_steps} clean steps of "
                             f"{self.speed} px beside a {self.shape_size} px shape, got {self.size}")


DEFAULT = ShapesConfig()  # 32x32 frames, 8-pixel shapes, 2 pixels a frame, 8-frame clips


def _apart(a: Shape, b: Shape, size: int) -> bool:
    """Bounding boxes at least one pixel apart (so each shape is its own component)."""
    reach = size + 1
    return a.y + reach <= b.y or b.y + reach <= a.y or a.x + reach <= b.x or b.x + reach <= a.x


def step(shapes: list[Shape], cfg: ShapesConfig, action: int = 0) -> list[Shape]:
    """One frame of physics (see the module docstring); `action` pushes the first shape."""
    shapes = list(shapes)
    if action:
        dy, dx = DIRECTIONS[ACTIONS[action]]
        shapes[0] = replace(shapes[0], vy=dy * cfg.speed, vx=dx * cfg.speed)
    limit = cfg.size - cfg.shape_size
    for i, s in enumerate(shapes):
        y, x, vy, vx = s.y + s.vy, s.x + s.vx, s.vy, s.vx
        if not 0 <= y <= limit:
            y, vy = s.y, -vy
        if not 0 <= x <= limit:
            x, vx = s.x, -vx
        moved = replace(s, y=y, x=x, vy=vy, vx=vx)
        hit = next((j for j, o in enumerate(shapes)
                    if j != i and not _apart(moved, o, cfg.shape_size)), None)
        shapes[i] = moved if hit is None else replace(s, vy=-s.vy, vx=-s.vx)
    return shapes


def render(shapes: list[Shape], cfg: ShapesConfig) -> np.ndarray:
    """One frame, uint8 (size, size, 3)."""
    frame = np.empty((cfg.size, cfg.size, 3), np.uint8)
    frame[:] = BACKGROUND
    for s in shapes:
        mask = sprite(s.kind, cfg.shape_size)
        window = frame[s.y : s.y + cfg.shape_size, s.x : s.x + cfg.shape_size]
        window[mask] = COLOURS[s.colour]
    return frame


def caption(shapes: list[Shape]) -> str:
    return " and ".join(f"a {s.colour} {s.kind} moving {s.direction}" for s in shapes)


def random_shapes(rng: np.random.Generator, cfg: ShapesConfig) -> list[Shape]:
    """1..max_shapes shapes of distinct colours, apart, whose first `clean_steps` steps
    have no bounce (rejection sampling)."""
    limit = cfg.size - cfg.shape_size
    while True:
        n = int(rng.integers(1, cfg.max_shapes + 1))
        colours = rng.choice(list(COLOURS), size=n, replace=False)
        shapes = []
        for colour in colours:
            dy, dx = DIRECTIONS[str(rng.choice(list(DIRECTIONS)))]
            shapes.append(Shape(str(rng.choice(KINDS)), str(colour), int(rng.integers(0, limit + 1)),
                                int(rng.integers(0, limit + 1)), dy * cfg.speed, dx * cfg.speed))
        if not all(_apart(a, b, cfg.shape_size) for i, a in enumerate(shapes) for b in shapes[i + 1 :]):
            continue
        later = shapes
        for _ in range(cfg.clean_steps):
            later = step(later, cfg)
        k = cfg.clean_steps
        if all((a.y + k * a.vy, a.x + k * a.vx, a.vy, a.vx) == (b.y, b.x, b.vy, b.vx)
               for a, b in zip(shapes, later)):
            return shapes


@dataclass
class Clip:
    """A clip: frames uint8 (T, H, W, 3), its caption, the actions taken after each frame
    (int64 (T,), `actions[t]` conditions frame t + 1) and the shapes at every frame."""

    frames: np.ndarray
    caption: str
    actions: np.ndarray
    states: list[list[Shape]]


def simulate(shapes: list[Shape], cfg: ShapesConfig, num_frames: int,
             actions: np.ndarray | None = None) -> Clip:
    """`num_frames` frames from `shapes` (any length: long videos bounce and collide)."""
    actions = np.zeros(num_frames, np.int64) if actions is None else np.asarray(actions, np.int64)
    if actions.shape != (num_frames,) or actions.min(initial=0) < 0 or actions.max(initial=0) >= len(ACTIONS):
        raise ValueError(f"actions: expected {num_frames} ints in [0, {len(ACTIONS)}), got {actions!r}")
    states = [shapes]
    for t in range(num_frames - 1):
        states.append(step(states[-1], cfg, int(actions[t])))
    frames = np.stack([render(s, cfg) for s in states])
    return Clip(frames, caption(shapes), actions, states)


def random_clip(seed: int | np.random.Generator, cfg: ShapesConfig = DEFAULT,
                with_actions: bool = False) -> Clip:
    """A clip of `cfg.clip_len` frames from a random start; with actions, each step pushes
    the first shape with probability 1/4 (a uniform direction)."""
    rng = np.random.default_rng(seed)
    shapes = random_shapes(rng, cfg)
    actions = None
    if with_actions:
        push = rng.random(cfg.clip_len) < 0.25
        actions = np.where(push, rng.integers(1, len(ACTIONS), cfg.clip_len), 0)
    return simulate(shapes, cfg, cfg.clip_len, actions)


def edit_pair(seed: int | np.random.Generator, cfg: ShapesConfig = DEFAULT,
              num_frames: int | None = None) -> tuple[Clip, Clip, str]:
    """(source, target, instruction): the target is the source with one shape recoloured
    to a colour no shape of the clip has."""
    rng = np.random.default_rng(seed)
    shapes = random_shapes(rng, cfg)
    n = cfg.clip_len if num_frames is None else num_frames
    i = int(rng.integers(len(shapes)))
    free = [c for c in COLOURS if c not in {s.colour for s in shapes}]
    new = str(rng.choice(free))
    edited = [replace(s, colour=new) if j == i else s for j, s in enumerate(shapes)]
    instruction = f"make the {shapes[i].colour} {shapes[i].kind} {new}"
    return simulate(shapes, cfg, n), simulate(edited, cfg, n), instruction


class ShapesClips:
    """An endless, seeded source of training clips for a text-conditioned model.

    Item `i` depends only on `(seed, i)`: with probability `edit_fraction` an edit sample
    (the first half of the frames a source clip, the second half the same clip edited, the
    prompt the instruction: video-to-video), else a captioned clip (text-to-video); with
    probability `caption_dropout` the prompt is "" (the null prompt of classifier-free
    guidance). Items are dicts: `frames` uint8 (T, H, W, 3), `prompt` str.
    """

    def __init__(self, cfg: ShapesConfig = DEFAULT, seed: int = 0, edit_fraction: float = 0.25,
                 caption_dropout: float = 0.1):
        for name, value in (("edit_fraction", edit_fraction), ("caption_dropout", caption_dropout)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}")
        if edit_fraction and cfg.clip_len % 2:
            raise ValueError(f"clip_len: expected an even length for edit samples, got {cfg.clip_len}")
        self.cfg, self.seed = cfg, seed
        self.edit_fraction, self.caption_dropout = edit_fraction, caption_dropout

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, index])
        if rng.random() < self.edit_fraction:
            source, target, prompt = edit_pair(rng, self.cfg, self.cfg.clip_len // 2)
            frames = np.concatenate([source.frames, target.frames])
        else:
            clip = random_clip(rng, self.cfg)
            frames, prompt = clip.frames, clip.caption
        if rng.random() < self.caption_dropout:
            prompt = ""
        return {"frames": frames, "prompt": prompt}

    def batch(self, indices) -> tuple[np.ndarray, list[str]]:
        """Frames uint8 (B, T, H, W, 3) and prompts of items `indices`."""
        items = [self[int(i)] for i in indices]
        return np.stack([item["frames"] for item in items]), [item["prompt"] for item in items]
