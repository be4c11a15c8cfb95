"""Video to video, SDEdit (``edit_video``, ``strength``): the input re-rendered under the prompt.

Nothing is given: the input's latents, noised to level ``strength``, replace the initial noise,
and only the schedule's levels below it run (:func:`~tessera.serving.jobs.layout.edit_schedule`).
duration_s/num_frames may shorten the input, never lengthen it."""

from __future__ import annotations

import math
from collections.abc import Sequence

from tessera.models.interface import TimeGrid, VideoModel
from tessera.serving.errors import InvalidRequestError
from tessera.serving.jobs.layout import JobPlan, Placement
from tessera.serving.jobs.modes.base import VIDEO, Length, ModeRules, ResolveContext, check_total, video_frames
from tessera.serving.jobs.planner import RenderPlan, TilingOptions
from tessera.serving.jobs.spec import GenerationRequest, Mode, RenderSpec, ResolvedInput
from tessera.serving.stages import Conditioning

DEFAULT_STRENGTH = 0.7
"""SDEdit strength when a request gives none: the tiny model takes the prompt's colour from about
0.6 on and keeps the input's layout up to about 0.8 (bench/modes_bench.py)."""


class Edit(ModeRules):
    mode = Mode.EDIT
    selected_by = ("edit_video",)
    options = ("strength",)
    inputs = {"edit_video": VIDEO}
    length = Length.SHORTENS_INPUT

    def resolve(self, request: GenerationRequest, context: ResolveContext) -> dict:
        fps, wanted = context.fps, context.requested_frames
        info = context.media["edit_video"]
        indices = video_frames(info, fps)
        if wanted is not None:
            if wanted > len(indices):
                raise InvalidRequestError(
                    f"edit_video is {len(indices) / fps:g} s; duration_s/num_frames can only shorten it, "
                    f"got {wanted / fps:g} s"
                )
            indices = indices[:wanted]
        check_total(len(indices), fps, context.limits, "edit_video")
        strength = DEFAULT_STRENGTH if request.strength is None else request.strength
        if not math.isfinite(strength) or not 0 < strength <= 1:
            raise InvalidRequestError(f"strength must be in (0, 1], got {strength:g}")
        video = ResolvedInput(name="edit_video", info=info, frame_indices=indices)
        return {"num_frames": len(indices), "inputs": (video,), "strength": strength}

    def plan(self, spec: RenderSpec, render: RenderPlan, grid: TimeGrid, options: TilingOptions) -> JobPlan:
        video = spec.input("edit_video")
        init = Placement("edit_video", video.frame_indices, 0, render.latent_frames, group_aligned=False)
        return JobPlan(self.mode, render, init=init, start_sigma=spec.strength)

    def manifest(self, spec: RenderSpec, plan: JobPlan, model: VideoModel, conditionings: Sequence[Conditioning]) -> dict:
        return {"edit": {"strength": spec.strength, "sigmas": plan.noise_levels(model, spec.steps)}}
