"""Image (``image: true``): one frame, written as ``image.png`` instead of a video.

The model's image limit (``max_image_side``) applies instead of its video limit; a large image
is decoded in spatial tiles by the VAE. Nothing is given, so the plan is a plain one."""

from __future__ import annotations

from tessera.serving.jobs.modes.base import Length, ModeRules, ResolveContext
from tessera.serving.jobs.spec import GenerationRequest, Mode


class Image(ModeRules):
    mode = Mode.IMAGE
    selected_by = ("image",)
    length = Length.OWN
    own_length_reason = "an image is one frame"
    writes_image = True

    def resolve(self, request: GenerationRequest, context: ResolveContext) -> dict:
        return {"num_frames": 1}
