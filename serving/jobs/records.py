"""Durable job records in S3, so a restarted cluster still knows every job.

Layout in the bucket (tenant names cannot start with ``_``, so nothing collides):

* ``_tessera/jobs/{tenant}/{job_id}.json``   the job record (state, progress, outputs, error)
* ``_tessera/active/{tenant}/{job_id}``      present while the job is QUEUED or RUNNING, so a
  gateway that starts up finds unfinished work without reading every record
* ``_tessera/idempotency/{tenant}/{sha256(key)}.json``  idempotency key -> job id
* ``_tessera/checkpoints/{tenant}/{job_id}/``  a running job's latest latents (see lease.py)
* ``_tessera/staging/{tenant}/{job_id}/{lease token}/``  outputs of one lease holder before commit

Every write to a record is conditional (``If-None-Match: *`` to create, ``If-Match: <etag>`` to
update), so two writers never silently overwrite each other: see :mod:`lease` for how engine
replicas own running jobs through a lease in the record.

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

from tessera.serving.errors import FailedPreconditionError, NotFoundError, describe_value
from tessera.serving.jobs.spec import GenerationRequest, RenderSpec
from tessera.serving.storage import ConditionFailedError, ObjectExistsError, ObjectNotFoundError, ObjectStore

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


class Lease(_Record):
    """Which engine replica runs a job, and since when (see ``serving/jobs/lease.py``)."""

    owner: str = Field(..., description="Id of the engine replica holding the lease.")
    token: int = Field(..., ge=1, description="Fencing token: grows by one with every acquisition of this job's lease.")
    acquired_at: float = Field(..., description="Unix time the holder acquired the lease.")
    ttl_s: float = Field(..., gt=0, description="The holder renews at least this often; a record unchanged for longer "
                         "(as observed by another replica's own clock) is up for takeover.")


class Checkpoint(_Record):
    """The latest latents of a running job, so a takeover resumes instead of starting over."""

    key: str = Field(..., description="Object key of the saved latents (safetensors).")
    groups_done: int = Field(..., ge=0, description="Step groups completed in these latents.")
    token: int = Field(..., ge=1, description="Lease token of the holder that wrote it.")


class Commit(_Record):
    """Outputs a holder finished under its staging prefix, to be copied to the job's final keys.

    Written (fenced) before the first copy: from then on the outputs are decided, and whoever
    holds the lease next only repeats the copies, in order, manifest last."""

    token: int = Field(..., ge=1, description="Lease token of the holder whose staging objects are committed.")
    copies: list[tuple[str, str]] = Field(..., description="(staging key, final key) pairs, in copy order.")
    video_key: str = ""
    poster_key: str = ""
    manifest_key: str = ""
    image_key: str = ""
    expanded_prompt: str = ""
    timings: Timings = Field(default_factory=Timings)


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
    attempts: int = Field(0, description="Times a replica started running the job.")
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
    cancel_requested: bool = Field(False, description="A caller asked to cancel; the lease holder stops at its next step group.")
    priority: int = Field(0, description="Scheduling priority (higher first); copied from the request.")
    lease: Lease | None = Field(None, description="The engine replica running the job; None while nobody holds it.")
    last_lease_token: int = Field(0, ge=0, description="The last fencing token issued for this job (0: never leased).")
    checkpoint: Checkpoint | None = Field(None, description="Latest saved latents of the running job.")
    commit: Commit | None = Field(None, description="Outputs decided and being copied to their final keys.")
    takeovers: int = Field(0, description="Times another replica took the job over from a holder that stopped renewing.")
    resumed_from_groups: int = Field(0, description="Step groups the latest attempt did not redo (from a checkpoint).")
    request_id: str = Field("", description="Serve's request id of the call that submitted the job: every log line of "
                            "the job carries it (serving/logs.py).")


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

    @staticmethod
    def checkpoint_prefix(tenant: str, job_id: str) -> str:
        return f"{PREFIX}/checkpoints/{tenant}/{job_id}/"

    @staticmethod
    def staging_prefix(tenant: str, job_id: str, token: int | None = None) -> str:
        root = f"{PREFIX}/staging/{tenant}/{job_id}/"
        return root if token is None else f"{root}{token}/"

    def create(self, record: JobRecord) -> tuple[str, str]:
        """Persist a new job; returns ``(job_id, etag)``, or the id of the job its idempotency key
        already names and ``""`` (then nothing new is kept).

        No lock is needed between gateways: the record is a create-only write, and so is the
        idempotency key (two gateways racing on one key get one job). Order matters for crashes:
        the record first, then the key, then the active marker. A crash in between leaves at
        worst a record nobody runs, never a key naming nothing."""
        record.updated_at = time.time()
        etag = self.store.put_bytes(
            self.record_key(record.tenant, record.job_id), record.model_dump_json().encode(),
            content_type="application/json", if_absent=True,
        )
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
                if existing is None:  # the key was deleted meanwhile (a refused submit let go of it)
                    raise FailedPreconditionError("this idempotency_key is being reused right now; retry") from None
                return existing, ""
        self.mark_active(record.tenant, record.job_id)
        return record.job_id, etag

    def mark_active(self, tenant: str, job_id: str) -> None:
        self.store.put_bytes(self._active_key(tenant, job_id), b"", content_type="text/plain")

    def withdraw(self, record: JobRecord, etag: str) -> bool:
        """Take back a job nobody has claimed yet (a submit refused for lack of capacity): its
        record, active marker and idempotency key. False if a replica claimed it meanwhile
        (the record's etag moved on), and then the job stands."""
        try:
            self.store.delete(self.record_key(record.tenant, record.job_id), if_match=etag)
        except (ConditionFailedError, ObjectNotFoundError):
            return False
        self.store.delete(self._active_key(record.tenant, record.job_id))
        if record.request.idempotency_key:
            self.store.delete(self._idempotency_key(record.tenant, record.request.idempotency_key))
        return True

    def read(self, tenant: str, job_id: str) -> tuple[JobRecord, str]:
        """The record and its etag (for a conditional update)."""
        if not is_job_id(job_id):
            raise NotFoundError(f"no job {describe_value(job_id)}: job ids are {JOB_ID_LENGTH} characters of [0-9a-z]")
        try:
            data, etag = self.store.get_bytes_with_etag(self.record_key(tenant, job_id))
        except ObjectNotFoundError:
            raise NotFoundError(f"no job {describe_value(job_id)} for this tenant") from None
        return JobRecord.model_validate_json(data), etag

    def write(self, record: JobRecord, etag: str) -> str:
        """Replace the record if it is still at ``etag``; returns the new etag.

        Raises ConditionFailedError when someone wrote it since (the caller re-reads and decides),
        ObjectNotFoundError when it is gone. A terminal record also drops the active marker."""
        record.updated_at = time.time()
        new_etag = self.store.put_bytes(
            self.record_key(record.tenant, record.job_id), record.model_dump_json().encode(),
            content_type="application/json", if_match=etag,
        )
        if record.state.terminal:
            self.store.delete(self._active_key(record.tenant, record.job_id))
        return new_etag

    def unmark_active(self, tenant: str, job_id: str) -> None:
        self.store.delete(self._active_key(tenant, job_id))

    def get(self, tenant: str, job_id: str) -> JobRecord:
        return self.read(tenant, job_id)[0]

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
                f"idempotency_key {describe_value(request.idempotency_key)} was already used for a different request "
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
