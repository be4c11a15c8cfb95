"""Plain-data forms of a request: as the caller sent it, and resolved for rendering."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


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

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps
