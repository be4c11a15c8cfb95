"""Durable job records in S3, so a restarted cluster still knows every job.

Layout in the bucket (tenant names cannot start with ``_``, so nothing collides):

* ``_tessera/jobs/{tenant}/{job_id}.json``   the job record (state, progress, outputs, error)
* ``_tessera/active/{tenant}/{job_id}``      present while the job is QUEUED or RUNNING, so a
  gateway that starts up finds unfinished work without reading every record
* ``_tessera/idempotency/{tenant}/{sha256(key)}.json``  idempotency key -> job id

Job ids sort newest first (the leading characters count down with time), so listing a
tenant's records in key order lists its jobs newest first.
"""

from __future__ import annotations

import enum
import hashlib
import json
import secrets
import time

from pydantic import BaseModel, ConfigDict, Field

from tessera.serving.errors import FailedPreconditionError, NotFoundError
from tessera.serving.jobs.spec import GenerationRequest, RenderSpec
from tessera.serving.storage import ObjectExistsError, ObjectNotFoundError, ObjectStore

PREFIX = "_tessera"
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_TIME_CHARS = 10  # 50 bits of milliseconds: good until the year 37 000
_RANDOM_CHARS = 6
JOB_ID_LENGTH = _TIME_CHARS + _RANDOM_CHARS


class JobState(str, enum.Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class Stage(str, enum.Enum):
    QUEUED = "QUEUED"
    EXPANDING_PROMPT = "EXPANDING_PROMPT"
    DENOISING = "DENOISING"
    DECODING = "DECODING"
    FINALIZING = "FINALIZING"
    DONE = "DONE"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Progress(_Record):
    stage: Stage = Stage.QUEUED
    step: int = 0
    total_steps: int = 0
    segments_done: int = 0
    total_segments: int = 0
    fraction: float = 0.0
    segment_key: str = ""
    """Object key of the latest finished segment preview ('' until the first one)."""


class Timings(_Record):
    queued_s: float = 0.0
    expand_s: float = 0.0
    denoise_s: float = 0.0
    decode_s: float = 0.0
    finalize_s: float = 0.0
    total_s: float = 0.0


class JobRecord(_Record):
    """Everything known about one job; the S3 copy is the source of truth."""

    job_id: str = Field(..., description="Newest-first sortable id.")
    tenant: str = Field(..., description="Owner of the job.")
    state: JobState = Field(JobState.QUEUED, description="Lifecycle state.")
    request: GenerationRequest = Field(..., description="The request as received.")
    spec: RenderSpec = Field(..., description="The request resolved (defaults, seed).")
    created_at: float = Field(..., description="Unix time the job was accepted.")
    updated_at: float = Field(..., description="Unix time of the last change.")
    started_at: float | None = Field(None, description="Unix time the current attempt started running.")
    attempts: int = Field(0, description="Times the job started running (a restart resumes a job from scratch).")
    progress: Progress = Field(default_factory=Progress, description="Where the job is.")
    model: str = Field("", description="family/name@version of the model that rendered it.")
    expanded_prompt: str = Field("", description="Caption the model saw.")
    video_key: str = Field("", description="Object key of the video, once SUCCEEDED.")
    poster_key: str = Field("", description="Object key of the poster image, once SUCCEEDED.")
    manifest_key: str = Field("", description="Object key of the manifest, once SUCCEEDED.")
    image_key: str = Field("", description="Object key of the image (image mode, instead of a video), once SUCCEEDED.")
    timings: Timings = Field(default_factory=Timings, description="Seconds per stage.")
    error_code: str = Field("", description="gRPC status name when FAILED.")
    error_message: str = Field("", description="What went wrong, for the caller, when FAILED.")
    cancel_requested: bool = Field(False, description="A cancel arrived while the job was running elsewhere.")


def new_job_id(now: float | None = None) -> str:
    """A job id whose lexical order is newest first."""
    millis = int((time.time() if now is None else now) * 1000)
    countdown = (1 << (5 * _TIME_CHARS)) - 1 - millis
    chars = []
    for _ in range(_TIME_CHARS):
        chars.append(_ALPHABET[countdown & 31])
        countdown >>= 5
    chars.reverse()
    chars.extend(secrets.choice(_ALPHABET) for _ in range(_RANDOM_CHARS))
    return "".join(chars)


def is_job_id(value: str) -> bool:
    return len(value) == JOB_ID_LENGTH and all(c in _ALPHABET for c in value)


def request_digest(request: GenerationRequest) -> str:
    """What makes two requests 'the same' for idempotency: every field but the key itself."""
    payload = request.model_dump(mode="json", exclude={"idempotency_key"})
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class JobStore:
    """Job records, the active set and idempotency keys, in an :class:`ObjectStore`."""

    def __init__(self, store: ObjectStore):
        self.store = store

    @staticmethod
    def record_key(tenant: str, job_id: str) -> str:
        return f"{PREFIX}/jobs/{tenant}/{job_id}.json"

    @staticmethod
    def _active_key(tenant: str, job_id: str) -> str:
        return f"{PREFIX}/active/{tenant}/{job_id}"

    @staticmethod
    def _idempotency_key(tenant: str, key: str) -> str:
        return f"{PREFIX}/idempotency/{tenant}/{hashlib.sha256(key.encode()).hexdigest()}.json"

    def create(self, record: JobRecord) -> str:
        """Persist a new job and return its id, or the id of the job its idempotency key
        already names (then nothing new is kept).

        Order matters for crashes: the record first, then the idempotency key (a create-only
        write, so two gateways racing on one key get one job), then the active marker. A crash
        in between leaves at worst a record that is never run, never a key naming nothing."""
        self.save(record)
        key = record.request.idempotency_key
        if key:
            try:
                self.store.put_json(
                    self._idempotency_key(record.tenant, key),
                    {"job_id": record.job_id, "request_digest": request_digest(record.request)},
                    if_absent=True,
                )
            except ObjectExistsError:
                self.store.delete(self.record_key(record.tenant, record.job_id))
                existing = self.find_idempotent(record.tenant, record.request)
                if existing is None:  # the key was deleted meanwhile; cannot happen in Tessera
                    raise FailedPreconditionError(f"idempotency_key {key!r} is being reused; retry") from None
                return existing
        self.store.put_bytes(self._active_key(record.tenant, record.job_id), b"", content_type="text/plain")
        return record.job_id

    def save(self, record: JobRecord) -> None:
        record.updated_at = time.time()
        self.store.put_bytes(
            self.record_key(record.tenant, record.job_id),
            record.model_dump_json().encode(),
            content_type="application/json",
        )
        if record.state.terminal:
            self.store.delete(self._active_key(record.tenant, record.job_id))

    def get(self, tenant: str, job_id: str) -> JobRecord:
        if not is_job_id(job_id):
            raise NotFoundError(f"no job {job_id!r}: job ids are {JOB_ID_LENGTH} characters of [0-9a-z]")
        try:
            data = self.store.get_bytes(self.record_key(tenant, job_id))
        except ObjectNotFoundError:
            raise NotFoundError(f"no job {job_id!r} for this tenant") from None
        return JobRecord.model_validate_json(data)

    def find_idempotent(self, tenant: str, request: GenerationRequest) -> str | None:
        """The job id an idempotency key is bound to, or None if the key is new.

        Raises FailedPreconditionError if the key was used for a different request."""
        if not request.idempotency_key:
            return None
        try:
            entry = self.store.get_json(self._idempotency_key(tenant, request.idempotency_key))
        except ObjectNotFoundError:
            return None
        if entry["request_digest"] != request_digest(request):
            raise FailedPreconditionError(
                f"idempotency_key {request.idempotency_key!r} was already used for a different request "
                f"(job {entry['job_id']}); use a new key for a new request"
            )
        return entry["job_id"]

    def list(self, tenant: str, page_size: int, page_token: str = "", state: JobState | None = None) -> tuple[list[JobRecord], str]:
        """One page of the tenant's jobs, newest first, and the token of the next page ('' at the end)."""
        prefix = f"{PREFIX}/jobs/{tenant}/"
        start_after = prefix + page_token + ".json" if page_token else None
        records: list[JobRecord] = []
        while len(records) < page_size:
            keys = self.store.list_keys(prefix, start_after=start_after, limit=page_size)
            if not keys:
                return records, ""
            for key in keys:
                start_after = key
                try:
                    record = JobRecord.model_validate_json(self.store.get_bytes(key))
                except ObjectNotFoundError:
                    continue  # deleted between list and get
                if state is None or record.state == state:
                    records.append(record)
                    if len(records) == page_size:
                        break
        last = start_after[len(prefix) : -len(".json")]
        more = self.store.list_keys(prefix, start_after=start_after, limit=1)
        return records, (last if more else "")

    def active(self) -> list[tuple[str, str]]:
        """(tenant, job_id) of every job that has not ended, oldest first."""
        prefix = f"{PREFIX}/active/"
        found = []
        start_after = None
        while True:
            keys = self.store.list_keys(prefix, start_after=start_after, limit=1000)
            if not keys:
                break
            for key in keys:
                tenant, job_id = key[len(prefix) :].split("/", 1)
                found.append((tenant, job_id))
            start_after = keys[-1]
        return sorted(found, key=lambda item: item[1], reverse=True)
