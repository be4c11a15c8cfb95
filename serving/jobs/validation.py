"""Check a request against the deployment's limits and the model's, before any model work.

Pure: plain data in, a resolved :class:`RenderSpec` or an :class:`InvalidRequestError` with a
message that names the field, the value and the rule out.
"""

from __future__ import annotations

import math
import re
import secrets

from pydantic import ValidationError

from tessera.models.interface import ModelCard
from tessera.serving.config import LimitsConfig
from tessera.serving.errors import InvalidRequestError, describe_value, validation_message
from tessera.serving.jobs import modes
from tessera.serving.jobs.modes.base import Length, ModeRules, ResolveContext
from tessera.serving.jobs.spec import GenerationRequest, MediaInfo, RenderSpec

MAX_SEED = 2**64 - 1
MAX_GUIDANCE_SCALE = 30.0
PRIORITY_RANGE = (-10, 10)
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces
MAX_ASPECT_RATIO_CHARS = 32
MAX_URI_CHARS = 2048
"""Longest ``s3://`` URI of a media input (S3 keys are at most 1024 UTF-8 bytes)."""
MAX_INPUT_DURATION_FACTOR = 10
"""A video input may be this many times the longest output (an edit can use its start)."""


def _finite(name: str, value: float, allowed: str = "") -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        suffix = f" ({allowed})" if allowed else ""
        raise InvalidRequestError(f"{name} must be a finite number, got {describe_value(value)}{suffix}")
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
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequestError(f"{name} is not valid Unicode text (it holds a lone surrogate)") from None
    return text


def _check_seconds(name: str, value: float | None, limits: LimitsConfig) -> None:
    """A length in seconds: unset, or finite in (0, max_duration_s] (checked before any ``value * fps``)."""
    if value is None:
        return
    allowed = f"0 < {name} <= {limits.max_duration_s:g} s"
    _finite(name, value, allowed)
    if value <= 0:
        raise InvalidRequestError(f"{name} must be a positive number of seconds, got {value:g} ({allowed})")
    if value > limits.max_duration_s:
        raise InvalidRequestError(f"{name} {value:g} is above the maximum of {limits.max_duration_s:g} s ({allowed})")


def check_request(request: GenerationRequest, card: ModelCard, limits: LimitsConfig) -> None:
    """Every field of ``request`` on its own: types, finite numbers, ranges, lengths.

    Cheap and free of I/O, so it can run before anything else (idempotency look-up, reading
    inputs); :func:`resolve_request` runs it first. Every number is checked here before any
    arithmetic on it (``1e308 * fps`` overflows ``round``), and no message quotes more than a
    few dozen characters of the caller's input."""
    for name in ("prompt", "negative_prompt", "character"):
        _check_text(name, getattr(request, name), limits, required=False)
    if len(request.shots) > limits.max_shots:
        raise InvalidRequestError(f"{len(request.shots)} shots is more than the limit of {limits.max_shots}")
    for index, shot in enumerate(request.shots):
        _check_text(f"shots[{index}].prompt", shot.prompt, limits, required=False)
        # 0 is proto3's "unset": the mode's rules say it is required.
        _check_seconds(f"shots[{index}].duration_s", shot.duration_s or None, limits)

    if request.duration_s is not None:
        allowed = f"0 < duration_s <= {limits.max_duration_s:g} s"
        _finite("duration_s", request.duration_s, allowed)
        if request.duration_s <= 0:
            raise InvalidRequestError(f"duration_s must be positive, got {request.duration_s:g} ({allowed})")
        if request.duration_s > limits.max_duration_s:
            raise InvalidRequestError(f"duration_s {request.duration_s:g} is above the maximum of {limits.max_duration_s:g} s")
    if request.num_frames is not None and request.num_frames < 1:
        raise InvalidRequestError(f"num_frames must be at least 1, got {request.num_frames}")
    if request.fps is not None:
        fps = _finite("fps", request.fps, f"{card.limits.min_fps:g} <= fps <= {card.limits.max_fps:g}")
        if not card.limits.min_fps <= fps <= card.limits.max_fps:
            raise InvalidRequestError(
                f"fps {fps:g} is out of range: this model renders {card.limits.min_fps:g} to {card.limits.max_fps:g} fps"
            )
    if request.guidance_scale is not None:
        guidance = _finite("guidance_scale", request.guidance_scale, f"0 <= guidance_scale <= {MAX_GUIDANCE_SCALE:g}")
        if not 0 <= guidance <= MAX_GUIDANCE_SCALE:
            raise InvalidRequestError(f"guidance_scale must be between 0 and {MAX_GUIDANCE_SCALE:g}, got {guidance:g}")
    if request.strength is not None:
        if not (isinstance(request.strength, (int, float)) and math.isfinite(request.strength) and 0 < request.strength <= 1):
            raise InvalidRequestError(f"strength must be in (0, 1], got {describe_value(request.strength)}")
    _check_seconds("extend_seconds", request.extend_seconds, limits)
    _check_seconds("transition_seconds", request.transition_seconds, limits)

    max_side = max(card.limits.max_side, card.limits.max_image_side)
    for name in ("width", "height", "short_side"):
        value = getattr(request, name)
        if value is not None and value <= 0:
            raise InvalidRequestError(f"{name} must be a positive number of pixels, got {value}")
        if value is not None and value > max_side:
            raise InvalidRequestError(f"{name} {value} is above the model's maximum of {max_side} px")
    if request.steps is not None and not 1 <= request.steps <= card.limits.max_steps:
        raise InvalidRequestError(f"steps must be between 1 and {card.limits.max_steps}, got {request.steps}")
    if request.seed is not None and not 0 <= request.seed <= MAX_SEED:
        raise InvalidRequestError(f"seed must be between 0 and 2^64-1, got {describe_value(request.seed)}")
    if not PRIORITY_RANGE[0] <= request.priority <= PRIORITY_RANGE[1]:
        raise InvalidRequestError(
            f"priority must be between {PRIORITY_RANGE[0]} and {PRIORITY_RANGE[1]}, got {describe_value(request.priority)}"
        )
    key = request.idempotency_key
    if key and (len(key) > limits.max_idempotency_key_chars or not _IDEMPOTENCY_KEY.match(key)):
        raise InvalidRequestError(
            f"idempotency_key must be 1 to {limits.max_idempotency_key_chars} printable ASCII characters without spaces"
        )
    if len(request.aspect_ratio) > MAX_ASPECT_RATIO_CHARS:
        raise InvalidRequestError(
            f"aspect_ratio has {len(request.aspect_ratio)} characters; give W:H, e.g. 16:9"
        )
    for name, media in request.media().items():
        if len(media.uri) > MAX_URI_CHARS:
            raise InvalidRequestError(f"{name}.uri has {len(media.uri)} characters; the limit is {MAX_URI_CHARS}")


def _check_input_lengths(media: dict[str, MediaInfo], limits: LimitsConfig) -> None:
    """Video inputs of a sane length, before their frames are resampled to the output rate."""
    longest = MAX_INPUT_DURATION_FACTOR * limits.max_duration_s
    for name, info in media.items():
        if info.kind != "video":
            continue
        if not (math.isfinite(info.fps) and info.fps > 0 and info.frames >= 1):
            raise InvalidRequestError(f"{name} has no usable frame rate or frame count")
        if info.frames / info.fps > longest:
            raise InvalidRequestError(
                f"{name} is {info.frames / info.fps:g} s long; video inputs may be at most {longest:g} s"
            )


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


def _resolve_fps(request: GenerationRequest, card: ModelCard, media: dict[str, MediaInfo]) -> float:
    if request.fps is None:
        # A video input's own rate when the model renders it, so its frames are used one to one.
        for name in modes.VIDEO_FIELDS:
            info = media.get(name)
            if info is not None and card.limits.min_fps <= info.fps <= card.limits.max_fps:
                return info.fps
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


def _requested_frames(request: GenerationRequest, rules: ModeRules, fps: float, limits: LimitsConfig) -> int | None:
    """The request's length in frames, where its mode takes one (see :class:`Length`)."""
    given = request.duration_s is not None or request.num_frames is not None
    if rules.length is Length.OWN:
        if given:
            raise InvalidRequestError(
                f"leave duration_s and num_frames unset for {rules.mode.value}: {rules.own_length_reason}"
            )
        return None
    if rules.length is Length.REQUESTED or given:
        return _resolve_frames(request, fps, limits)
    return None


def _parse_aspect(text: str) -> float:
    parts = text.replace("/", ":").replace("x", ":").split(":")
    try:
        w, h = (float(p) for p in parts)
    except ValueError:
        raise InvalidRequestError(f"aspect_ratio {describe_value(text)} is not of the form W:H, e.g. 16:9") from None
    if not (math.isfinite(w) and math.isfinite(h) and w > 0 and h > 0) or not 0.1 <= w / h <= 10:
        raise InvalidRequestError(f"aspect_ratio {describe_value(text)} must be two positive numbers within 10:1 of each other")
    return w / h


def _resolve_size(request: GenerationRequest, card: ModelCard, limits: LimitsConfig, media: dict[str, MediaInfo]) -> tuple[int, int]:
    """width/height as given; or from aspect_ratio and short_side; or the inputs' size; or the default."""
    multiple = card.geometry.size_multiple
    shaped = bool(request.aspect_ratio) or request.short_side is not None
    if shaped and (request.width is not None or request.height is not None):
        raise InvalidRequestError("set width/height or aspect_ratio/short_side, not both")
    default = (limits.default_width or card.limits.default_width, limits.default_height or card.limits.default_height)
    sizes = {(info.width, info.height) for info in media.values()}
    if shaped:
        base = next(iter(sizes)) if len(sizes) == 1 else default
        aspect = _parse_aspect(request.aspect_ratio) if request.aspect_ratio else base[0] / base[1]
        short = request.short_side if request.short_side is not None else min(base)
        if short <= 0:
            raise InvalidRequestError(f"short_side must be a positive number of pixels, got {short}")
        long = short * max(aspect, 1 / aspect)
        short_px, long_px = (max(multiple, round(v / multiple) * multiple) for v in (short, long))
        return (long_px, short_px) if aspect >= 1 else (short_px, long_px)
    if request.width is not None or request.height is not None:
        return (request.width if request.width is not None else default[0],
                request.height if request.height is not None else default[1])
    if not media:
        return default
    if len(sizes) > 1:
        listed = ", ".join(f"{name} {info.width}x{info.height}" for name, info in media.items())
        raise InvalidRequestError(f"the inputs differ in size ({listed}); set width and height (they are scaled to it)")
    width, height = sizes.pop()
    name = next(iter(media))
    if any(side % multiple or not card.limits.min_side <= side <= card.limits.max_side for side in (width, height)):
        raise InvalidRequestError(
            f"{name} is {width}x{height}, which is not a size this model renders (sides multiples of {multiple}, "
            f"{card.limits.min_side} to {card.limits.max_side} px); set width and height, or aspect_ratio and "
            f"short_side, and the input is scaled to cover that size and centre-cropped"
        )
    return width, height


def resolve_request(
    request: GenerationRequest, card: ModelCard, limits: LimitsConfig, media: dict[str, MediaInfo] | None = None
) -> RenderSpec:
    """Validate ``request`` and fill its defaults; raises :class:`InvalidRequestError`.

    ``media`` holds what each media input of the request was probed to contain (by field name);
    it is required for every input the request sets.

    Only :class:`InvalidRequestError` comes out for a bad request (a pydantic ValidationError
    from building the spec is reported as one too, without the input values), and
    :class:`FailedPreconditionError` for a mode the model does not serve."""
    media = media or {}
    missing = set(request.media()) - set(media)
    if missing:
        raise ValueError(f"inputs {sorted(missing)} were not probed before validation")
    try:
        return _resolve(request, card, limits, media)
    except ValidationError as error:
        raise InvalidRequestError(validation_message(error, "the request")) from None


def _resolve(request: GenerationRequest, card: ModelCard, limits: LimitsConfig, media: dict[str, MediaInfo]) -> RenderSpec:
    check_request(request, card, limits)
    rules = modes.select_mode(request, card)
    modes.check_media(rules, media)
    _check_input_lengths(media, limits)
    prompt = _check_text("prompt", request.prompt, limits, required=rules.prompt_required)
    negative_prompt = _check_text("negative_prompt", request.negative_prompt, limits, required=False)
    fps = _resolve_fps(request, card, media)
    requested = _requested_frames(request, rules, fps, limits)
    mode_fields = rules.resolve(request, ResolveContext(media, fps, requested, card.geometry.time_grid, limits))
    num_frames = mode_fields["num_frames"]

    max_side = card.limits.max_image_side if num_frames == 1 else card.limits.max_side
    width, height = _resolve_size(request, card, limits, media)
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

    mode_fields.pop("num_frames")
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
        mode=rules.mode,
        **mode_fields,
    )
