"""The videos API's objects (as the ``openai`` SDK's ``types/video*.py`` define them) and
Tessera's job records turned into them.

A Video *is* a Tessera job: its ``id`` is the job id, so the same job answers over gRPC
(``GetJob``/``ListJobs``) and here. Fields the API lacks ride along under ``tessera`` (the
SDK keeps unknown fields: ``video.tessera`` or ``video.model_extra["tessera"]``).
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tessera.serving.http.errors import failure_code
from tessera.serving.jobs.records import JobRecord, JobState
from tessera.serving.jobs.spec import Mode
from tessera.serving.storage import ObjectStore

Status = Literal["queued", "in_progress", "completed", "failed"]

STATUS: dict[JobState, Status] = {
    JobState.QUEUED: "queued",
    JobState.RUNNING: "in_progress",
    JobState.SUCCEEDED: "completed",
    JobState.FAILED: "failed",
    JobState.CANCELLED: "failed",  # the API has no 'cancelled': a failure with error.code 'cancelled'
}


class _Object(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(_Object):
    message: str = Field(..., description="What went wrong, for a person.")
    type: str = Field(..., description="invalid_request_error, rate_limit_error, permission_error or server_error.")
    param: str | None = Field(None, description="The request parameter at fault, when there is one.")
    code: str | None = Field(None, description="A machine-readable code, e.g. invalid_value, not_found, invalid_api_key.")


class ErrorResponse(_Object):
    error: ErrorDetail


class VideoError(_Object):
    """Why a video failed (``status: failed``)."""

    code: str = Field(..., description="e.g. service_unavailable, internal_error, cancelled.")
    message: str = Field(..., description="Tessera's message for the failure.")
    type: str | None = Field(None, description="server_error or invalid_request_error.")
    param: str | None = Field(None, description="Always null here.")


class TesseraDetails(_Object):
    """Tessera's own view of the job, beyond what the API defines."""

    state: JobState = Field(..., description="QUEUED, RUNNING, SUCCEEDED, FAILED or CANCELLED.")
    mode: Mode = Field(..., description="text_to_video, image_to_video, extend, edit, ...")
    stage: str = Field(..., description="QUEUED, EXPANDING_PROMPT, DENOISING, DECODING, FINALIZING or DONE.")
    fraction: float = Field(..., description="Progress as a fraction 0..1 (``progress`` is this in percent).")
    seed: int = Field(..., description="Seed of the initial noise (same seed, same video).")
    steps: int = Field(..., description="Sampler steps.")
    width: int
    height: int
    fps: float
    num_frames: int
    duration_s: float = Field(..., description="Length in seconds, unrounded.")
    expanded_prompt: str = Field("", description="The caption the model saw, once known.")
    model_version: str = Field("", description="family/name@weights-version of the model.")
    video_uri: str | None = Field(None, description="s3:// URI of the MP4, once completed.")
    video_url: str | None = Field(None, description="Presigned HTTP URL of the MP4, valid until ``expires_at``.")
    thumbnail_url: str | None = Field(None, description="Presigned HTTP URL of the poster PNG, valid until ``expires_at``.")
    manifest_uri: str | None = Field(None, description="s3:// URI of the job's manifest, once completed.")


class Video(_Object):
    """A video job, as ``openai.types.Video``."""

    id: str = Field(..., description="The Tessera job id.")
    object: Literal["video"] = "video"
    created_at: int = Field(..., description="Unix seconds the job was accepted.")
    completed_at: int | None = Field(None, description="Unix seconds the job ended (completed or failed).")
    expires_at: int | None = Field(
        None, description="Unix seconds the presigned URLs in this answer expire (now + storage.presign_expiry_s); "
        "the objects themselves stay until the video is deleted."
    )
    model: str = Field(..., description="family/name of the model, e.g. native/tiny.")
    progress: int = Field(..., ge=0, le=100, description="Percent done (100 once completed).")
    prompt: str | None = None
    remixed_from_video_id: str | None = Field(None, description="The source video of a remix or edit of a video by id.")
    seconds: str = Field(..., description="Length in seconds (for extensions: the stitched total).")
    size: str = Field(..., description="WIDTHxHEIGHT in pixels.")
    status: Status
    error: VideoError | None = None
    tessera: TesseraDetails


class VideoList(_Object):
    object: Literal["list"] = "list"
    data: list[Video]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class VideoDeleted(_Object):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool = True


class VideoProgress(_Object):
    """One ``progress`` event of ``GET /v1/videos/{id}/events``."""

    object: Literal["video.progress"] = "video.progress"
    id: str
    status: Status
    progress: int = Field(..., ge=0, le=100)
    fraction: float
    stage: str
    step: int
    total_steps: int
    segments_done: int
    total_segments: int
    segment_url: str | None = Field(None, description="Presigned URL of the latest finished segment preview (MP4).")


def percent(fraction: float) -> int:
    """Percent done of a job that has not completed: 0..99 (100 is only ever a completed video's)."""
    return max(0, min(99, int(fraction * 100)))


def source_video_id(record: JobRecord, bucket: str) -> str | None:
    """The job an edit-mode job's input video came from, when it was another job's video.mp4."""
    media = record.request.edit_video
    if media is None or not media.uri:
        return None
    prefix = f"s3://{bucket}/{record.tenant}/"
    rest = media.uri[len(prefix):] if media.uri.startswith(prefix) else ""
    job_id, _, name = rest.partition("/")
    return job_id if job_id and name == "video.mp4" else None


def model_name(record: JobRecord) -> str:
    return record.model.split("@", 1)[0]


def video_object(record: JobRecord, store: ObjectStore, now: float | None = None) -> Video:
    """A record as the API's Video; presigned URLs are signed afresh, as for gRPC."""
    now = time.time() if now is None else now
    spec = record.spec
    done = record.state == JobState.SUCCEEDED
    details = TesseraDetails(
        state=record.state, mode=spec.mode, stage=record.progress.stage.value, fraction=record.progress.fraction,
        seed=spec.seed, steps=spec.steps, width=spec.width, height=spec.height, fps=spec.fps,
        num_frames=spec.num_frames, duration_s=spec.duration_s, expanded_prompt=record.expanded_prompt,
        model_version=record.model,
    )
    expires_at = None
    if done:
        expires_at = int(now + store.config.presign_expiry_s)
        if record.video_key:
            details.video_uri = store.uri(record.video_key)
            details.video_url = store.presign_get(record.video_key)
        thumbnail = record.poster_key or record.image_key
        if thumbnail:
            details.thumbnail_url = store.presign_get(thumbnail)
        if record.manifest_key:
            details.manifest_uri = store.uri(record.manifest_key)
    error = None
    if record.state == JobState.FAILED:
        kind, code = failure_code(record.error_code)
        error = VideoError(code=code, message=record.error_message, type=kind)
    elif record.state == JobState.CANCELLED:
        error = VideoError(code="cancelled", message=f"video {record.job_id} was cancelled", type="invalid_request_error")
    return Video(
        id=record.job_id,
        created_at=int(record.created_at),
        completed_at=int(record.updated_at) if record.state.terminal else None,
        expires_at=expires_at,
        model=model_name(record),
        progress=100 if done else percent(record.progress.fraction),
        prompt=record.request.prompt,
        remixed_from_video_id=source_video_id(record, store.bucket),
        seconds=f"{round(spec.duration_s, 3):g}",
        size=f"{spec.width}x{spec.height}",
        status=STATUS[record.state],
        error=error,
        tessera=details,
    )
