"""Plain-data forms of a request: as the caller sent it, and resolved for rendering."""

from __future__ import annotations

import enum
import hashlib

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Mode(str, enum.Enum):
    """What a request asks for; decided by which mode inputs it sets."""

    TEXT_TO_VIDEO = "text_to_video"
    IMAGE = "image"
    IMAGE_TO_VIDEO = "image_to_video"
    EXTEND = "extend"
    EDIT = "edit"
    TRANSITION = "transition"
    LOOP = "loop"
    MULTI_SHOT = "multi_shot"


class MediaInput(BaseModel):
    """An input image or video: inline bytes or an ``s3://`` URI (mirrors ``tessera.v1.Media``).

    Inline bytes never reach a job record: they are stored beside it as an object, and the
    record keeps their SHA-256 (so an idempotency key still tells two different inputs apart)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str = Field("", description="s3://bucket/key of the input, or '' for inline data.")
    data: bytes | None = Field(None, exclude=True, repr=False, description="Inline file bytes (never serialised).")
    sha256: str = Field("", description="SHA-256 (hex) of the inline data; computed when data is given.")
    size_bytes: int = Field(0, ge=0, description="Length of the inline data.")

    @model_validator(mode="after")
    def _digest(self) -> MediaInput:
        if self.data is not None and not self.sha256:
            object.__setattr__(self, "sha256", hashlib.sha256(self.data).hexdigest())
            object.__setattr__(self, "size_bytes", len(self.data))
        return self

    @property
    def is_set(self) -> bool:
        return bool(self.uri or self.data is not None or self.sha256)


class ShotTransition(str, enum.Enum):
    CUT = "CUT"
    BLEND = "BLEND"


class ShotRequest(BaseModel):
    """One shot of a multi-shot request (mirrors ``tessera.v1.Shot``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=True)

    prompt: str = Field("", description="What happens in the shot.")
    duration_s: float = Field(0.0, description="Seconds of the shot.")
    transition: ShotTransition = Field(ShotTransition.CUT, description="How it begins after the previous shot.")


class GenerationRequest(BaseModel):
    """A generation request as received (mirrors ``tessera.v1.GenerateRequest``).

    Unset optional fields are ``None``. Types are checked here; ranges and consistency are
    checked by :func:`tessera.serving.jobs.validation.resolve_request`, which writes the
    caller-facing messages.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=True)

    prompt: str = Field("", description="What to render.")
    negative_prompt: str = Field("", description="What to steer away from.")
    duration_s: float | None = Field(None, description="Video length in seconds (or num_frames).")
    num_frames: int | None = Field(None, description="Video length in frames (or duration_s).")
    width: int | None = Field(None, description="Width in pixels; None: default.")
    height: int | None = Field(None, description="Height in pixels; None: default.")
    fps: float | None = Field(None, description="Frames per second; None: the model's default.")
    seed: int | None = Field(None, description="Random seed; None: drawn at random.")
    steps: int | None = Field(None, description="Sampler steps; None: the model's default.")
    guidance_scale: float | None = Field(None, description="Classifier-free guidance scale; None: default.")
    idempotency_key: str = Field("", description="Repeat-safe key, scoped to the tenant.")
    priority: int = Field(0, description="Higher runs first among queued jobs.")
    skip_prompt_expansion: bool = Field(False, description="Render the prompt as written.")
    aspect_ratio: str = Field("", description="'W:H' instead of width/height ('' for none).")
    short_side: int | None = Field(None, description="Short side in pixels with aspect_ratio; None: default.")
    image: bool = Field(False, description="Render one frame as image.png.")
    from_image: MediaInput | None = Field(None, description="Image to video: the first (or last) frame.")
    image_is_last_frame: bool = Field(False, description="from_image is the last frame instead of the first.")
    extend_video: MediaInput | None = Field(None, description="Video to extend.")
    extend_seconds: float | None = Field(None, description="Seconds of new video for extend.")
    backward: bool = Field(False, description="Extend before the video's start instead of after its end.")
    edit_video: MediaInput | None = Field(None, description="Video to edit (SDEdit).")
    strength: float | None = Field(None, description="SDEdit noise strength in (0, 1]; None: default.")
    transition_from: MediaInput | None = Field(None, description="Transition: the video the output starts with.")
    transition_to: MediaInput | None = Field(None, description="Transition: the video the output ends with.")
    transition_seconds: float | None = Field(None, description="Seconds of the generated bridge; None: default.")
    loop: bool = Field(False, description="Render a seamless loop.")
    shots: tuple[ShotRequest, ...] = Field((), description="Multi-shot: the shots in order.")
    character: str = Field("", description="Multi-shot: shared description of the character(s).")

    def without_data(self) -> GenerationRequest:
        """This request with inline media bytes dropped (their SHA-256 stays): what a job record keeps."""
        update = {
            name: media.model_copy(update={"data": None}) for name, media in self.media().items() if media.data is not None
        }
        return self.model_copy(update=update) if update else self

    def media(self) -> dict[str, MediaInput]:
        """The media inputs that are set, by field name."""
        fields = ("from_image", "extend_video", "edit_video", "transition_from", "transition_to")
        return {name: getattr(self, name) for name in fields if getattr(self, name) is not None and getattr(self, name).is_set}


class MediaInfo(BaseModel):
    """What a media input holds, read from its header and first frame at submit time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str = Field(..., description="'image' or 'video'.")
    format: str = Field(..., description="Codec name, e.g. 'png', 'mjpeg', 'h264'.")
    width: int = Field(..., description="Width in pixels.")
    height: int = Field(..., description="Height in pixels.")
    frames: int = Field(..., description="Frames (1 for an image).")
    fps: float = Field(..., description="Frames per second (0 for an image).")
    size_bytes: int = Field(..., description="File length.")
    sha256: str = Field(..., description="SHA-256 (hex) of the file.")
    source: str = Field(..., description="Where it came from: its s3:// URI, or 'inline'.")


class ResolvedInput(BaseModel):
    """A media input as the job uses it: which frames, placed where."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., description="Request field it came from, e.g. 'extend_video'.")
    info: MediaInfo = Field(..., description="What the file holds.")
    frame_indices: tuple[int, ...] = Field(..., description="Source frames used, in output order (resampled to the output fps).")


class ShotSpec(BaseModel):
    """A shot resolved to frames of the output."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(..., description="The shot's prompt as given.")
    text: str = Field(..., description="What is encoded for the shot: shared description plus the shot's prompt.")
    num_frames: int = Field(..., description="Output frames of the shot (on the latent grid).")
    transition: ShotTransition = Field(..., description="How it begins after the previous shot.")


class RenderSpec(BaseModel):
    """A request with every default resolved and every value checked: what the job renders."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str = Field(..., description="The user's prompt.")
    negative_prompt: str = Field(..., description="The negative prompt ('' for none).")
    width: int = Field(..., description="Output width in pixels.")
    height: int = Field(..., description="Output height in pixels.")
    fps: float = Field(..., description="Output frames per second.")
    num_frames: int = Field(..., description="Output frames.")
    seed: int = Field(..., description="Seed of the initial noise.")
    steps: int = Field(..., description="Sampler steps.")
    guidance_scale: float = Field(..., description="Classifier-free guidance scale.")
    expand_prompt: bool = Field(..., description="Whether the prompt is re-captioned before encoding.")
    priority: int = Field(..., description="Queue priority.")
    mode: Mode = Field(Mode.TEXT_TO_VIDEO, description="Generation mode.")
    inputs: tuple[ResolvedInput, ...] = Field((), description="Media inputs, with the frames used.")
    image_is_last_frame: bool = Field(False, description="Image to video: the image is the last frame.")
    extend_frames: int = Field(0, description="Extend: frames generated (before or after the input).")
    backward: bool = Field(False, description="Extend: the new frames come before the input.")
    strength: float = Field(0.0, description="Edit: SDEdit strength in (0, 1].")
    transition_frames: int = Field(0, description="Transition: frames of the generated bridge.")
    shots: tuple[ShotSpec, ...] = Field((), description="Multi-shot: the shots in order.")
    character: str = Field("", description="Multi-shot: shared description.")

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps

    def input(self, name: str) -> ResolvedInput:
        for item in self.inputs:
            if item.name == name:
                return item
        raise KeyError(f"the job has no input {name!r}")
