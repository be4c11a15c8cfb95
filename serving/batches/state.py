"""The batch's durable state (written by its driver only) and the counts derived from it. Pure."""

from __future__ import annotations

import enum
import time

from pydantic import BaseModel, ConfigDict, Field

from tessera.serving.batches.spec import BatchItem, BatchSettings, InvalidLine


class ItemState(str, enum.Enum):
    PENDING = "PENDING"      # not submitted (or waiting for its next attempt)
    QUEUED = "QUEUED"        # its job is queued
    RUNNING = "RUNNING"      # its job runs
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"        # every attempt failed (or the request was refused)
    CANCELLED = "CANCELLED"  # the batch was cancelled before the item finished

    @property
    def terminal(self) -> bool:
        return self in (ItemState.SUCCEEDED, ItemState.FAILED, ItemState.CANCELLED)

    @property
    def in_flight(self) -> bool:
        return self in (ItemState.QUEUED, ItemState.RUNNING)


class BatchState(str, enum.Enum):
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"   # every item succeeded
    FAILED = "FAILED"         # it ended with some items failed
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self != BatchState.RUNNING


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Attempt(_Model):
    attempt: int
    job_id: str = ""
    state: str = ""
    error: str = ""


class ItemProgress(_Model):
    line: int
    id: str
    state: ItemState = ItemState.PENDING
    attempt: int = Field(1, description="The current attempt (its idempotency key ends in -aN).")
    job_id: str = ""
    errors: list[Attempt] = Field(default_factory=list, description="Failed attempts, oldest first, with their reasons.")
    error: str = ""
    fraction: float = 0.0
    submitted_at: float | None = None
    ended_at: float | None = None
    video_seconds: float = 0.0
    seed: int | None = None
    width: int = 0
    height: int = 0
    outputs: dict[str, str] = Field(default_factory=dict, description="kind (video, poster, manifest, image) -> object key")
    timings: dict[str, float] = Field(default_factory=dict)


class BatchSpec(_Model):
    """What was submitted: written once (create-only), never changed."""

    name: str
    tenant: str
    created_at: float
    file_sha256: str
    source: str = ""
    settings: BatchSettings
    items: list[BatchItem]
    invalid: list[InvalidLine] = Field(default_factory=list)
    output_prefix: str


class BatchProgress(_Model):
    state: BatchState = BatchState.RUNNING
    items: list[ItemProgress]
    started_at: float = Field(default_factory=time.time)
    ended_at: float | None = None
    retry_generation: int = 0
    cancelled: bool = False
    driver_starts: int = 0
    report_written: bool = False
    updated_at: float = Field(default_factory=time.time)


def initial_progress(spec: BatchSpec) -> BatchProgress:
    return BatchProgress(items=[ItemProgress(line=item.line, id=item.id) for item in spec.items])


class Counts(_Model):
    total: int = 0
    pending: int = 0
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    invalid: int = 0
    video_seconds: float = 0.0
    eta_s: float | None = None


def counts(spec: BatchSpec, progress: BatchProgress, now: float | None = None) -> Counts:
    now = time.time() if now is None else now
    c = Counts(total=len(progress.items), invalid=len(spec.invalid))
    for item in progress.items:
        setattr(c, item.state.value.lower(), getattr(c, item.state.value.lower()) + 1)
        if item.state == ItemState.SUCCEEDED:
            c.video_seconds += item.video_seconds
    finished = c.succeeded + c.failed
    remaining = c.pending + c.queued + c.running
    if progress.state.terminal:
        c.eta_s = 0.0
    elif finished and remaining:
        elapsed = max(0.0, now - progress.started_at)
        in_flight = sum(item.fraction for item in progress.items if item.state.in_flight)
        rate = (finished + in_flight) / elapsed if elapsed > 0 else 0.0
        c.eta_s = (remaining - in_flight) / rate if rate > 0 else None
    return c


def final_state(progress: BatchProgress) -> BatchState:
    if progress.cancelled:
        return BatchState.CANCELLED
    if any(item.state == ItemState.FAILED for item in progress.items):
        return BatchState.FAILED
    return BatchState.SUCCEEDED
