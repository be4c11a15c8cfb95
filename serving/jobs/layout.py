"""Lay a resolved request out on the latent grid: what is given, where, and how windows are conditioned.

Pure (plain data in, plain data out; no Ray, no torch), like the planner it extends. One
mechanism serves every mode: frame-mask conditioning. Latent frames of the whole video are
either *given* (encoded from an input by the VAE, kept clean while the rest is denoised) or
generated; the runner slices the whole-video condition per window. The native DiT was trained
with the masks none / first / last / first+last / prefix / suffix, which is what the modes
produce inside each window:

=================  ===================================================================
image to video     the image's latent first (or, encoded as a still group, last)
extend forward     the input as a prefix; backward: as a suffix (group aligned)
transition         the first video as a prefix, the second as a suffix, the bridge between
loop               nothing given: the video is a circle of whole latent groups (no
                   single-frame latent 0). Before every sampler step the circle is rolled by
                   a different offset, so the seam between its end and its start lies inside
                   a window at most steps and is denoised like any other pair of neighbours;
                   the decoder gets the last groups as the causal context of the first, so
                   the pixels also run on from the end into the start
edit (SDEdit)      nothing given: the input's latents, noised to level ``strength``,
                   replace the initial noise, and only the schedule's levels below it run
multi-shot         each shot is a segment of windows with its own prompt; a CUT keeps
                   segments apart (no window or fusion crosses it), a BLEND lets the two
                   shots' windows overlap across the boundary so fusion mixes them
=================  ===================================================================

Placement of an input's frames on the causal latent grid: *first-aligned* frames start the
video (latent 0 is frame 0 alone, then groups of ``temporal_factor``); *group-aligned* frames
start at a later latent frame, so they are encoded as whole groups (the encoder sees the first
frame once more in front, and that extra latent is dropped).
"""

from __future__ import annotations

import dataclasses

from tessera.models.interface import LatentGeometry, TimeGrid, VideoModel
from tessera.serving.jobs.planner import DecodeTile, RenderPlan, TilingOptions, Window, fused_windows, plan_render, plan_windows
from tessera.serving.jobs.spec import Mode, RenderSpec, ShotTransition

GOLDEN = 0.6180339887
"""Loop roll stride as a share of the circle: successive seams land far from each other."""


@dataclasses.dataclass(frozen=True)
class Placement:
    """Frames of an input, encoded and placed at latent frames ``[latent_start, latent_start + latent_count)``."""

    input: str
    """The spec input it comes from (``ResolvedInput.name``)."""
    frame_indices: tuple[int, ...]
    """Frames of the decoded input to encode, in order."""
    latent_start: int
    latent_count: int
    group_aligned: bool

    @property
    def latent_stop(self) -> int:
        return self.latent_start + self.latent_count


@dataclasses.dataclass(frozen=True)
class ShotRange:
    """Where one shot of a multi-shot video lies."""

    index: int
    first_frame: int
    num_frames: int
    latent_start: int
    latent_stop: int
    transition: str


@dataclasses.dataclass(frozen=True)
class JobPlan:
    """A render plan plus everything mode-specific the runner needs."""

    mode: Mode
    render: RenderPlan
    given: tuple[Placement, ...] = ()
    """Latent frames kept clean (frame-mask conditioning)."""
    init: Placement | None = None
    """SDEdit: latents that, noised to ``start_sigma``, replace the initial noise."""
    start_sigma: float | None = None
    """SDEdit: the noise level the input is taken to; sampling goes on from there (see :func:`edit_schedule`)."""
    loop_context: int = 0
    """Loop: latent groups of the end put before the start as the decoder's causal context (0: not a loop)."""
    window_prompts: tuple[int, ...] = ()
    """Per window, the index of the prompt it is conditioned on (multi-shot); empty: prompt 0."""
    shots: tuple[ShotRange, ...] = ()

    def prompt_of(self, window: Window) -> int:
        return self.window_prompts[window.index] if self.window_prompts else 0

    def step_groups(self, steps: int) -> list[tuple[int, int]]:
        """Sampler step ranges ``[first, last)`` between fusions; a loop rolls its circle every step."""
        if self.loop_context:
            return [(step, step + 1) for step in range(steps)]
        return self.render.step_groups(steps)

    def roll(self, group: int) -> int:
        """Loop: how far the circle is rotated during step group ``group`` (0 for other modes)."""
        if not self.loop_context:
            return 0
        frames = self.render.latent_frames
        stride = max(1, round(frames * GOLDEN)) % frames or 1
        return (group * stride) % frames

    def seam_frame_pairs(self, temporal_factor: int) -> list[int]:
        """Frame pairs ``(i, i+1)`` across tiling boundaries; a loop's are on its grid of whole
        groups, and its last frame, followed by the first, is one too."""
        if not self.loop_context:
            return self.render.seam_frame_pairs(temporal_factor)
        windows = self.render.windows
        boundaries = {w.start for w in windows[1:]} | {w.stop for w in windows[:-1]}
        boundaries |= {t.start - self.loop_context for t in self.render.decode_tiles[1:]}
        # The circle has no lone first frame: its group k starts at pixel frame f*k.
        pairs = {temporal_factor * k - 1 for k in boundaries} | {self.render.num_frames - 1}
        return sorted(pairs)

    def schedule(self, sigmas: list[float]) -> list[float]:
        """The noise levels this job samples through, given the model's full schedule."""
        return sigmas if self.start_sigma is None else edit_schedule(sigmas, self.start_sigma)

    def noise_levels(self, model: VideoModel, steps: int) -> list[float]:
        """The noise levels this job samples through: the model's schedule for this video's latent
        shape (a family may shift it by the token count), cut to SDEdit's strength."""
        return self.schedule(model.sigmas_for(steps, self.render.latent_shape))

    def given_frames(self) -> list[int]:
        return sorted({t for p in self.given for t in range(p.latent_start, p.latent_stop)})

    def summary(self, temporal_factor: int) -> dict:
        """Mode facts for the manifest: given latent ranges and the output frames they cover."""
        grid = TimeGrid(temporal_factor)

        def pixel_range(p: Placement) -> list[int]:
            return [min(frame, self.render.num_frames) for frame in grid.pixel_range(p.latent_start, p.latent_stop)]

        return {
            "given": [
                {"input": p.input, "latents": [p.latent_start, p.latent_stop], "frames": pixel_range(p),
                 "group_aligned": p.group_aligned}
                for p in self.given
            ],
            "init": None if self.init is None else {"input": self.init.input, "latents": [self.init.latent_start, self.init.latent_stop]},
            "start_sigma": self.start_sigma,
            "loop_context": self.loop_context,
            "window_prompts": list(self.window_prompts),
        }


def edit_schedule(sigmas: list[float], strength: float) -> list[float]:
    """SDEdit's noise levels: ``strength`` itself, then the levels of the full schedule below it.

    The input is noised to exactly ``strength`` (the rectified-flow level: 0 clean, 1 pure noise)
    and denoised along the rest of the schedule, so a low strength runs few steps and a strength
    of 1 is the whole schedule (the input then only sets the size and length)."""
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    return [strength] + [sigma for sigma in sigmas if sigma < strength]


def segment_windows(segments: list[tuple[int, int]], window: int, min_overlap: int) -> tuple[tuple[Window, ...], tuple[int, ...]]:
    """Windows over each segment ``[start, stop)`` (spread like :func:`plan_windows`), with fusion
    weights over all of them, and the segment each window belongs to.

    Weights ramp across a window's overlap with the previous and next window (whichever
    segment they belong to) and are normalised to sum to one per frame, so segments that
    overlap blend there and segments that only touch stay apart (:func:`fused_windows`)."""
    spans: list[tuple[int, int, int]] = []
    for owner, (start, stop) in enumerate(segments):
        for w in plan_windows(stop - start, window, min_overlap):
            spans.append((start + w.start, start + w.stop, owner))
    spans.sort()
    windows = fused_windows([(start, stop) for start, stop, _ in spans])
    return windows, tuple(owner for _, _, owner in spans)


def _with_windows(plan: RenderPlan, windows: tuple[Window, ...]) -> RenderPlan:
    return dataclasses.replace(plan, windows=windows)


def loop_decode_tiles(groups: int, context: int, tile: int, factor: int) -> tuple[DecodeTile, ...]:
    """Decode tiles of a loop of ``groups`` latent groups, indexed into the sequence the runner
    decodes: ``context`` groups from the end of the circle, then the whole circle (whose group
    ``k`` is pixel frames ``f*k .. f*k + f - 1``: a circle has no lone first frame)."""
    tiles = []
    for index, start in enumerate(range(0, groups, tile)):
        stop = min(start + tile, groups)
        tiles.append(DecodeTile(index, context + start, context + stop, context, factor * start, factor * (stop - start)))
    return tuple(tiles)


def plan_job(spec: RenderSpec, geometry: LatentGeometry, options: TilingOptions) -> JobPlan:
    """The full plan of a resolved request."""
    grid = geometry.time_grid
    render = plan_render(spec.num_frames, spec.height, spec.width, geometry, options)
    latent_frames = render.latent_frames
    mode = spec.mode

    if mode in (Mode.TEXT_TO_VIDEO, Mode.IMAGE):
        return JobPlan(mode, render)

    if mode == Mode.IMAGE_TO_VIDEO:
        last = spec.image_is_last_frame
        at = latent_frames - 1 if last else 0
        return JobPlan(mode, render, given=(Placement("from_image", (0,), at, 1, group_aligned=last),))

    if mode == Mode.EXTEND:
        video = spec.input("extend_video")
        frames = len(video.frame_indices)
        if spec.backward:
            start = grid.latent_frames(spec.extend_frames)
            placement = Placement("extend_video", video.frame_indices, start, grid.groups(frames), group_aligned=True)
        else:
            placement = Placement("extend_video", video.frame_indices, 0, grid.latent_frames(frames), group_aligned=False)
        return JobPlan(mode, render, given=(placement,))

    if mode == Mode.EDIT:
        video = spec.input("edit_video")
        init = Placement("edit_video", video.frame_indices, 0, latent_frames, group_aligned=False)
        return JobPlan(mode, render, init=init, start_sigma=spec.strength)

    if mode == Mode.TRANSITION:
        first, second = spec.input("transition_from"), spec.input("transition_to")
        head = grid.latent_frames(len(first.frame_indices))
        start = head + grid.groups(spec.transition_frames)
        return JobPlan(mode, render, given=(
            Placement("transition_from", first.frame_indices, 0, head, group_aligned=False),
            Placement("transition_to", second.frame_indices, start, grid.groups(len(second.frame_indices)), group_aligned=True),
        ))

    if mode == Mode.LOOP:
        groups = grid.groups(spec.num_frames)
        c, _, h, w = render.latent_shape
        context = max(1, options.decode_context)
        looped = RenderPlan(
            num_frames=spec.num_frames, latent_shape=(c, groups, h, w),
            windows=plan_windows(groups, options.window, options.min_overlap), sync_every=1,
            decode_tiles=loop_decode_tiles(groups, context, options.decode_tile, grid.temporal_factor),
        )
        return JobPlan(mode, looped, loop_context=context)

    if mode == Mode.MULTI_SHOT:
        ranges, segments = [], []
        first_frame, latent = 0, 0
        for index, shot in enumerate(spec.shots):
            count = grid.latent_frames(shot.num_frames) if index == 0 else grid.groups(shot.num_frames)
            ranges.append(ShotRange(index, first_frame, shot.num_frames, latent, latent + count, shot.transition.value))
            first_frame += shot.num_frames
            latent += count
        # A blended boundary: each side's windows reach `half` latent frames into the other shot.
        half = max(1, min(options.min_overlap, (options.window - options.min_overlap) // 2))
        for index, shot_range in enumerate(ranges):
            start, stop = shot_range.latent_start, shot_range.latent_stop
            if index > 0 and spec.shots[index].transition == ShotTransition.BLEND:
                start = max(ranges[index - 1].latent_start, start - half)
            if index + 1 < len(ranges) and spec.shots[index + 1].transition == ShotTransition.BLEND:
                stop = min(ranges[index + 1].latent_stop, stop + half)
            segments.append((start, stop))
        windows, owners = segment_windows(segments, options.window, options.min_overlap)
        return JobPlan(mode, _with_windows(render, windows), window_prompts=owners, shots=tuple(ranges))

    raise AssertionError(f"unhandled mode {mode}")
