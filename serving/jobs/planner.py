"""Plan a render: latent grid, denoising windows in time, fusion weights, decode tiles.

Pure (plain data in, plain data out; no Ray, no torch), so every duration from one frame to
60 s is unit-tested in milliseconds.

Time tiling (DESIGN.md §2): a video of ``F`` latent frames is covered by windows of the
denoiser's native length ``W`` that overlap by at least ``O`` frames. Windows are spread
evenly over the video so every overlap is about the same length. With ``fit_windows`` they are
also shortened to the fewest frames that still cover the video with that many windows and the
minimum overlap: evenly spread native windows can overlap far more than ``O`` (a 5 s video of
11 latent frames in two windows of 8 recomputes 5 frames; two windows of 7 recompute 3).

Each sampler step (or every ``sync_every`` steps) every window is advanced on whichever replica
is free, then the overlapping frames are fused with trapezoid weights (MultiDiffusion): a
window's weight ramps up across its leading overlap and down across its trailing one, and the
weights of all windows covering a frame are normalised to sum to one. Video edges get no ramp.

Decoding is tiled the same way, with exact causal context instead of blending: tile ``i``
owns latent frames ``[start, stop)`` and is decoded together with up to ``context`` latent
frames before it, whose pixels are dropped. A causal decoder whose receptive field fits in that
context reproduces the untiled decode, so tiles are simply concatenated.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from tessera.models.interface import LatentGeometry, TimeGrid


@dataclasses.dataclass(frozen=True)
class Window:
    """A time window of latent frames ``[start, stop)`` advanced as one denoiser work item."""

    index: int
    start: int
    stop: int
    weights: tuple[float, ...]
    """Fusion weight of each of the window's frames; over all windows they sum to 1 per frame."""

    @property
    def length(self) -> int:
        return self.stop - self.start


@dataclasses.dataclass(frozen=True)
class DecodeTile:
    """Latent frames ``[start, stop)`` decoded with ``context`` earlier frames as causal context."""

    index: int
    start: int
    stop: int
    context: int
    first_frame: int
    """Index in the output video of the tile's first pixel frame."""
    num_frames: int
    """Pixel frames the tile contributes (the last tile is trimmed to the requested length)."""

    @property
    def input_start(self) -> int:
        return self.start - self.context


@dataclasses.dataclass(frozen=True)
class TilingOptions:
    """How to cut a video into windows and tiles (from the app config, resolved against the model)."""

    window: int
    """Latent frames per denoising window."""
    min_overlap: int
    """Fewest latent frames two neighbouring windows share."""
    sync_every: int
    """Sampler steps each window advances between fusions."""
    decode_tile: int
    """Latent frames each decode tile owns."""
    decode_context: int
    """Latent frames of causal context before each decode tile."""
    fit_windows: bool
    """Shorten windows to the fewest frames that cover the video with the minimum overlap (plain
    videos; the windows of multi-shot segments and loops keep the full length)."""

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be >= 1 latent frame, got {self.window}")
        if not 0 <= self.min_overlap < self.window:
            raise ValueError(f"min_overlap must be in [0, window), got {self.min_overlap} with window {self.window}")
        if self.sync_every < 1:
            raise ValueError(f"sync_every must be >= 1, got {self.sync_every}")
        if self.decode_tile < 1:
            raise ValueError(f"decode_tile must be >= 1, got {self.decode_tile}")
        if self.decode_context < 0:
            raise ValueError(f"decode_context must be >= 0, got {self.decode_context}")


@dataclasses.dataclass(frozen=True)
class RenderPlan:
    """Everything the runner needs to know about the shape of one render."""

    num_frames: int
    """Pixel frames of the output."""
    latent_shape: tuple[int, int, int, int]
    """``(C, T, H, W)`` of the whole video's latents."""
    windows: tuple[Window, ...]
    sync_every: int
    decode_tiles: tuple[DecodeTile, ...]

    @property
    def latent_frames(self) -> int:
        return self.latent_shape[1]

    def step_groups(self, steps: int) -> list[tuple[int, int]]:
        """Sampler step ranges ``[first, last)`` between fusions.

        A single window needs no fusion, so it takes every step in one call (no extra hops)."""
        group = steps if len(self.windows) == 1 else self.sync_every
        return [(first, min(first + group, steps)) for first in range(0, steps, group)]

    def seam_frame_pairs(self, temporal_factor: int) -> list[int]:
        """Indices ``i`` of output frame pairs ``(i, i+1)`` that straddle a tiling boundary.

        Every place where a window starts or stops inside the video, and every decode tile
        boundary: where a discontinuity from tiling would show (the seam metric's input)."""
        boundaries = {w.start for w in self.windows[1:]} | {w.stop for w in self.windows[:-1]}
        boundaries |= {t.start for t in self.decode_tiles[1:]}
        # The pair that ends just before latent frame k's first pixel frame straddles the seam.
        grid = TimeGrid(temporal_factor)
        pairs = {grid.pixel_start(k) - 1 for k in boundaries if k >= 1}
        return sorted(i for i in pairs if 0 <= i < self.num_frames - 1)

    def summary(self) -> dict:
        """The plan as plain data for the job's manifest."""
        return {
            "num_frames": self.num_frames,
            "latent_shape": list(self.latent_shape),
            "windows": [[w.start, w.stop] for w in self.windows],
            "sync_every": self.sync_every,
            "decode_tiles": [
                {"latent": [t.start, t.stop], "context": t.context, "frames": [t.first_frame, t.first_frame + t.num_frames]}
                for t in self.decode_tiles
            ],
        }


def plan_windows(latent_frames: int, window: int, min_overlap: int, fit: bool = False) -> tuple[Window, ...]:
    """Cover ``latent_frames`` frames with evenly spaced windows of ``window`` frames (``fit``: of
    the fewest frames, at most ``window``, that the same number of windows needs)."""
    if latent_frames < 1:
        raise ValueError(f"latent_frames must be >= 1, got {latent_frames}")
    if latent_frames <= window:
        return fused_windows([(0, latent_frames)])
    stride = window - min_overlap
    count = 1 + math.ceil((latent_frames - window) / stride)
    if fit:
        # count * w - (count - 1) * min_overlap >= latent_frames; never above ``window`` by the choice of count
        window = math.ceil((latent_frames + (count - 1) * min_overlap) / count)
    span = latent_frames - window
    starts = [round(i * span / (count - 1)) for i in range(count)]
    return fused_windows([(start, start + window) for start in starts])


def ramp_weights(length: int, lead: int, trail: int) -> tuple[float, ...]:
    """Unnormalised trapezoid fusion weights of a window of ``length`` frames that shares its
    first ``lead`` frames with the previous window and its last ``trail`` with the next.

    The weight ramps up as ``(j + 1) / (lead + 1)`` across the leading overlap and down as
    ``(length - j) / (trail + 1)`` across the trailing one, and is 1 elsewhere (and along a
    side with no overlap: video edges and cuts get no ramp)."""
    if length < 1 or lead < 0 or trail < 0:
        raise ValueError(f"need length >= 1 and overlaps >= 0, got {length}, {lead}, {trail}")
    return tuple(
        min(1.0, (j + 1) / (lead + 1) if lead else 1.0, (length - j) / (trail + 1) if trail else 1.0)
        for j in range(length)
    )


def fused_windows(spans: Sequence[tuple[int, int]]) -> tuple[Window, ...]:
    """Windows over latent frames ``[start, stop)`` (in order of start), with fusion weights.

    Each window ramps (:func:`ramp_weights`) across what it shares with the window before and
    the window after it in this order; the weights of every frame are then normalised to sum to
    one, so windows that overlap blend there and windows that only touch stay apart. Every frame
    from 0 to the last stop must be covered."""
    if not spans or any(stop <= start or start < 0 for start, stop in spans):
        raise ValueError(f"windows must be non-empty ranges [start, stop) with start >= 0, got {list(spans)}")
    if any(b[0] < a[0] for a, b in zip(spans, spans[1:])):
        raise ValueError(f"windows must be in order of start, got {list(spans)}")
    raw = []
    for i, (start, stop) in enumerate(spans):
        lead = max(0, spans[i - 1][1] - start) if i > 0 else 0  # frames shared with the previous window
        trail = max(0, stop - spans[i + 1][0]) if i + 1 < len(spans) else 0  # shared with the next
        raw.append(ramp_weights(stop - start, lead, trail))
    totals = [0.0] * max(stop for _, stop in spans)
    for (start, _), weights in zip(spans, raw):
        for j, w in enumerate(weights):
            totals[start + j] += w
    if any(t <= 0 for t in totals):
        raise ValueError(f"windows {list(spans)} leave latent frames uncovered")
    return tuple(
        Window(i, start, stop, tuple(w / totals[start + j] for j, w in enumerate(weights)))
        for i, ((start, stop), weights) in enumerate(zip(spans, raw))
    )


def window_batches(windows: int, replicas: int, max_per_call: int) -> tuple[tuple[int, ...], ...]:
    """Window indices grouped into the Denoiser calls of one step group.

    As many calls as there can be replicas (so every replica has work), more when a call would
    hold more than ``max_per_call`` windows; windows spread evenly, neighbours together."""
    if windows < 1 or replicas < 1 or max_per_call < 1:
        raise ValueError(f"windows, replicas and max_per_call must be >= 1, got {windows}, {replicas}, {max_per_call}")
    calls = min(windows, max(replicas, math.ceil(windows / max_per_call)))
    bounds = [round(i * windows / calls) for i in range(calls + 1)]
    return tuple(tuple(range(bounds[i], bounds[i + 1])) for i in range(calls))


def plan_decode_tiles(
    latent_frames: int, num_frames: int, geometry: LatentGeometry, tile: int, context: int
) -> tuple[DecodeTile, ...]:
    """Cut the latent video into decode tiles and map each to its output pixel frames."""
    grid = geometry.time_grid
    if num_frames > grid.pixel_frames(latent_frames):
        raise ValueError(f"{latent_frames} latent frames decode to fewer than {num_frames} frames")
    tiles = []
    for index, start in enumerate(range(0, latent_frames, tile)):
        stop = min(start + tile, latent_frames)
        first, end = grid.pixel_range(start, stop)
        if first >= num_frames:
            break
        tiles.append(
            DecodeTile(
                index=index,
                start=start,
                stop=stop,
                context=min(context, start),
                first_frame=first,
                num_frames=min(end, num_frames) - first,
            )
        )
    return tuple(tiles)


def plan_render(
    num_frames: int, height: int, width: int, geometry: LatentGeometry, options: TilingOptions
) -> RenderPlan:
    """The full plan for a video of ``num_frames`` frames of ``height`` x ``width`` pixels."""
    latent_shape = geometry.latent_shape(num_frames, height, width)
    latent_frames = latent_shape[1]
    return RenderPlan(
        num_frames=num_frames,
        latent_shape=latent_shape,
        windows=plan_windows(latent_frames, options.window, options.min_overlap, options.fit_windows),
        sync_every=options.sync_every,
        decode_tiles=plan_decode_tiles(latent_frames, num_frames, geometry, options.decode_tile, options.decode_context),
    )
