"""What every generation mode implements, and the frame arithmetic several of them share.

A mode is one :class:`ModeRules` subclass in its own module of this package, registered in
``__init__.py``. Its class attributes say how a request selects it and what it takes; its
methods resolve the request into :class:`RenderSpec` fields (with the mode's own checks and
messages), lay the spec out on the latent grid (a :class:`JobPlan`) and name what it adds to
the manifest. Everything here is pure: plain data in, plain data out.

Frame counts land on the causal VAE's latent grid (latent frame 0 is one pixel frame, every
later latent frame is ``temporal_factor`` = f pixel frames), because given frames are kept as
whole latent frames; each mode's module says which counts it uses.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import math
from collections.abc import Sequence
from typing import ClassVar

from tessera.models.interface import TimeGrid, VideoModel
from tessera.serving.config import LimitsConfig
from tessera.serving.errors import InvalidRequestError
from tessera.serving.jobs.layout import JobPlan
from tessera.serving.jobs.planner import RenderPlan, TilingOptions
from tessera.serving.jobs.spec import GenerationRequest, MediaInfo, MediaInput, Mode, RenderSpec
from tessera.serving.stages import Conditioning

IMAGE, VIDEO = "image", "video"
"""The kinds of file a media input may have to hold."""
IMAGE_FORMATS = {"png": "PNG", "mjpeg": "JPEG", "webp": "WebP"}


class Length(enum.Enum):
    """Where a mode's number of output frames comes from."""

    REQUESTED = "requested"
    """duration_s or num_frames, else the deployment's default duration."""
    SHORTENS_INPUT = "shortens_input"
    """The input's length; duration_s or num_frames, when given, can only shorten it."""
    OWN = "own"
    """The mode's own (one frame, the inputs plus new frames, the shots); giving one is an error."""


@dataclasses.dataclass(frozen=True)
class ResolveContext:
    """What validation has settled before a mode resolves its own fields."""

    media: dict[str, MediaInfo]
    """What each media input holds, by field name (each already of the kind the mode needs)."""
    fps: float
    requested_frames: int | None
    """The request's length in frames for :attr:`Length.REQUESTED` (and a given one for
    :attr:`Length.SHORTENS_INPUT`), else None."""
    grid: TimeGrid
    limits: LimitsConfig


class ModeRules(abc.ABC):
    """One generation mode: how a request selects it, resolves, is laid out and is recorded.

    The defaults are those of a mode with nothing given: the request's length, a plain render
    plan, no manifest entries of its own."""

    mode: ClassVar[Mode]
    selected_by: ClassVar[tuple[str, ...]] = ()
    """Request fields that select the mode (any one of them set); none: only as the default."""
    options: ClassVar[tuple[str, ...]] = ()
    """Request fields that apply only with this mode: setting one without it is an error."""
    inputs: ClassVar[dict[str, str]] = {}
    """Media fields the mode reads, in order, and the kind each must hold (IMAGE or VIDEO)."""
    length: ClassVar[Length] = Length.REQUESTED
    own_length_reason: ClassVar[str] = ""
    """For :attr:`Length.OWN`: why duration_s/num_frames must be left unset (ends the message)."""
    prompt_required: ClassVar[bool] = True
    writes_image: ClassVar[bool] = False
    """The output is one PNG instead of an MP4."""

    def selected(self, request: GenerationRequest) -> bool:
        return any(is_set(request, name) for name in self.selected_by)

    def check_inputs(self, media: dict[str, MediaInfo]) -> None:
        """Rules on the inputs taken together (each one's kind is checked before, by the registry)."""

    @abc.abstractmethod
    def resolve(self, request: GenerationRequest, context: ResolveContext) -> dict:
        """The mode's fields of :class:`RenderSpec`, ``num_frames`` included; raises
        :class:`InvalidRequestError` naming the field, the value and the rule."""

    def plan(self, spec: RenderSpec, render: RenderPlan, grid: TimeGrid, options: TilingOptions) -> JobPlan:
        """The spec laid out on the latent grid: what is given where, and how windows are conditioned."""
        return JobPlan(self.mode, render)

    def manifest(self, spec: RenderSpec, plan: JobPlan, model: VideoModel, conditionings: Sequence[Conditioning]) -> dict:
        """Entries the mode adds to the job's manifest (beside the mode, its inputs and its layout)."""
        return {}


def is_set(request: GenerationRequest, name: str) -> bool:
    """Whether the request sets a field: a media input with data or a URI, any other field off its default."""
    value = getattr(request, name)
    if isinstance(value, MediaInput):
        return value.is_set
    return value != GenerationRequest.model_fields[name].default


def require_kind(name: str, kind: str, info: MediaInfo) -> None:
    """A media input holds the kind of file its field needs."""
    if kind == IMAGE:
        if info.kind != "image" or info.format not in IMAGE_FORMATS:
            what = f"a {info.format} video" if info.kind == "video" else f"a {info.format} image"
            raise InvalidRequestError(f"{name} must be a PNG, JPEG or WebP image; got {what}")
    elif info.kind != "video":
        raise InvalidRequestError(f"{name} must be a video; got a {info.format} image (use from_image to animate an image)")


def resample_indices(source_frames: int, source_fps: float, fps: float) -> tuple[int, ...]:
    """Source frame of each output frame when a ``source_fps`` video is played at ``fps``
    (nearest earlier frame; the duration is kept)."""
    if source_frames < 1:
        raise ValueError(f"source_frames must be >= 1, got {source_frames}")
    if source_fps <= 0 or math.isclose(source_fps, fps, rel_tol=1e-6):
        return tuple(range(source_frames))
    count = max(1, round(source_frames * fps / source_fps))
    return tuple(min(source_frames - 1, math.floor(i * source_fps / fps + 1e-6)) for i in range(count))


def video_frames(info: MediaInfo, fps: float) -> tuple[int, ...]:
    """Source frames of a video input, played at the output's ``fps``."""
    return resample_indices(info.frames, info.fps, fps)


def seconds_to_frames(name: str, value: float | None, default: float | None, fps: float) -> int:
    """A length in seconds given by field ``name`` (``default`` when unset; None: required), in frames."""
    if value is None:
        if default is None:
            raise InvalidRequestError(f"{name} is required")
        value = default
    if not math.isfinite(value) or value <= 0:
        raise InvalidRequestError(f"{name} must be a positive number of seconds, got {value:g}")
    return max(1, round(value * fps))


def check_total(frames: int, fps: float, limits: LimitsConfig, what: str) -> None:
    """The output's frames, as ``what`` makes them, within the deployment's longest video."""
    max_frames = max(1, round(limits.max_duration_s * fps))
    if frames > max_frames:
        raise InvalidRequestError(
            f"{what} makes {frames / fps:g} s ({frames} frames at {fps:g} fps), above the maximum of {limits.max_duration_s:g} s"
        )
