"""Image to video (``from_image``): the image is the first frame, or the last with ``image_is_last_frame``.

The image's latent is given (kept clean while the rest is denoised): latent 0 when first; when
last, the image is encoded as a still group and placed at the last latent frame. A family that
lists this mode in its card's ``conditioned_modes`` (Wan, LTX-Video) gets the image instead at
the pixel frame of that placement and makes its own conditioning of it
(``VideoModel.encode_conditioning``; serving/jobs/sampling.py)."""

from __future__ import annotations

from collections.abc import Sequence

from tessera.models.interface import TimeGrid, VideoModel
from tessera.serving.jobs.layout import JobPlan, Placement
from tessera.serving.jobs.modes.base import IMAGE, ModeRules, ResolveContext
from tessera.serving.jobs.planner import RenderPlan, TilingOptions
from tessera.serving.jobs.spec import GenerationRequest, Mode, RenderSpec, ResolvedInput
from tessera.serving.stages import Conditioning


class ImageToVideo(ModeRules):
    mode = Mode.IMAGE_TO_VIDEO
    selected_by = ("from_image",)
    options = ("image_is_last_frame",)
    inputs = {"from_image": IMAGE}

    def resolve(self, request: GenerationRequest, context: ResolveContext) -> dict:
        image = ResolvedInput(name="from_image", info=context.media["from_image"], frame_indices=(0,))
        return {"num_frames": context.requested_frames, "inputs": (image,), "image_is_last_frame": request.image_is_last_frame}

    def manifest(self, spec: RenderSpec, plan: JobPlan, model: VideoModel, conditionings: Sequence[Conditioning]) -> dict:
        """How the model was conditioned on the image: its own payload (``conditioned_modes``) or a kept latent frame."""
        own = self.mode.value in model.card.capabilities.conditioned_modes
        return {"image_to_video": {"conditioning": "model" if own else "frame_mask", "last_frame": spec.image_is_last_frame}}

    def plan(self, spec: RenderSpec, render: RenderPlan, grid: TimeGrid, options: TilingOptions) -> JobPlan:
        last = spec.image_is_last_frame
        at = render.latent_frames - 1 if last else 0
        return JobPlan(self.mode, render, given=(Placement("from_image", (0,), at, 1, group_aligned=last),))
