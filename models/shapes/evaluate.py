"""The shapes-world evaluator: find the object in frames and score a clip against its prompt.

Works on any uint8 ``(T, H, W, 3)`` clip (rendered, reconstructed by the VAE, or generated):

1. background = per-channel median over the clip (the object covers well under half of it);
2. object pixels = channel difference from the background above a threshold; the largest
   connected component (on the torus: the world wraps) is the object;
3. per frame: visibility, centroid (circular mean per axis, so an object split across an edge
   has one centre), colour (median of its pixels, nearest palette entry), fill ratio (circle
   ~0.79 of its box, square ~1);
4. per clip: colour and shape by majority, direction from the median frame-to-frame
   displacement (toroidal differences), centroid jump statistics against the true speed.

Seam metrics compare jumps at given frame indices (tile boundaries) with jumps elsewhere.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tessera.models.shapes.world import COLOURS, SIZES

PALETTE_NAMES = list(COLOURS)
PALETTE = np.array([COLOURS[name] for name in PALETTE_NAMES], dtype=np.float32)  # (K, 3)
DIFFERENCE_THRESHOLD = 48
MIN_AREA_FRACTION = 0.3
"""A frame shows the object if its component covers at least this share of the smallest object's area."""
STATIC_SPEED = 0.25
"""Median displacement (px/frame) below which a clip counts as not moving."""


@dataclasses.dataclass
class FrameTrack:
    """Per-frame detections of one clip; arrays of length T."""

    visible: np.ndarray  # (T,) bool
    centroid: np.ndarray  # (T, 2) float (x, y) pixels, NaN where not visible
    area: np.ndarray  # (T,) int pixels of the object component
    colour: np.ndarray  # (T, 3) float median RGB, NaN where not visible
    fill_ratio: np.ndarray  # (T,) float area / box area, NaN where not visible
    components: np.ndarray  # (T,) int number of components above the visibility area
    width: int
    height: int

    def displacements(self) -> np.ndarray:
        """Toroidal centroid differences between consecutive visible frames, ``(T-1, 2)`` with NaN gaps."""
        delta = np.diff(self.centroid, axis=0)
        delta[:, 0] = np.mod(delta[:, 0] + self.width / 2, self.width) - self.width / 2
        delta[:, 1] = np.mod(delta[:, 1] + self.height / 2, self.height) - self.height / 2
        return delta

    def jumps(self) -> np.ndarray:
        """Centroid jump length per frame pair, ``(T-1,)`` with NaN where a frame is missing."""
        return np.linalg.norm(self.displacements(), axis=1)


def _label_components(mask: torch.Tensor) -> torch.Tensor:
    """Connected components (8-neighbour, wrapping at the edges) of ``(T, H, W)`` bool masks.

    Label propagation: every pixel takes the largest label in its neighbourhood until nothing
    changes. Returns int64 labels, 0 for background.
    """
    t, h, w = mask.shape
    labels = torch.arange(1, t * h * w + 1, dtype=torch.float64).view(t, 1, h, w) * mask.view(t, 1, h, w)
    keep = mask.view(t, 1, h, w).double()
    for _ in range(h * w):
        padded = F.pad(labels, (1, 1, 1, 1), mode="circular")
        grown = F.max_pool2d(padded, kernel_size=3, stride=1) * keep
        if torch.equal(grown, labels):
            break
        labels = grown
    return labels.view(t, h, w).long()


def track_object(frames: np.ndarray | torch.Tensor) -> FrameTrack:
    """Detect the object in every frame of a uint8 ``(T, H, W, 3)`` clip."""
    video = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected frames (T, H, W, 3), got shape {video.shape}")
    t, h, w, _ = video.shape
    pixels = video.astype(np.float32)
    background = np.median(pixels.reshape(-1, 3), axis=0)  # (3,)
    difference = np.abs(pixels - background).max(axis=-1)  # (T, H, W)
    mask = difference > DIFFERENCE_THRESHOLD
    labels = _label_components(torch.from_numpy(mask)).numpy()
    min_area = MIN_AREA_FRACTION * math.pi / 4 * (min(SIZES.values()) * min(h, w)) ** 2

    visible = np.zeros(t, dtype=bool)
    centroid = np.full((t, 2), np.nan)
    area = np.zeros(t, dtype=np.int64)
    colour = np.full((t, 3), np.nan)
    fill = np.full(t, np.nan)
    components = np.zeros(t, dtype=np.int64)
    ys, xs = np.mgrid[0:h, 0:w]
    for index in range(t):
        ids, counts = np.unique(labels[index][labels[index] > 0], return_counts=True)
        components[index] = int((counts >= min_area).sum())
        if len(ids) == 0:
            continue
        best = ids[np.argmax(counts)]
        area[index] = counts.max()
        if area[index] < min_area:
            continue
        visible[index] = True
        component = labels[index] == best
        angle_x = 2 * np.pi * (xs[component] + 0.5) / w
        angle_y = 2 * np.pi * (ys[component] + 0.5) / h
        cx = np.mod(np.arctan2(np.sin(angle_x).mean(), np.cos(angle_x).mean()) * w / (2 * np.pi) - 0.5, w)
        cy = np.mod(np.arctan2(np.sin(angle_y).mean(), np.cos(angle_y).mean()) * h / (2 * np.pi) - 0.5, h)
        centroid[index] = (cx, cy)
        colour[index] = np.median(pixels[index][component], axis=0)
        offset_x = np.abs(np.mod(xs[component] - cx + w / 2, w) - w / 2)
        offset_y = np.abs(np.mod(ys[component] - cy + h / 2, h) - h / 2)
        box = (2 * offset_x.max() + 1) * (2 * offset_y.max() + 1)
        fill[index] = area[index] / box
    return FrameTrack(visible, centroid, area, colour, fill, components, w, h)


def nearest_colour(rgb: np.ndarray) -> str:
    return PALETTE_NAMES[int(np.argmin(np.linalg.norm(PALETTE - rgb[None, :], axis=1)))]


def direction_of(displacement: np.ndarray) -> str:
    """'left'/'right'/'up'/'down' from a median (dx, dy), or 'static' when it barely moves."""
    dx, dy = displacement
    if not np.isfinite(dx) or max(abs(dx), abs(dy)) < STATIC_SPEED:
        return "static"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


@dataclasses.dataclass
class ClipScore:
    """What one clip shows, compared with what it should show (``expected_*`` may be None)."""

    colour: str | None
    shape: str | None
    direction: str
    visibility: float
    mean_jump: float
    median_jump: float
    max_jump: float
    mean_components: float
    bounced: bool
    expected_colour: str | None = None
    expected_shape: str | None = None
    expected_motion: str | None = None
    true_speed: float | None = None
    """Expected object speed in px/frame."""
    group: str = ""
    """Free label for reporting (e.g. 'seen', 'heldout', '80x64')."""

    @property
    def colour_correct(self) -> bool | None:
        return None if self.expected_colour is None else self.colour == self.expected_colour

    @property
    def shape_correct(self) -> bool | None:
        return None if self.expected_shape is None else self.shape == self.expected_shape

    @property
    def direction_correct(self) -> bool | None:
        if self.expected_motion is None or self.expected_motion == "bounce":
            return None
        return self.direction == self.expected_motion

    @property
    def jump_ratio(self) -> float | None:
        if not self.true_speed or not np.isfinite(self.mean_jump):
            return None
        return self.mean_jump / self.true_speed


def score_clip(
    frames: np.ndarray | torch.Tensor,
    *,
    expected: dict[str, str] | None = None,
    true_speed: float | None = None,
    group: str = "",
) -> ClipScore:
    """Score a uint8 ``(T, H, W, 3)`` clip; ``expected`` holds attributes (colour, shape, motion)."""
    expected = expected or {}
    track = track_object(frames)
    colours = [nearest_colour(c) for c in track.colour[track.visible]]
    colour = max(set(colours), key=colours.count) if colours else None
    fills = track.fill_ratio[track.visible]
    shape = None if len(fills) == 0 else ("square" if np.median(fills) > 0.89 else "circle")
    delta = track.displacements()
    finite = np.isfinite(delta).all(axis=1)
    median_delta = np.median(delta[finite], axis=0) if finite.any() else np.array([np.nan, np.nan])
    jumps = track.jumps()[finite]
    signs_x = np.sign(delta[finite, 0][np.abs(delta[finite, 0]) > STATIC_SPEED])
    signs_y = np.sign(delta[finite, 1][np.abs(delta[finite, 1]) > STATIC_SPEED])
    bounced = bool((np.diff(signs_x) != 0).any() or (np.diff(signs_y) != 0).any())
    return ClipScore(
        colour=colour,
        shape=shape,
        direction=direction_of(median_delta),
        visibility=float(track.visible.mean()),
        mean_jump=float(jumps.mean()) if len(jumps) else float("nan"),
        median_jump=float(np.median(jumps)) if len(jumps) else float("nan"),
        max_jump=float(jumps.max()) if len(jumps) else float("nan"),
        mean_components=float(track.components.mean()),
        bounced=bounced,
        expected_colour=expected.get("colour"),
        expected_shape=expected.get("shape"),
        expected_motion=expected.get("motion"),
        true_speed=true_speed,
        group=group,
    )


def _rate(values: Iterable[bool | None]) -> float | None:
    known = [v for v in values if v is not None]
    return None if not known else float(np.mean(known))


def summarize(scores: Sequence[ClipScore]) -> dict[str, float | int | None]:
    """Aggregate metrics over clips (the figures the quality bars are stated in)."""
    ratios = [s.jump_ratio for s in scores if s.jump_ratio is not None]
    directional = [s for s in scores if s.direction_correct is not None]
    return {
        "clips": len(scores),
        "colour_accuracy": _rate(s.colour_correct for s in scores),
        "shape_accuracy": _rate(s.shape_correct for s in scores),
        "direction_accuracy": _rate(s.direction_correct for s in directional),
        "directional_clips": len(directional),
        "visibility": float(np.mean([s.visibility for s in scores])) if scores else None,
        "mean_jump_ratio": float(np.mean(ratios)) if ratios else None,
        "median_jump_ratio": float(np.median(ratios)) if ratios else None,
        "max_jump_px": float(np.nanmax([s.max_jump for s in scores])) if scores else None,
        "mean_components": float(np.mean([s.mean_components for s in scores])) if scores else None,
        "bounce_detected": _rate(s.bounced for s in scores if s.expected_motion == "bounce"),
    }


def seam_jumps(
    frames: np.ndarray | torch.Tensor, seam_pairs: Sequence[int], control_pairs: Sequence[int] | None = None
) -> dict[str, float]:
    """Centroid jumps across tile seams vs. inside tiles.

    ``seam_pairs`` are indices ``i`` of frame pairs ``(i, i+1)`` that straddle a seam. A seamless
    video has ``seam_mean / inside_mean`` near 1. ``inside`` is every other pair, or only
    ``control_pairs`` when given: e.g. the latent-frame boundaries inside windows, where a model
    whose latent frames jump would jump anyway, so the ratio isolates what tiling adds.
    """
    jumps = track_object(frames).jumps()
    seam_mask = np.zeros(len(jumps), dtype=bool)
    seam_mask[[i for i in seam_pairs if 0 <= i < len(jumps)]] = True
    control_mask = ~seam_mask
    if control_pairs is not None:
        control_mask = np.zeros(len(jumps), dtype=bool)
        control_mask[[i for i in control_pairs if 0 <= i < len(jumps)]] = True
        control_mask &= ~seam_mask
    seam = jumps[seam_mask & np.isfinite(jumps)]
    inside = jumps[control_mask & np.isfinite(jumps)]
    seam_mean = float(seam.mean()) if len(seam) else float("nan")
    inside_mean = float(inside.mean()) if len(inside) else float("nan")
    return {
        "seam_mean": seam_mean,
        "seam_max": float(seam.max()) if len(seam) else float("nan"),
        "inside_mean": inside_mean,
        "ratio": seam_mean / inside_mean if inside_mean > 0 else float("nan"),
    }


def psnr(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB between two uint8 images or clips."""
    x = torch.as_tensor(np.asarray(a), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(b), dtype=torch.float64)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    mse = (x - y).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)
