"""Extend (``extend_video``, ``extend_seconds``): the input's frames kept, new ones generated after them
(or before, with ``backward``).

Forward, the input is a given prefix used up to its last whole latent group (``1 + f*k`` frames;
at most f-1 trailing frames are dropped). Backward, the generated part is ``1 + f*k`` frames, so
the input starts a group and is a group-aligned suffix."""

from __future__ import annotations

from collections.abc import Sequence

from tessera.models.interface import TimeGrid, VideoModel
from tessera.serving.jobs.layout import JobPlan, Placement
from tessera.serving.jobs.modes.base import (
    VIDEO,
    Length,
    ModeRules,
    ResolveContext,
    check_total,
    seconds_to_frames,
    video_frames,
)
from tessera.serving.jobs.planner import RenderPlan, TilingOptions
from tessera.serving.jobs.spec import GenerationRequest, Mode, RenderSpec, ResolvedInput
from tessera.serving.stages import Conditioning


class Extend(ModeRules):
    mode = Mode.EXTEND
    selected_by = ("extend_video",)
    options = ("extend_seconds", "backward")
    inputs = {"extend_video": VIDEO}
    length = Length.OWN
    own_length_reason = "the output is the input plus extend_seconds"

    def resolve(self, request: GenerationRequest, context: ResolveContext) -> dict:
        grid, fps = context.grid, context.fps
        info = context.media["extend_video"]
        indices = video_frames(info, fps)
        new = seconds_to_frames("extend_seconds", request.extend_seconds, None, fps)
        if request.backward:
            new = grid.ceil_start(new)
        else:
            indices = indices[: grid.floor_start(len(indices))]
        total = len(indices) + new
        check_total(total, fps, context.limits, f"the input ({len(indices) / fps:g} s) plus extend_seconds")
        return {
            "num_frames": total, "inputs": (ResolvedInput(name="extend_video", info=info, frame_indices=indices),),
            "extend_frames": new, "backward": request.backward,
        }

    def plan(self, spec: RenderSpec, render: RenderPlan, grid: TimeGrid, options: TilingOptions) -> JobPlan:
        video = spec.input("extend_video")
        frames = len(video.frame_indices)
        if spec.backward:
            start = grid.latent_frames(spec.extend_frames)
            placement = Placement("extend_video", video.frame_indices, start, grid.groups(frames), group_aligned=True)
        else:
            placement = Placement("extend_video", video.frame_indices, 0, grid.latent_frames(frames), group_aligned=False)
        return JobPlan(self.mode, render, given=(placement,))

    def manifest(self, spec: RenderSpec, plan: JobPlan, model: VideoModel, conditionings: Sequence[Conditioning]) -> dict:
        return {"extend": {"new_frames": spec.extend_frames, "backward": spec.backward}}
