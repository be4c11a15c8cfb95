"""The shapes-world evaluator: find the object in frames and score a clip against its prompt.

Works on any uint8 ``(T, H, W, 3)`` clip (rendered, reconstructed by the VAE, or generated):

1. background = per-channel median over the clip (the object covers well under half of it);
2. object pixels = channel difference from the background above a threshold; the largest
   connected component (on the torus: the world wraps) is the object;
3. per frame: visibility, centroid (circular mean per axis, so an object split across an edge
   has one centre), colour (median of its pixels, nearest palette entry), fill ratio (circle
   ~0.79 of its box, square ~1);
4. per clip: colour and shape by majority; direction from the *path*: the sum of the
   frame-to-frame displacements, each taken the short way round the torus, so an object that
   wraps past an edge still moves the way it went, and one that steps right three times and
   jumps back further left once per latent group goes left (first-to-last positions and the
   median step are both fooled by one of these); stillness (share of frame pairs in which the
   object does not move); centroid jump statistics against the true speed.

Jump ratios compare the centroid jumps at chosen frame pairs with the jumps at the others:

* :func:`group_jumps`: at the causal VAE's latent-group boundaries, pairs ``(0, 1), (4, 5),
  (8, 9), ...`` (:func:`latent_boundary_pairs`). A clip moving smoothly scores ~1; one held
  still inside each group of ``f`` frames that jumps between groups scores far above 1 (its
  inside jumps are ~0);
* :func:`seam_jumps`: at time-tiling window seams (:func:`window_seam_pairs` turns the latent
  frames where windows or decode tiles start into pair indices), optionally against the latent
  boundaries only, so the ratio isolates what tiling adds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tessera.models.shapes.world import COLOURS, DIRECTIONS, SIZES

PALETTE_NAMES = list(COLOURS)
PALETTE = np.array([COLOURS[name] for name in PALETTE_NAMES], dtype=np.float32)  # (K, 3)
DIFFERENCE_THRESHOLD = 48
MIN_AREA_FRACTION = 0.3
"""A frame shows the object if its component covers at least this share of the smallest object's area."""
STATIC_SPEED = 0.25
"""Mean displacement along the path (px/frame) below which a clip counts as not moving."""
STILL_JUMP = 0.25
"""Centroid jump (px) below which a frame pair counts as still. The slowest trained motion is
0.8 px/frame (64 px frame at 12 fps; 0.4 px/frame at 32 px); a rendered still object's centroid
moves by 0."""


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

    def path_displacement(self) -> np.ndarray:
        """Net ``(dx, dy)`` in px along the path: the sum of the toroidal frame-to-frame
        displacements over the pairs where both frames show the object (NaN if no pair does)."""
        delta = self.displacements()
        finite = np.isfinite(delta).all(axis=1)
        return delta[finite].sum(axis=0) if finite.any() else np.array([np.nan, np.nan])

    def path_direction(self) -> str:
        """Direction of the mean step along the path (see :func:`direction_of`)."""
        steps = int(np.isfinite(self.displacements()).all(axis=1).sum())
        return direction_of(self.path_displacement() / steps) if steps else "static"

    def stillness(self, threshold: float = STILL_JUMP) -> float:
        """Share of frame pairs (both frames visible) whose centroid moves less than ``threshold`` px."""
        jumps = self.jumps()
        jumps = jumps[np.isfinite(jumps)]
        return float((jumps < threshold).mean()) if len(jumps) else float("nan")


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
    """'left'/'right'/'up'/'down' from a per-frame (dx, dy), or 'static' when it barely moves."""
    dx, dy = displacement
    if not np.isfinite(dx) or max(abs(dx), abs(dy)) < STATIC_SPEED:
        return "static"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def _as_track(frames: np.ndarray | torch.Tensor | FrameTrack) -> FrameTrack:
    return frames if isinstance(frames, FrameTrack) else track_object(frames)


def _jump_ratio(jumps: np.ndarray, marked: np.ndarray, control: np.ndarray) -> dict[str, float]:
    marked_jumps = jumps[marked & np.isfinite(jumps)]
    control_jumps = jumps[control & np.isfinite(jumps)]
    marked_mean = float(marked_jumps.mean()) if len(marked_jumps) else float("nan")
    control_mean = float(control_jumps.mean()) if len(control_jumps) else float("nan")
    if not (np.isfinite(marked_mean) and np.isfinite(control_mean)):
        ratio = float("nan")
    elif control_mean > 0:
        ratio = marked_mean / control_mean
    else:
        ratio = float("inf") if marked_mean > 0 else float("nan")
    return {
        "marked_mean": marked_mean,
        "marked_max": float(marked_jumps.max()) if len(marked_jumps) else float("nan"),
        "control_mean": control_mean,
        "ratio": ratio,
    }


def _pair_mask(pairs: Iterable[int], length: int) -> np.ndarray:
    mask = np.zeros(length, dtype=bool)
    mask[[i for i in pairs if 0 <= i < length]] = True
    return mask


def latent_boundary_pairs(num_frames: int, temporal_factor: int = 4) -> list[int]:
    """Indices ``i`` of frame pairs ``(i, i+1)`` between two latent groups of a causal VAE whose
    first frame is encoded alone (latent ``k >= 1`` covers frames ``f*(k-1)+1 .. f*k``): 0, f, 2f, ..."""
    return list(range(0, num_frames - 1, temporal_factor))


def window_seam_pairs(latent_starts: Iterable[int], num_frames: int, temporal_factor: int = 4) -> list[int]:
    """Frame-pair indices of the seams before the given latent frames (where time windows or
    decode tiles start): latent ``k >= 1`` starts at pixel frame ``1 + f*(k-1)``, so the pair
    before it is ``f*(k-1)``. Same convention as the serving plan's ``seam_frame_pairs``."""
    pairs = {temporal_factor * (k - 1) for k in latent_starts if k >= 1}
    return sorted(i for i in pairs if 0 <= i < num_frames - 1)


def group_jumps(frames: np.ndarray | torch.Tensor | FrameTrack, temporal_factor: int = 4) -> dict[str, float]:
    """Centroid jumps at latent-group boundaries vs. inside groups.

    ``boundary_mean / inside_mean`` is ~1 for smooth motion (0.92-0.99 on rendered clips, the
    boundaries being a quarter of the pairs) and grows without bound as a decoder holds the
    object still inside each group and jumps between them. Also: the share of still pairs
    inside groups (``inside_stillness``). Accepts frames or an already computed track."""
    track = _as_track(frames)
    jumps = track.jumps()
    boundary = _pair_mask(latent_boundary_pairs(len(jumps) + 1, temporal_factor), len(jumps))
    out = _jump_ratio(jumps, boundary, ~boundary)
    inside = jumps[~boundary & np.isfinite(jumps)]
    return {
        "boundary_mean": out["marked_mean"],
        "boundary_max": out["marked_max"],
        "inside_mean": out["control_mean"],
        "ratio": out["ratio"],
        "inside_stillness": float((inside < STILL_JUMP).mean()) if len(inside) else float("nan"),
    }


@dataclasses.dataclass
class ClipScore:
    """What one clip shows, compared with what it should show (``expected_*`` may be None)."""

    colour: str | None
    shape: str | None
    direction: str
    """From the path (the sum of toroidal per-frame steps), see :meth:`FrameTrack.path_direction`."""
    visibility: float
    mean_jump: float
    median_jump: float
    max_jump: float
    mean_components: float
    bounced: bool
    path: tuple[float, float] = (float("nan"), float("nan"))
    """Net (dx, dy) in px along the path."""
    steps: int = 0
    """Frame pairs in which both frames show the object (the path's length in steps)."""
    stillness: float = float("nan")
    """Share of those pairs in which the object moves less than ``STILL_JUMP`` px."""
    group_jump_ratio: float = float("nan")
    """Mean jump at latent-group boundaries / mean jump inside groups (see :func:`group_jumps`)."""
    median_direction: str = "static"
    """Direction of the median step (the rule before the path; kept to show where they disagree)."""
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
    def progress(self) -> float | None:
        """Signed px travelled along the expected direction (negative: the wrong way)."""
        if self.expected_motion not in DIRECTIONS or not np.isfinite(self.path[0]):
            return None
        dx, dy = DIRECTIONS[self.expected_motion]
        return float(self.path[0] * dx + self.path[1] * dy)

    @property
    def progress_ratio(self) -> float | None:
        """:attr:`progress` over the distance the true speed covers in the same steps (1: exact)."""
        progress = self.progress
        if progress is None or not self.true_speed or not self.steps:
            return None
        return progress / (self.true_speed * self.steps)

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
    temporal_factor: int = 4,
) -> ClipScore:
    """Score a uint8 ``(T, H, W, 3)`` clip; ``expected`` holds attributes (colour, shape, motion).
    ``temporal_factor`` sets the latent groups of ``group_jump_ratio``."""
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
    path = track.path_displacement()
    return ClipScore(
        colour=colour,
        shape=shape,
        direction=track.path_direction(),
        visibility=float(track.visible.mean()),
        mean_jump=float(jumps.mean()) if len(jumps) else float("nan"),
        median_jump=float(np.median(jumps)) if len(jumps) else float("nan"),
        max_jump=float(jumps.max()) if len(jumps) else float("nan"),
        mean_components=float(track.components.mean()),
        bounced=bounced,
        path=(float(path[0]), float(path[1])),
        steps=int(finite.sum()),
        stillness=track.stillness(),
        group_jump_ratio=group_jumps(track, temporal_factor)["ratio"],
        median_direction=direction_of(median_delta),
        expected_colour=expected.get("colour"),
        expected_shape=expected.get("shape"),
        expected_motion=expected.get("motion"),
        true_speed=true_speed,
        group=group,
    )


def _rate(values: Iterable[bool | None]) -> float | None:
    known = [v for v in values if v is not None]
    return None if not known else float(np.mean(known))


def _stat(values: Iterable[float | None], fn=np.mean) -> float | None:
    known = [v for v in values if v is not None and np.isfinite(v)]
    return float(fn(known)) if known else None


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
        "static_clips": sum(s.direction == "static" for s in scores),
        "median_step_direction_accuracy": _rate(s.median_direction == s.expected_motion for s in directional),
        "mean_progress_ratio": _stat(s.progress_ratio for s in directional),
        "stillness": _stat(s.stillness for s in scores),
        "mean_group_jump_ratio": _stat(s.group_jump_ratio for s in scores),
        "median_group_jump_ratio": _stat((s.group_jump_ratio for s in scores), np.median),
        "visibility": float(np.mean([s.visibility for s in scores])) if scores else None,
        "mean_jump_ratio": float(np.mean(ratios)) if ratios else None,
        "median_jump_ratio": float(np.median(ratios)) if ratios else None,
        "max_jump_px": float(np.nanmax([s.max_jump for s in scores])) if scores else None,
        "mean_components": float(np.mean([s.mean_components for s in scores])) if scores else None,
        "bounce_detected": _rate(s.bounced for s in scores if s.expected_motion == "bounce"),
    }


def seam_jumps(
    frames: np.ndarray | torch.Tensor | FrameTrack, seam_pairs: Sequence[int], control_pairs: Sequence[int] | None = None
) -> dict[str, float]:
    """Centroid jumps across tile seams vs. inside tiles.

    ``seam_pairs`` are indices ``i`` of frame pairs ``(i, i+1)`` that straddle a seam (see
    :func:`window_seam_pairs`). A seamless video has ``seam_mean / inside_mean`` near 1.
    ``inside`` is every other pair, or only ``control_pairs`` when given: e.g. the latent-frame
    boundaries inside windows (:func:`latent_boundary_pairs`), where a model whose latent frames
    jump would jump anyway, so the ratio isolates what tiling adds.
    """
    jumps = _as_track(frames).jumps()
    seam_mask = _pair_mask(seam_pairs, len(jumps))
    control_mask = ~seam_mask if control_pairs is None else _pair_mask(control_pairs, len(jumps)) & ~seam_mask
    out = _jump_ratio(jumps, seam_mask, control_mask)
    return {"seam_mean": out["marked_mean"], "seam_max": out["marked_max"], "inside_mean": out["control_mean"],
            "ratio": out["ratio"]}


def psnr(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB between two uint8 images or clips."""
    x = torch.as_tensor(np.asarray(a), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(b), dtype=torch.float64)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    mse = (x - y).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)
