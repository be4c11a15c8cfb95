"""Check a request against the deployment's limits and the model's, before any model work.

Pure: plain data in, a resolved :class:`RenderSpec` or an :class:`InvalidRequestError` with a
message that names the field, the value and the rule out.
"""

from __future__ import annotations

import math
import re
import secrets

from tessera.models.interface import ModelCard
from tessera.serving.config import LimitsConfig
from tessera.serving.errors import InvalidRequestError
from tessera.serving.jobs.spec import GenerationRequest, RenderSpec

MAX_SEED = 2**64 - 1
MAX_GUIDANCE_SCALE = 30.0
PRIORITY_RANGE = (-10, 10)
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces


def _finite(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise InvalidRequestError(f"{name} must be a finite number, got {value}")
    return value


def _check_text(name: str, text: str, limits: LimitsConfig, required: bool) -> str:
    if required and not text.strip():
        raise InvalidRequestError(f"{name} is empty: describe the video to render")
    if len(text) > limits.max_prompt_chars:
        raise InvalidRequestError(
            f"{name} has {len(text)} characters; the limit is {limits.max_prompt_chars}"
        )
    if "\x00" in text:
        raise InvalidRequestError(f"{name} contains a NUL character")
    return text


def _check_side(name: str, value: int, card: ModelCard, max_side: int) -> int:
    multiple = card.geometry.size_multiple
    if value <= 0:
        raise InvalidRequestError(f"{name} must be a positive number of pixels, got {value}")
    if value % multiple:
        lower = max(multiple, value - value % multiple)
        raise InvalidRequestError(
            f"{name} {value} is not a multiple of {multiple} (the model's size multiple); "
            f"try {lower} or {lower + multiple}"
        )
    if value < card.limits.min_side:
        raise InvalidRequestError(f"{name} {value} is below the model's minimum of {card.limits.min_side} px")
    if value > max_side:
        raise InvalidRequestError(f"{name} {value} is above the model's maximum of {max_side} px")
    return value


def _resolve_fps(request: GenerationRequest, card: ModelCard) -> float:
    if request.fps is None:
        return card.limits.default_fps
    fps = _finite("fps", request.fps)
    if not card.limits.min_fps <= fps <= card.limits.max_fps:
        raise InvalidRequestError(
            f"fps {fps:g} is out of range: this model renders {card.limits.min_fps:g} to {card.limits.max_fps:g} fps"
        )
    return fps


def _resolve_frames(request: GenerationRequest, fps: float, limits: LimitsConfig) -> int:
    if request.duration_s is not None and request.num_frames is not None:
        raise InvalidRequestError("set duration_s or num_frames, not both")
    max_frames = max(1, round(limits.max_duration_s * fps))
    if request.num_frames is not None:
        if request.num_frames < 1:
            raise InvalidRequestError(f"num_frames must be at least 1, got {request.num_frames}")
        if request.num_frames > max_frames:
            raise InvalidRequestError(
                f"num_frames {request.num_frames} is {request.num_frames / fps:g} s at {fps:g} fps, above the "
                f"maximum of {limits.max_duration_s:g} s ({max_frames} frames)"
            )
        return request.num_frames
    duration = limits.default_duration_s if request.duration_s is None else _finite("duration_s", request.duration_s)
    if duration <= 0:
        raise InvalidRequestError(f"duration_s must be positive, got {duration:g}")
    if duration > limits.max_duration_s:
        raise InvalidRequestError(f"duration_s {duration:g} is above the maximum of {limits.max_duration_s:g} s")
    if duration < limits.min_duration_s:
        raise InvalidRequestError(f"duration_s {duration:g} is below the minimum of {limits.min_duration_s:g} s")
    return max(1, round(duration * fps))


def resolve_request(request: GenerationRequest, card: ModelCard, limits: LimitsConfig) -> RenderSpec:
    """Validate ``request`` and fill its defaults; raises :class:`InvalidRequestError`."""
    prompt = _check_text("prompt", request.prompt, limits, required=True)
    negative_prompt = _check_text("negative_prompt", request.negative_prompt, limits, required=False)
    fps = _resolve_fps(request, card)
    num_frames = _resolve_frames(request, fps, limits)

    max_side = card.limits.max_image_side if num_frames == 1 else card.limits.max_side
    width = request.width if request.width is not None else (limits.default_width or card.limits.default_width)
    height = request.height if request.height is not None else (limits.default_height or card.limits.default_height)
    width = _check_side("width", width, card, max_side)
    height = _check_side("height", height, card, max_side)

    steps = card.limits.default_steps if request.steps is None else request.steps
    if not 1 <= steps <= card.limits.max_steps:
        raise InvalidRequestError(f"steps must be between 1 and {card.limits.max_steps}, got {steps}")

    guidance = card.limits.default_guidance_scale if request.guidance_scale is None else request.guidance_scale
    guidance = _finite("guidance_scale", guidance)
    if not 0 <= guidance <= MAX_GUIDANCE_SCALE:
        raise InvalidRequestError(f"guidance_scale must be between 0 and {MAX_GUIDANCE_SCALE:g}, got {guidance:g}")

    if request.seed is not None and not 0 <= request.seed <= MAX_SEED:
        raise InvalidRequestError(f"seed must be between 0 and 2^64-1, got {request.seed}")
    seed = request.seed if request.seed is not None else secrets.randbits(63)

    if not PRIORITY_RANGE[0] <= request.priority <= PRIORITY_RANGE[1]:
        raise InvalidRequestError(
            f"priority must be between {PRIORITY_RANGE[0]} and {PRIORITY_RANGE[1]}, got {request.priority}"
        )
    key = request.idempotency_key
    if key and (len(key) > limits.max_idempotency_key_chars or not _IDEMPOTENCY_KEY.match(key)):
        raise InvalidRequestError(
            f"idempotency_key must be 1 to {limits.max_idempotency_key_chars} printable ASCII characters without spaces"
        )

    return RenderSpec(
        prompt=prompt,
        negative_prompt=negative_prompt,
        width=width,
        height=height,
        fps=fps,
        num_frames=num_frames,
        seed=seed,
        steps=steps,
        guidance_scale=guidance,
        expand_prompt=not request.skip_prompt_expansion,
        priority=request.priority,
    )
