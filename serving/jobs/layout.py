"""A job's plan on the latent grid: what is given, where, and how windows are conditioned.

Pure (plain data in, plain data out; no Ray, no torch), like the planner it extends. One
mechanism serves every mode: frame-mask conditioning. Latent frames of the whole video are
either *given* (encoded from an input by the VAE, kept clean while the rest is denoised) or
generated; the runner slices the whole-video condition per window. The native DiT was trained
with the masks none / first / last / first+last / prefix / suffix, which is what the modes
produce inside each window. Each mode lays itself out (``serving/jobs/modes/``, one module per
mode; :func:`~tessera.serving.jobs.modes.plan_job`) in the terms defined here.

Placement of an input's frames on the causal latent grid: *first-aligned* frames start the
video (latent 0 is frame 0 alone, then groups of ``temporal_factor``); *group-aligned* frames
start at a later latent frame, so they are encoded as whole groups (the encoder sees the first
frame once more in front, and that extra latent is dropped).
"""

from __future__ import annotations

import dataclasses

from tessera.models.interface import TimeGrid, VideoModel
from tessera.serving.jobs.planner import RenderPlan, Window
from tessera.serving.jobs.spec import Mode

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
