"""Generation modes: which one a request asks for, and its inputs resolved to output frames.

Pure (plain data in, plain data out): the media inputs arrive already probed
(:class:`MediaInfo`), so every rule is unit-tested without files or storage. Each rule that a
request can break raises :class:`InvalidRequestError` naming the field, the value and the rule.

Frame counts land on the causal VAE's latent grid (latent frame 0 is one pixel frame, every
later latent frame is ``temporal_factor`` = f pixel frames), because given frames are kept as
whole latent frames:

* extend forward / transition's first video: the input is used up to its last whole group,
  ``1 + f*k`` frames (at most f-1 trailing frames are dropped);
* extend backward: the generated part is ``1 + f*k`` frames, so the input starts a group;
* transition bridge, and every shot after the first: multiples of f frames;
* loop: ``f*k`` frames, whole groups that repeat in a circle (see layout.py).
"""

from __future__ import annotations

import math

from tessera.models.interface import LatentGeometry
from tessera.serving.config import LimitsConfig
from tessera.serving.errors import InvalidRequestError
from tessera.serving.jobs.spec import GenerationRequest, MediaInfo, Mode, ResolvedInput, ShotSpec

DEFAULT_STRENGTH = 0.7
"""SDEdit strength when a request gives none: the tiny model takes the prompt's colour from about
0.6 on and keeps the input's layout up to about 0.8 (bench/modes_bench.py)."""
DEFAULT_TRANSITION_S = 2.0
MIN_LOOP_LATENTS = 2
"""Fewest latent groups a loop has (it is generated as a circle of whole groups)."""
MEDIA_FIELDS = ("from_image", "extend_video", "edit_video", "transition_from", "transition_to")
VIDEO_FIELDS = ("extend_video", "edit_video", "transition_from", "transition_to")
IMAGE_FORMATS = {"png": "PNG", "mjpeg": "JPEG", "webp": "WebP"}


def detect_mode(request: GenerationRequest) -> Mode:
    """The mode a request's fields select; two modes at once, or a mode option without its mode, is an error."""
    media = request.media()
    chosen = []
    if request.image:
        chosen.append(("image", Mode.IMAGE))
    if "from_image" in media:
        chosen.append(("from_image", Mode.IMAGE_TO_VIDEO))
    if "extend_video" in media:
        chosen.append(("extend_video", Mode.EXTEND))
    if "edit_video" in media:
        chosen.append(("edit_video", Mode.EDIT))
    if "transition_from" in media or "transition_to" in media:
        chosen.append(("transition_from/transition_to", Mode.TRANSITION))
    if request.loop:
        chosen.append(("loop", Mode.LOOP))
    if request.shots:
        chosen.append(("shots", Mode.MULTI_SHOT))
    if len(chosen) > 1:
        names = " and ".join(name for name, _ in chosen)
        raise InvalidRequestError(f"set one generation mode at a time; the request sets {names}")
    mode = chosen[0][1] if chosen else Mode.TEXT_TO_VIDEO

    strays = [
        ("image_is_last_frame", request.image_is_last_frame, Mode.IMAGE_TO_VIDEO, "from_image"),
        ("extend_seconds", request.extend_seconds is not None, Mode.EXTEND, "extend_video"),
        ("backward", request.backward, Mode.EXTEND, "extend_video"),
        ("strength", request.strength is not None, Mode.EDIT, "edit_video"),
        ("transition_seconds", request.transition_seconds is not None, Mode.TRANSITION, "transition_from and transition_to"),
        ("character", bool(request.character), Mode.MULTI_SHOT, "shots"),
    ]
    for name, is_set, needs, field in strays:
        if is_set and mode != needs:
            raise InvalidRequestError(f"{name} applies only with {field}")
    for name, item in media.items():
        if item.uri and item.data is not None:
            raise InvalidRequestError(f"{name}: set data or uri, not both")
    return mode


def check_media(mode: Mode, media: dict[str, MediaInfo]) -> None:
    """Each input is of the kind its field needs (an image for from_image, videos elsewhere)."""
    for name, info in media.items():
        if name == "from_image":
            if info.kind != "image" or info.format not in IMAGE_FORMATS:
                what = f"a {info.format} video" if info.kind == "video" else f"a {info.format} image"
                raise InvalidRequestError(f"from_image must be a PNG, JPEG or WebP image; got {what}")
        elif info.kind != "video":
            raise InvalidRequestError(
                f"{name} must be a video; got a {info.format} image (use from_image to animate an image)"
            )
    if mode == Mode.TRANSITION and set(media) != {"transition_from", "transition_to"}:
        missing = "transition_to" if "transition_from" in media else "transition_from"
        raise InvalidRequestError(f"a transition needs both transition_from and transition_to; {missing} is missing")


def resample_indices(source_frames: int, source_fps: float, fps: float) -> tuple[int, ...]:
    """Source frame of each output frame when a ``source_fps`` video is played at ``fps``
    (nearest earlier frame; the duration is kept)."""
    if source_frames < 1:
        raise ValueError(f"source_frames must be >= 1, got {source_frames}")
    if source_fps <= 0 or math.isclose(source_fps, fps, rel_tol=1e-6):
        return tuple(range(source_frames))
    count = max(1, round(source_frames * fps / source_fps))
    return tuple(min(source_frames - 1, math.floor(i * source_fps / fps + 1e-6)) for i in range(count))


def _seconds(name: str, value: float | None, default: float | None, fps: float) -> int:
    if value is None:
        if default is None:
            raise InvalidRequestError(f"{name} is required")
        value = default
    if not math.isfinite(value) or value <= 0:
        raise InvalidRequestError(f"{name} must be a positive number of seconds, got {value:g}")
    return max(1, round(value * fps))


def _no_length(request: GenerationRequest, mode: Mode, why: str) -> None:
    if request.duration_s is not None or request.num_frames is not None:
        raise InvalidRequestError(f"leave duration_s and num_frames unset for {mode.value}: {why}")


def _check_total(frames: int, fps: float, limits: LimitsConfig, what: str) -> None:
    max_frames = max(1, round(limits.max_duration_s * fps))
    if frames > max_frames:
        raise InvalidRequestError(
            f"{what} makes {frames / fps:g} s ({frames} frames at {fps:g} fps), above the maximum of {limits.max_duration_s:g} s"
        )


def _input(name: str, info: MediaInfo, indices: tuple[int, ...]) -> ResolvedInput:
    return ResolvedInput(name=name, info=info, frame_indices=indices)


def _video_frames(info: MediaInfo, fps: float) -> tuple[int, ...]:
    return resample_indices(info.frames, info.fps, fps)


def shot_text(character: str, prompt: str, shot_prompt: str) -> str:
    """What a shot is conditioned on: the shared description first, then the shot's own prompt."""
    return ", ".join(part.strip().rstrip(".,;") for part in (character, prompt, shot_prompt) if part.strip())


def resolve_mode(
    request: GenerationRequest,
    mode: Mode,
    media: dict[str, MediaInfo],
    fps: float,
    requested_frames: int | None,
    geometry: LatentGeometry,
    limits: LimitsConfig,
) -> dict:
    """The mode's fields of :class:`RenderSpec` (``num_frames`` included).

    ``requested_frames`` is the request's duration in frames where the mode takes one (text to
    video, image to video, loop, edit), else None."""
    grid = geometry.time_grid  # the latent grid's arithmetic (TimeGrid: starts 1 + f*k, groups f*k)
    if mode in (Mode.TEXT_TO_VIDEO, Mode.IMAGE_TO_VIDEO):
        fields: dict = {"num_frames": requested_frames}
        if mode == Mode.IMAGE_TO_VIDEO:
            fields["inputs"] = (_input("from_image", media["from_image"], (0,)),)
            fields["image_is_last_frame"] = request.image_is_last_frame
        return fields

    if mode == Mode.IMAGE:
        _no_length(request, mode, "an image is one frame")
        return {"num_frames": 1}

    if mode == Mode.LOOP:
        frames = grid.round_groups(requested_frames, MIN_LOOP_LATENTS)
        _check_total(frames, fps, limits, "the loop, rounded to the latent grid,")
        return {"num_frames": frames}

    if mode == Mode.EXTEND:
        _no_length(request, mode, "the output is the input plus extend_seconds")
        info = media["extend_video"]
        indices = _video_frames(info, fps)
        new = _seconds("extend_seconds", request.extend_seconds, None, fps)
        if request.backward:
            new = grid.ceil_start(new)
        else:
            indices = indices[: grid.floor_start(len(indices))]
        total = len(indices) + new
        _check_total(total, fps, limits, f"the input ({len(indices) / fps:g} s) plus extend_seconds")
        return {
            "num_frames": total, "inputs": (_input("extend_video", info, indices),),
            "extend_frames": new, "backward": request.backward,
        }

    if mode == Mode.EDIT:
        info = media["edit_video"]
        indices = _video_frames(info, fps)
        if requested_frames is not None:
            if requested_frames > len(indices):
                raise InvalidRequestError(
                    f"edit_video is {len(indices) / fps:g} s; duration_s/num_frames can only shorten it, "
                    f"got {requested_frames / fps:g} s"
                )
            indices = indices[:requested_frames]
        _check_total(len(indices), fps, limits, "edit_video")
        strength = DEFAULT_STRENGTH if request.strength is None else request.strength
        if not math.isfinite(strength) or not 0 < strength <= 1:
            raise InvalidRequestError(f"strength must be in (0, 1], got {strength:g}")
        return {"num_frames": len(indices), "inputs": (_input("edit_video", info, indices),), "strength": strength}

    if mode == Mode.TRANSITION:
        _no_length(request, mode, "the output is both videos plus the bridge")
        first = _video_frames(media["transition_from"], fps)
        first = first[: grid.floor_start(len(first))]
        second = _video_frames(media["transition_to"], fps)
        bridge = _seconds("transition_seconds", request.transition_seconds, DEFAULT_TRANSITION_S, fps)
        bridge = grid.round_groups(bridge)
        total = len(first) + bridge + len(second)
        _check_total(total, fps, limits, "transition_from, the bridge and transition_to")
        return {
            "num_frames": total, "transition_frames": bridge,
            "inputs": (_input("transition_from", media["transition_from"], first),
                       _input("transition_to", media["transition_to"], second)),
        }

    if mode == Mode.MULTI_SHOT:
        _no_length(request, mode, "the output is the sum of the shots' durations")
        if len(request.shots) > limits.max_shots:
            raise InvalidRequestError(f"{len(request.shots)} shots is more than the limit of {limits.max_shots}")
        shots = []
        for index, shot in enumerate(request.shots):
            if not shot.prompt.strip():
                raise InvalidRequestError(f"shots[{index}].prompt is empty: describe what happens in the shot")
            if len(shot.prompt) > limits.max_prompt_chars:
                raise InvalidRequestError(
                    f"shots[{index}].prompt has {len(shot.prompt)} characters; the limit is {limits.max_prompt_chars}"
                )
            wanted = _seconds(f"shots[{index}].duration_s", shot.duration_s or None, None, fps)
            # The first shot starts the video (1 + f*k frames), later ones are whole groups of f.
            frames = grid.round_start(wanted) if index == 0 else grid.round_groups(wanted)
            shots.append(ShotSpec(
                prompt=shot.prompt, text=shot_text(request.character, request.prompt, shot.prompt),
                num_frames=frames, transition=shot.transition,
            ))
        total = sum(s.num_frames for s in shots)
        _check_total(total, fps, limits, "the shots together")
        if len(request.character) > limits.max_prompt_chars:
            raise InvalidRequestError(f"character has {len(request.character)} characters; the limit is {limits.max_prompt_chars}")
        return {"num_frames": total, "shots": tuple(shots), "character": request.character}

    raise AssertionError(f"unhandled mode {mode}")
