"""Text to video: the default mode (no mode field set). Nothing is given; the request sets the length."""

from __future__ import annotations

from tessera.serving.jobs.modes.base import ModeRules, ResolveContext
from tessera.serving.jobs.spec import GenerationRequest, Mode


class TextToVideo(ModeRules):
    mode = Mode.TEXT_TO_VIDEO

    def resolve(self, request: GenerationRequest, context: ResolveContext) -> dict:
        return {"num_frames": context.requested_frames}
