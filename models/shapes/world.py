"""Shapes world: one coloured circle or square on a plain background, moving.

The world is what the shipped tiny model learns, so everything about it is chosen to make
prompt-following *measurable*: one object, six well-separated colours, plain backgrounds,
constant speeds.

Motion:

* ``left``/``right``/``up``/``down``: constant velocity on a torus. An object leaving one edge
  re-enters at the opposite edge (it is drawn split across both), so a clip of any length, and
  any time window of a long clip, is a valid sample of the world. This is what lets time-tiled
  long videos stay in distribution.
* ``bounce``: diagonal constant speed, reflecting off the walls (the object stays inside).

Start positions (``sample_spec(start_policy=...)``):

* ``uniform``: anywhere on the torus. Then the average clip of a caption is the same blob for
  every direction word, so at high noise direction lives only in frame-to-frame relations.
* ``entering``: a directional object starts in the trailing 30% of the frame along its motion
  (or just entering from that edge), so the clip's first frames differ by direction to first
  order. The tiny model v2 trains on a mix: it is what makes "moving right" learnable for a
  window that starts a video, while windows starting mid-clip (later in such clips, or in
  uniform ones) keep the torus statistics that long, time-tiled videos need.

Sizes and speeds are relative to the frame's short side (speeds per second), so the same
caption means the same picture at any resolution and fps.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "magenta": (210, 50, 220),
    "cyan": (40, 210, 220),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "grey": (96, 96, 96),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square")
SIZES: dict[str, float] = {"small": 0.2, "medium": 0.28, "large": 0.36}
"""Object diameter (circle) or side (square) as a fraction of the frame's short side."""
SPEEDS: dict[str, float] = {"slow": 0.15, "medium": 0.3, "fast": 0.45}
"""Short sides per second."""
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
MOTIONS = ("left", "right", "up", "down", "bounce")

HELD_OUT: frozenset[tuple[str, str, str]] = frozenset(
    {
        # (colour, shape, motion): never rendered or captioned in training; each colour and each
        # direction appears once or twice, so held-out scores measure composition, not vocabulary.
        ("red", "square", "up"),
        ("green", "circle", "left"),
        ("blue", "square", "right"),
        ("yellow", "circle", "down"),
        ("magenta", "square", "left"),
        ("cyan", "circle", "up"),
    }
)

TRAIN_SIZES: tuple[tuple[int, int], ...] = ((64, 64), (96, 64), (64, 96))
"""(width, height) buckets the tiny model is trained on: square, landscape, portrait."""
NATIVE_FPS = 8.0
TRAIN_FPS: tuple[float, ...] = (6.0, 8.0, 8.0, 10.0, 12.0)

Split = Literal["train", "heldout", "all"]
StartPolicy = Literal["uniform", "entering"]
ENTERING_SPAN: tuple[float, float] = (-0.1, 0.3)
"""Where an ``entering`` object's centre starts along its motion, as a fraction of the frame
measured from the edge it moves away from (negative: partly outside, entering; it wraps)."""


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one clip deterministically."""

    colour: str
    shape: str
    size: str
    speed: str
    motion: str
    background: str
    width: int
    height: int
    fps: float
    num_frames: int
    start: tuple[float, float]
    """Object centre at frame 0 as fractions of (width, height)."""
    bounce_signs: tuple[int, int] = (1, 1)
    """Initial (x, y) direction signs of a bouncing object."""

    @property
    def diameter_px(self) -> float:
        return SIZES[self.size] * min(self.width, self.height)

    @property
    def speed_px_per_frame(self) -> float:
        return SPEEDS[self.speed] * min(self.width, self.height) / self.fps

    @property
    def velocity_px_per_frame(self) -> tuple[float, float]:
        speed = self.speed_px_per_frame
        if self.motion == "bounce":
            component = speed / math.sqrt(2.0)
            return (component * self.bounce_signs[0], component * self.bounce_signs[1])
        dx, dy = DIRECTIONS[self.motion]
        return (speed * dx, speed * dy)

    @property
    def is_held_out(self) -> bool:
        return (self.colour, self.shape, self.motion) in HELD_OUT

    def attributes(self) -> dict[str, str]:
        return {
            "colour": self.colour,
            "shape": self.shape,
            "size": self.size,
            "speed": self.speed,
            "motion": self.motion,
            "background": self.background,
        }


def _triangle_wave(position: np.ndarray, low: float, high: float) -> np.ndarray:
    """Reflect positions into [low, high] (a ball bouncing between two walls)."""
    span = high - low
    if span <= 0:
        return np.full_like(position, (low + high) / 2)
    phase = np.mod(position - low, 2 * span)
    return low + np.where(phase <= span, phase, 2 * span - phase)


def centre_track(spec: ClipSpec) -> np.ndarray:
    """Object centre per frame in pixels, ``(T, 2)`` as (x, y); directional motion wraps."""
    t = np.arange(spec.num_frames, dtype=np.float64)
    vx, vy = spec.velocity_px_per_frame
    x = spec.start[0] * spec.width + vx * t
    y = spec.start[1] * spec.height + vy * t
    if spec.motion == "bounce":
        radius = spec.diameter_px / 2
        x = _triangle_wave(x, radius, spec.width - radius)
        y = _triangle_wave(y, radius, spec.height - radius)
    else:
        x = np.mod(x, spec.width)
        y = np.mod(y, spec.height)
    return np.stack([x, y], axis=1)


def object_coverage(spec: ClipSpec) -> np.ndarray:
    """Anti-aliased object coverage in [0, 1] per pixel, ``(T, H, W)`` float32."""
    centres = centre_track(spec)  # (T, 2)
    xs = np.arange(spec.width, dtype=np.float64) + 0.5
    ys = np.arange(spec.height, dtype=np.float64) + 0.5
    # Toroidal offsets so an object crossing an edge is drawn on both sides.
    dx = xs[None, :] - centres[:, 0:1]  # (T, W)
    dx = np.mod(dx + spec.width / 2, spec.width) - spec.width / 2
    dy = ys[None, :] - centres[:, 1:2]  # (T, H)
    dy = np.mod(dy + spec.height / 2, spec.height) - spec.height / 2
    half = spec.diameter_px / 2
    if spec.shape == "circle":
        distance = np.sqrt(dx[:, None, :] ** 2 + dy[:, :, None] ** 2)  # (T, H, W)
        coverage = np.clip(half + 0.5 - distance, 0.0, 1.0)
    else:
        cover_x = np.clip(half + 0.5 - np.abs(dx), 0.0, 1.0)  # (T, W)
        cover_y = np.clip(half + 0.5 - np.abs(dy), 0.0, 1.0)  # (T, H)
        coverage = cover_y[:, :, None] * cover_x[:, None, :]
    return coverage.astype(np.float32)


def render(spec: ClipSpec) -> np.ndarray:
    """The clip as uint8 RGB frames ``(T, H, W, 3)``."""
    coverage = object_coverage(spec)[..., None]  # (T, H, W, 1)
    colour = np.asarray(COLOURS[spec.colour], dtype=np.float32)
    background = np.asarray(BACKGROUNDS[spec.background], dtype=np.float32)
    frames = background * (1.0 - coverage) + colour * coverage
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def _allowed(colour: str, shape: str, motion: str, split: Split) -> bool:
    held = (colour, shape, motion) in HELD_OUT
    if split == "train":
        return not held
    if split == "heldout":
        return held
    return True


def sample_spec(
    rng: np.random.Generator,
    *,
    split: Split = "train",
    width: int | None = None,
    height: int | None = None,
    fps: float | None = None,
    num_frames: int = 29,
    motions: tuple[str, ...] = MOTIONS,
    overrides: dict[str, str] | None = None,
    start_policy: StartPolicy = "uniform",
) -> ClipSpec:
    """Draw a random clip description from the world (rejection-sampling the split)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if start_policy not in ("uniform", "entering"):
        raise ValueError(f"start_policy must be 'uniform' or 'entering', got {start_policy!r}")
    overrides = overrides or {}
    if width is None or height is None:
        width, height = TRAIN_SIZES[int(rng.integers(len(TRAIN_SIZES)))]
    if fps is None:
        fps = float(TRAIN_FPS[int(rng.integers(len(TRAIN_FPS)))])
    for _ in range(10_000):
        colour = overrides.get("colour") or str(rng.choice(list(COLOURS)))
        shape = overrides.get("shape") or str(rng.choice(SHAPES))
        motion = overrides.get("motion") or str(rng.choice(list(motions)))
        if _allowed(colour, shape, motion, split):
            break
    else:
        raise ValueError(f"no combination in split {split!r} matches {overrides}")
    size = overrides.get("size") or str(rng.choice(list(SIZES)))
    speed = overrides.get("speed") or str(rng.choice(list(SPEEDS)))
    background = overrides.get("background") or str(rng.choice(list(BACKGROUNDS)))
    if motion == "bounce":
        # Start anywhere the object fits; bouncing keeps it inside the frame.
        radius = SIZES[size] * min(width, height) / 2
        start = (
            float(rng.uniform(radius / width, 1 - radius / width)),
            float(rng.uniform(radius / height, 1 - radius / height)),
        )
    else:
        start = (float(rng.uniform(0, 1)), float(rng.uniform(0, 1)))
        if start_policy == "entering":
            along = float(rng.uniform(*ENTERING_SPAN))
            dx, dy = DIRECTIONS[motion]
            # Measured from the trailing edge: moving right starts near x = 0, left near x = 1.
            position = along if (dx + dy) > 0 else 1.0 - along
            start = (position % 1.0, start[1]) if dx else (start[0], position % 1.0)
    signs = (int(rng.choice([-1, 1])), int(rng.choice([-1, 1])))
    return ClipSpec(
        colour=colour,
        shape=shape,
        size=size,
        speed=speed,
        motion=motion,
        background=background,
        width=width,
        height=height,
        fps=fps,
        num_frames=num_frames,
        start=start,
        bounce_signs=signs,
    )
