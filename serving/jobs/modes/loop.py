"""Loop (``loop: true``): a video whose last frame flows into its first.

Nothing is given: the video is a circle of whole latent groups (``f*k`` frames, no single-frame
latent 0). Before every sampler step the circle is rolled by a different offset
(:meth:`JobPlan.roll`), so the seam between its end and its start lies inside a window at most
steps and is denoised like any other pair of neighbours; the decoder gets the last groups as the
causal context of the first, so the pixels also run on from the end into the start."""

from __future__ import annotations

from tessera.models.interface import TimeGrid
from tessera.serving.jobs.layout import JobPlan
from tessera.serving.jobs.modes.base import ModeRules, ResolveContext, check_total
from tessera.serving.jobs.planner import DecodeTile, RenderPlan, TilingOptions, plan_windows
from tessera.serving.jobs.spec import GenerationRequest, Mode, RenderSpec

MIN_LOOP_LATENTS = 2
"""Fewest latent groups a loop has (it is generated as a circle of whole groups)."""


class Loop(ModeRules):
    mode = Mode.LOOP
    selected_by = ("loop",)

    def resolve(self, request: GenerationRequest, context: ResolveContext) -> dict:
        frames = context.grid.round_groups(context.requested_frames, MIN_LOOP_LATENTS)
        check_total(frames, context.fps, context.limits, "the loop, rounded to the latent grid,")
        return {"num_frames": frames}

    def plan(self, spec: RenderSpec, render: RenderPlan, grid: TimeGrid, options: TilingOptions) -> JobPlan:
        groups = grid.groups(spec.num_frames)
        c, _, h, w = render.latent_shape
        context = max(1, options.decode_context)
        looped = RenderPlan(
            num_frames=spec.num_frames, latent_shape=(c, groups, h, w),
            windows=plan_windows(groups, options.window, options.min_overlap), sync_every=1,
            decode_tiles=loop_decode_tiles(groups, context, options.decode_tile, grid.temporal_factor),
        )
        return JobPlan(self.mode, looped, loop_context=context)


def loop_decode_tiles(groups: int, context: int, tile: int, factor: int) -> tuple[DecodeTile, ...]:
    """Decode tiles of a loop of ``groups`` latent groups, indexed into the sequence the runner
    decodes: ``context`` groups from the end of the circle, then the whole circle (whose group
    ``k`` is pixel frames ``f*k .. f*k + f - 1``: a circle has no lone first frame)."""
    tiles = []
    for index, start in enumerate(range(0, groups, tile)):
        stop = min(start + tile, groups)
        tiles.append(DecodeTile(index, context + start, context + stop, context, factor * start, factor * (stop - start)))
    return tuple(tiles)
