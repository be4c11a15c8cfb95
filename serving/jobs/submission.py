"""The gateway's side of jobs: submit, get, watch, cancel and list, all through the records in S3.

Stateless: any gateway replica answers for any job, and a gateway that dies loses nothing. A
submit is validated (media inputs read and probed concurrently, bounded per replica), written
as a create-only record, then *offered* to a JobRunner replica, which claims it by its lease.
When no replica has room the record is withdrawn (a conditional delete, so a job a scan
claimed meanwhile stands) and the caller gets RESOURCE_EXHAUSTED with a retry hint: every
admitted job is held by a replica with room for it, so it completes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from tessera.models.interface import VideoModel
from tessera.serving.config import TesseraConfig
from tessera.serving.errors import FailedPreconditionError, NotFoundError, ResourceExhaustedError
from tessera.serving.jobs.inputs import InputCollector, delete_inputs, input_prefix
from tessera.serving.jobs.modes import plan_job
from tessera.serving.jobs.outputs import DECODE_SHARE, DENOISE_SHARE, EXPAND_SHARE, OutputKeys
from tessera.serving.jobs.quotas import QuotaExceededError, QuotaGuard, video_ms
from tessera.serving.jobs.records import PREFIX, JobRecord, JobState, JobStore, Progress, Stage, new_job_id
from tessera.serving.jobs.spec import GenerationRequest
from tessera.serving.jobs.validation import check_request, resolve_request
from tessera.serving.logs import JOB_FIELD, current_request_id
from tessera.serving.metrics import record_job_ended, record_job_submitted
from tessera.serving.storage import ConditionFailedError, ObjectStore, StorageError

logger = logging.getLogger(__name__)

QUOTA_ATTEMPTS = 4
"""Tries of a submit that racing submits of its tenant pushed over a quota (serving/jobs/quotas.py)."""

Offer = Callable[[str, str], Awaitable[bool]]
"""Offer a new job (tenant, job id) to a JobRunner replica; True when some replica holds it."""


class NoCapacityError(ResourceExhaustedError):
    """No JobRunner replica had room for a new job."""

    def __init__(self, message: str, retry_after_ms: int):
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class JobEvent:
    """What watchers receive: progress while the job runs, then the record once it ended."""

    def __init__(self, job_id: str, progress: Progress | None = None, record: JobRecord | None = None):
        self.job_id = job_id
        self.progress = progress
        self.record = record


def segment_progress(latest: Progress, index: int, keys: OutputKeys) -> Progress:
    """The progress as it stood when segment ``index`` was announced (it was seen only later)."""
    return latest.model_copy(update={
        "stage": Stage.DECODING, "step": latest.total_steps, "segments_done": index + 1, "segment_key": keys.segment(index),
        "fraction": EXPAND_SHARE + DENOISE_SHARE + DECODE_SHARE * (index + 1) / max(1, latest.total_segments),
    })


class JobFront:
    def __init__(self, config: TesseraConfig, model: VideoModel, store: ObjectStore, offer: Offer, offer_attempts: int):
        self.config = config
        self.model = model
        self.objects = store
        self.store = JobStore(store)
        self.inputs = InputCollector(store, config.limits)
        self.tiling = config.tiling.options(model.geometry)
        self._offer = offer
        self._offer_attempts = offer_attempts
        self._probes = asyncio.Semaphore(config.jobs.max_concurrent_probes)
        self.quotas = QuotaGuard(config.quotas, store)

    @property
    def model_name(self) -> str:
        card = self.model.card
        return f"{card.family}/{card.name}@{card.version}"

    async def submit(self, tenant: str, request: GenerationRequest) -> JobRecord:
        check_request(request, self.model.card, self.config.limits)  # bad requests go before any S3 request
        existing = await asyncio.to_thread(self.store.find_idempotent, tenant, request)
        if existing is not None:
            return await self.get(tenant, existing)
        quota_limited = self.quotas.quota(tenant).limited
        if quota_limited:  # a tenant at its job quota is refused before any work
            await asyncio.to_thread(self.quotas.precheck_jobs, tenant)
        # Media inputs are read and probed first, so validation knows what they hold.
        async with self._probes:
            collected = await asyncio.to_thread(self.inputs.collect, tenant, request)
        media = {name: item.info for name, item in collected.items()}
        spec = resolve_request(request, self.model.card, self.config.limits, media)
        plan_job(spec, self.model.geometry, self.tiling)  # plannable?
        now = time.time()
        record = JobRecord(
            job_id=new_job_id(now), tenant=tenant, request=request.without_data(), spec=spec, created_at=now,
            updated_at=now, model=self.model_name, priority=spec.priority, request_id=current_request_id(),
        )
        if quota_limited:
            await asyncio.to_thread(self.quotas.precheck_seconds, tenant, video_ms(record))
        if collected:  # kept beside the record, before the record exists, so any replica finds them
            await asyncio.to_thread(self.inputs.save, tenant, record.job_id, collected)
        try:
            job_id, etag = await self._create(record)
        except (Exception, asyncio.CancelledError):  # cancellation included, then re-raised: a record that was never written leaves no inputs behind
            if collected:
                await asyncio.shield(asyncio.to_thread(delete_inputs, self.objects, tenant, record.job_id))
            raise
        if job_id != record.job_id:  # the idempotency key already named another job
            if collected:
                await asyncio.to_thread(delete_inputs, self.objects, tenant, record.job_id)
            return await self.get(tenant, job_id)
        if not await self._admit(record, etag):
            job_class = self.config.jobs.job_class(record.priority)
            raise NoCapacityError(
                f"every job runner is full of {job_class} jobs (priority {record.priority}); retry later",
                retry_after_ms=self.config.jobs.retry_pushback_ms,
            )
        record_job_submitted(spec.mode.value, tenant)
        logger.info("job %s submitted (%s, %g s, priority %d)", record.job_id, spec.mode.value, spec.duration_s, spec.priority,
                    extra={JOB_FIELD: record.job_id})
        return record

    async def _create(self, record: JobRecord) -> tuple[str, str]:
        """``store.create``, and for a tenant with quotas the race guard of serving/jobs/quotas.py:
        count again with the job written, withdraw it if over. Submits racing at the limit can all
        see each other and back off, so a refused one tries again after a random pause, as long as
        a fresh count (without it) still leaves room; then the refusal stands."""
        limited = self.quotas.quota(record.tenant).limited
        attempts = QUOTA_ATTEMPTS if limited else 1
        for attempt in range(attempts):
            job_id, etag = await asyncio.to_thread(self.store.create, record)
            if job_id != record.job_id or not limited:
                return job_id, etag
            try:
                await self._enforce_quota(record, etag)
                return job_id, etag
            except QuotaExceededError:
                if attempt == attempts - 1:
                    raise
            await asyncio.sleep(random.uniform(0.02, 0.1) * 2**attempt)
            await asyncio.to_thread(self.quotas.precheck_jobs, record.tenant)  # the others got in: refused for good
            await asyncio.to_thread(self.quotas.precheck_seconds, record.tenant, video_ms(record))
        raise AssertionError("unreachable")

    async def _enforce_quota(self, record: JobRecord, etag: str) -> None:
        """Count the tenant's use again with the new job written; over a quota, withdraw the job
        (record, markers) and raise QuotaExceededError. A job claimed meanwhile stands."""
        try:
            await asyncio.to_thread(self.quotas.record, record)
            await asyncio.to_thread(self.quotas.recheck, record)
        except QuotaExceededError:
            if not await asyncio.to_thread(self.store.withdraw, record, etag):
                logger.warning("job %s was claimed before its quota recheck; it stands", record.job_id)
                return
            await asyncio.to_thread(self.quotas.release, record)
            raise

    async def _admit(self, record: JobRecord, etag: str) -> bool:
        for _ in range(self._offer_attempts):
            try:
                if await self._offer(record.tenant, record.job_id):
                    return True
            except Exception as error:  # an engine replica being replaced: try another, then the scans
                logger.warning("offering job %s failed: %s", record.job_id, type(error).__name__)
                return True  # the record is durable and active: a scan claims it
        withdrawn = await asyncio.to_thread(self.store.withdraw, record, etag)
        if withdrawn:
            await asyncio.to_thread(self.quotas.release, record)
        if withdrawn and record.spec.inputs:
            await asyncio.to_thread(delete_inputs, self.objects, record.tenant, record.job_id)
        return not withdrawn

    async def get(self, tenant: str, job_id: str) -> JobRecord:
        return await asyncio.to_thread(self.store.get, tenant, job_id)

    async def list(self, tenant: str, page_size: int, page_token: str, state: JobState | None):
        return await asyncio.to_thread(self.store.list, tenant, page_size, page_token, state)

    async def page(self, tenant: str, limit: int, after: str = "", oldest_first: bool = False) -> tuple[list[JobRecord], bool]:
        """Up to ``limit`` jobs that come after job ``after`` ('' from the start) in the order asked
        for, and whether more follow. Newest first is one listing from the cursor on; oldest first
        lists the tenant's record keys to the end (S3 lists only forwards), then reads one page."""
        if not oldest_first:
            records, token = await self.list(tenant, limit, after, None)
            return records, bool(token)
        return await asyncio.to_thread(self._page_oldest_first, tenant, limit, after)

    def _page_oldest_first(self, tenant: str, limit: int, after: str) -> tuple[list[JobRecord], bool]:
        prefix = f"{PREFIX}/jobs/{tenant}/"
        ids = [key[len(prefix) : -len(".json")] for key in self.objects.iter_keys(prefix) if key.endswith(".json")]
        if after:  # ids sort newest first: what follows `after` oldest-first is newer, i.e. sorts before it
            ids = [job_id for job_id in ids if job_id < after]
        ids.reverse()
        records: list[JobRecord] = []
        for index, job_id in enumerate(ids):
            try:
                records.append(self.store.get(tenant, job_id))
            except NotFoundError:
                continue  # deleted between list and get
            if len(records) == limit:
                return records, index + 1 < len(ids)
        return records, False

    async def delete(self, tenant: str, job_id: str) -> JobRecord:
        """Remove a job for good: a job that has not ended is cancelled first (and must have stopped
        within ``cancel_wait_s``, else FAILED_PRECONDITION: retry), then every object under its
        ``{tenant}/{job_id}/`` prefix, its leftovers under ``_tessera/``, its idempotency key, and
        last its record (so a delete cut short can be repeated). Returns the record as it was."""
        record = await self.get(tenant, job_id)
        if not record.state.terminal:
            try:
                record = await self.cancel(tenant, job_id)
            except FailedPreconditionError:  # it ended meanwhile
                record = await self.get(tenant, job_id)
            if not record.state.terminal:
                raise FailedPreconditionError(f"job {job_id} is still stopping after its cancel; retry the delete shortly")
        await asyncio.to_thread(self._delete_objects, record)
        return record

    def _delete_objects(self, record: JobRecord) -> None:
        tenant, job_id = record.tenant, record.job_id
        prefixes = (
            OutputKeys.final(tenant, job_id).root + "/", input_prefix(tenant, job_id),
            JobStore.checkpoint_prefix(tenant, job_id), JobStore.staging_prefix(tenant, job_id),
        )
        for prefix in prefixes:
            for key in list(self.objects.iter_keys(prefix)):
                self.objects.delete(key)
        if record.request.idempotency_key:
            self.objects.delete(JobStore._idempotency_key(tenant, record.request.idempotency_key))
        self.store.unmark_active(tenant, job_id)
        self.objects.delete(JobStore.record_key(tenant, job_id))

    async def watch(self, tenant: str, job_id: str) -> AsyncIterator[JobEvent]:
        """Progress events of a job from now on (read from its record), ending with its final record.

        The record is read every ``watch_poll_s``, so steps and stages shorter than that may pass
        unseen; segment previews never do: each one finished since the last read gets its event."""
        record = await self.get(tenant, job_id)
        last: Progress | None = None
        announced = record.progress.segments_done
        while not record.state.terminal:
            progress = record.progress
            keys = OutputKeys.final(tenant, job_id)
            # The latest segment is announced by the progress itself when it names it.
            named = progress.segments_done > 0 and progress.segment_key == keys.segment(progress.segments_done - 1)
            for index in range(announced, progress.segments_done - 1 if named else progress.segments_done):
                yield JobEvent(job_id, progress=segment_progress(progress, index, keys))
            announced = max(announced, progress.segments_done)
            if progress != last:
                last = progress
                yield JobEvent(job_id, progress=progress)
            await asyncio.sleep(self.config.jobs.watch_poll_s)
            try:
                record = await self.get(tenant, job_id)
            except StorageError as error:  # a storage blip: keep the stream open, the job goes on
                logger.warning("watch of job %s: record not readable: %s", job_id, error)
        if record.state == JobState.SUCCEEDED:  # previews finished since the last read, before the end
            for index in range(announced, record.progress.total_segments):
                yield JobEvent(job_id, progress=segment_progress(record.progress, index, OutputKeys.final(tenant, job_id)))
        yield JobEvent(job_id, record=record)

    async def cancel(self, tenant: str, job_id: str) -> JobRecord:
        """Ask the job to stop: a waiting job nobody holds ends here; a held one is flagged in its
        record, and its holder stops at its next step group (a holder that died is taken over
        and the new one stops). Waits up to ``cancel_wait_s`` for the end, then answers."""
        while True:
            record, etag = await asyncio.to_thread(self.store.read, tenant, job_id)
            if record.state == JobState.CANCELLED:
                return record
            if record.state.terminal:
                raise FailedPreconditionError(f"job {job_id} already ended as {record.state.value}; nothing to cancel")
            if record.lease is None:
                record.state = JobState.CANCELLED
                record.cancel_requested = True
                record.progress = record.progress.model_copy(update={"stage": Stage.DONE})
            elif record.cancel_requested:
                break
            else:
                record.cancel_requested = True
            try:
                await asyncio.to_thread(self.store.write, record, etag)
            except ConditionFailedError:
                continue  # the record moved on (a heartbeat, a claim): look again
            if record.state == JobState.CANCELLED:  # ended here: nobody held it, so no JobRunner records its end
                record_job_ended("cancelled", record.spec.mode.value, tenant)
                logger.info("job %s ended as CANCELLED (nobody held it)", job_id, extra={JOB_FIELD: job_id})
                if record.spec.inputs:
                    await asyncio.to_thread(delete_inputs, self.objects, tenant, job_id)
                return record
            break
        deadline = time.monotonic() + self.config.jobs.cancel_wait_s
        while not record.state.terminal and time.monotonic() < deadline:
            await asyncio.sleep(self.config.jobs.watch_poll_s)
            record = await self.get(tenant, job_id)
        return record
