"""Transition (``transition_from``, ``transition_to``, ``transition_seconds``): A, a generated bridge, then B.

The first video is a given prefix used up to its last whole latent group (``1 + f*k`` frames);
the bridge is whole groups of f frames, so the second video starts a group and is a
group-aligned suffix."""

from __future__ import annotations

from collections.abc import Sequence

from tessera.models.interface import TimeGrid, VideoModel
from tessera.serving.errors import InvalidRequestError
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
from tessera.serving.jobs.spec import GenerationRequest, MediaInfo, Mode, RenderSpec, ResolvedInput
from tessera.serving.stages import Conditioning

DEFAULT_TRANSITION_S = 2.0


class Transition(ModeRules):
    mode = Mode.TRANSITION
    selected_by = ("transition_from", "transition_to")
    options = ("transition_seconds",)
    inputs = {"transition_from": VIDEO, "transition_to": VIDEO}
    length = Length.OWN
    own_length_reason = "the output is both videos plus the bridge"

    def check_inputs(self, media: dict[str, MediaInfo]) -> None:
        if set(media) != {"transition_from", "transition_to"}:
            missing = "transition_to" if "transition_from" in media else "transition_from"
            raise InvalidRequestError(f"a transition needs both transition_from and transition_to; {missing} is missing")

    def resolve(self, request: GenerationRequest, context: ResolveContext) -> dict:
        grid, fps, media = context.grid, context.fps, context.media
        first = video_frames(media["transition_from"], fps)
        first = first[: grid.floor_start(len(first))]
        second = video_frames(media["transition_to"], fps)
        bridge = seconds_to_frames("transition_seconds", request.transition_seconds, DEFAULT_TRANSITION_S, fps)
        bridge = grid.round_groups(bridge)
        total = len(first) + bridge + len(second)
        check_total(total, fps, context.limits, "transition_from, the bridge and transition_to")
        return {
            "num_frames": total, "transition_frames": bridge,
            "inputs": (ResolvedInput(name="transition_from", info=media["transition_from"], frame_indices=first),
                       ResolvedInput(name="transition_to", info=media["transition_to"], frame_indices=second)),
        }

    def plan(self, spec: RenderSpec, render: RenderPlan, grid: TimeGrid, options: TilingOptions) -> JobPlan:
        first, second = spec.input("transition_from"), spec.input("transition_to")
        head = grid.latent_frames(len(first.frame_indices))
        start = head + grid.groups(spec.transition_frames)
        return JobPlan(self.mode, render, given=(
            Placement("transition_from", first.frame_indices, 0, head, group_aligned=False),
            Placement("transition_to", second.frame_indices, start, grid.groups(len(second.frame_indices)), group_aligned=True),
        ))

    def manifest(self, spec: RenderSpec, plan: JobPlan, model: VideoModel, conditionings: Sequence[Conditioning]) -> dict:
        return {"transition": {"bridge_frames": spec.transition_frames, "bridge_s": spec.transition_frames / spec.fps}}
