"""The gateway's job engine: accept, queue, run, watch, cancel and list jobs.

Records live in S3 (:class:`JobStore`); this class keeps the jobs that this gateway replica
owns (queued or running here) in memory, feeds their progress to watchers, and writes their
records back on every state change and at most every ``progress_flush_s`` in between.

On start it re-queues every job that had not ended when the cluster went down (a job is
rendered again from scratch: same seed, same result).

With several gateway replicas each job is owned by the replica that accepted it; the others
answer GetJob/WatchJob from S3 and pass cancels through a marker object the owner checks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import logging
import time
from collections.abc import AsyncIterator

from tessera.models.interface import VideoModel
from tessera.serving.config import TesseraConfig
from tessera.serving.errors import (
    FailedPreconditionError,
    InternalError,
    ResourceExhaustedError,
    TesseraError,
    UnavailableError,
)
from tessera.serving.jobs.inputs import InputCollector, delete_inputs
from tessera.serving.jobs.layout import plan_job
from tessera.serving.jobs.records import JobRecord, JobState, JobStore, Progress, Stage, new_job_id
from tessera.serving.jobs.runner import JobCancelled, Renderer
from tessera.serving.jobs.spec import GenerationRequest
from tessera.serving.jobs.validation import resolve_request
from tessera.serving.stages import Stages
from tessera.serving.storage import ObjectNotFoundError, ObjectStore, StorageError

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class JobEvent:
    """What watchers receive: progress while the job runs, then the record once it ended."""

    job_id: str
    progress: Progress | None = None
    record: JobRecord | None = None


@dataclasses.dataclass
class _OwnedJob:
    record: JobRecord
    watchers: set[asyncio.Queue] = dataclasses.field(default_factory=set)
    cancel: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    last_flush: float = 0.0


def describe_failure(error: BaseException) -> TesseraError:
    """Turn any exception from a render into a caller-facing error (no tracebacks)."""
    if isinstance(error, TesseraError):
        return error
    if isinstance(error, StorageError):
        return UnavailableError(f"object storage failed: {error}")
    try:
        import ray.exceptions
        from ray.serve.exceptions import BackPressureError

        if isinstance(error, BackPressureError):
            return ResourceExhaustedError(f"a model stage is saturated: {error}")
        if isinstance(error, (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)):
            return UnavailableError(f"a model replica died while rendering: {type(error).__name__}")
        if isinstance(error, ray.exceptions.RayTaskError):
            cause = error.as_instanceof_cause()
            if isinstance(cause, TesseraError):
                return cause
            first_line = str(error.cause).strip().splitlines()[0] if str(error.cause).strip() else ""
            return InternalError(f"a model stage failed: {type(error.cause).__name__}: {first_line}"[:500])
    except ImportError:  # the manager also runs outside Ray (benchmarks)
        pass
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return InternalError(f"render failed: {type(error).__name__}: {first_line}"[:500])


class JobManager:
    def __init__(self, config: TesseraConfig, model: VideoModel, stages: Stages, store: ObjectStore):
        self.config = config
        self.model = model
        self.store = JobStore(store)
        self.objects = store
        self.renderer = Renderer(
            model, stages, store, decode_ahead=config.tiling.decode_ahead,
            denoiser_replicas=config.deployments.denoiser.most_replicas,
            max_windows_per_call=config.tiling.max_windows_per_call,
            step_progress_s=config.jobs.step_progress_s,
        )
        self.tiling = config.tiling.options(model.geometry)
        self.inputs = InputCollector(store, config.limits)
        self._owned: dict[str, _OwnedJob] = {}
        self._queue: list[tuple[int, float, str]] = []  # (-priority, created_at, job_id)
        self._running = 0
        self._wakeup = asyncio.Event()
        self._submit_lock = asyncio.Lock()
        self._dispatcher: asyncio.Task | None = None

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Re-queue unfinished jobs from S3, then start dispatching."""
        for tenant, job_id in await asyncio.to_thread(self.store.active):
            try:
                record = await asyncio.to_thread(self.store.get, tenant, job_id)
            except TesseraError:
                logger.warning("active marker for %s/%s has no record; ignoring", tenant, job_id)
                continue
            if record.state.terminal:
                await asyncio.to_thread(self.store.save, record)  # clears the stale marker
                continue
            record.state = JobState.QUEUED
            record.progress = Progress(stage=Stage.QUEUED)
            await asyncio.to_thread(self.store.save, record)
            self._own(record)
            logger.info("re-queued job %s/%s after restart (attempt %d so far)", tenant, job_id, record.attempts)
        self._dispatcher = asyncio.ensure_future(self._dispatch())

    async def stop(self) -> None:
        if self._dispatcher:
            self._dispatcher.cancel()
        for owned in self._owned.values():
            if owned.task:
                owned.task.cancel()

    # -- API -----------------------------------------------------------------------------
    async def submit(self, tenant: str, request: GenerationRequest) -> JobRecord:
        async with self._submit_lock:  # one at a time, so one idempotency key gives one job
            existing = await asyncio.to_thread(self.store.find_idempotent, tenant, request)
            if existing is not None:
                return await self.get(tenant, existing)
            # Media inputs are read and probed first, so validation knows what they hold.
            collected = await asyncio.to_thread(self.inputs.collect, tenant, request)
            media = {name: item.info for name, item in collected.items()}
            spec = resolve_request(request, self.model.card, self.config.limits, media)
            plan_job(spec, self.model.geometry, self.tiling)  # plannable?
            if len(self._queue) >= self.config.jobs.max_queued_jobs:
                raise ResourceExhaustedError(
                    f"the queue is full ({self.config.jobs.max_queued_jobs} jobs waiting); retry later"
                )
            now = time.time()
            record = JobRecord(
                job_id=new_job_id(now), tenant=tenant, request=request.without_data(), spec=spec, created_at=now, updated_at=now,
                model=self.model_name,
            )
            if collected:  # kept beside the record, before the record exists, so a re-run finds them
                await asyncio.to_thread(self.inputs.save, tenant, record.job_id, collected)
            try:
                job_id = await asyncio.to_thread(self.store.create, record)
            except BaseException:
                if collected:
                    await asyncio.to_thread(delete_inputs, self.objects, tenant, record.job_id)
                raise
            if job_id != record.job_id:  # another gateway bound the idempotency key first
                if collected:
                    await asyncio.to_thread(delete_inputs, self.objects, tenant, record.job_id)
                return await self.get(tenant, job_id)
            self._own(record)
            return record.model_copy(deep=True)

    async def get(self, tenant: str, job_id: str) -> JobRecord:
        owned = self._owned.get(job_id)
        if owned and owned.record.tenant == tenant:
            return owned.record.model_copy(deep=True)
        return await asyncio.to_thread(self.store.get, tenant, job_id)

    async def watch(self, tenant: str, job_id: str) -> AsyncIterator[JobEvent]:
        """Progress events of a job from now on, ending with its final record."""
        owned = self._owned.get(job_id)
        if owned and owned.record.tenant == tenant:
            queue: asyncio.Queue[JobEvent] = asyncio.Queue()
            owned.watchers.add(queue)
            try:
                yield JobEvent(job_id, progress=owned.record.progress.model_copy())
                while True:
                    event = await queue.get()
                    yield event
                    if event.record is not None:
                        return
            finally:
                owned.watchers.discard(queue)
        record = await asyncio.to_thread(self.store.get, tenant, job_id)
        last = None
        while not record.state.terminal:
            if record.progress != last:
                last = record.progress
                yield JobEvent(job_id, progress=record.progress)
            await asyncio.sleep(self.config.jobs.watch_poll_s)
            record = await asyncio.to_thread(self.store.get, tenant, job_id)
        yield JobEvent(job_id, record=record)

    async def cancel(self, tenant: str, job_id: str) -> JobRecord:
        owned = self._owned.get(job_id)
        if owned and owned.record.tenant == tenant:
            record = owned.record
            if record.state == JobState.QUEUED:
                self._queue = [item for item in self._queue if item[2] != job_id]
                heapq.heapify(self._queue)
                await self._finish(owned, JobState.CANCELLED)
            else:
                owned.cancel.set()
                await self._finished(job_id)
            return await self.get(tenant, job_id)
        record = await asyncio.to_thread(self.store.get, tenant, job_id)
        if record.state == JobState.CANCELLED:
            return record
        if record.state.terminal:
            raise FailedPreconditionError(f"job {job_id} already ended as {record.state.value}; nothing to cancel")
        await asyncio.to_thread(self.objects.put_bytes, self._cancel_marker(tenant, job_id), b"", "text/plain")
        while not record.state.terminal:  # the owner notices the marker at its next progress flush
            await asyncio.sleep(self.config.jobs.watch_poll_s)
            record = await asyncio.to_thread(self.store.get, tenant, job_id)
        return record

    async def list(self, tenant: str, page_size: int, page_token: str, state: JobState | None):
        return await asyncio.to_thread(self.store.list, tenant, page_size, page_token, state)

    @property
    def model_name(self) -> str:
        card = self.model.card
        return f"{card.family}/{card.name}@{card.version}"

    @property
    def queued(self) -> int:
        return len(self._queue)

    # -- internals -----------------------------------------------------------------------
    @staticmethod
    def _cancel_marker(tenant: str, job_id: str) -> str:
        return f"_tessera/cancel/{tenant}/{job_id}"

    def _own(self, record: JobRecord) -> None:
        self._owned[record.job_id] = _OwnedJob(record)
        heapq.heappush(self._queue, (-record.spec.priority, record.created_at, record.job_id))
        self._wakeup.set()

    async def _finished(self, job_id: str) -> None:
        owned = self._owned.get(job_id)
        if owned and owned.task:
            await asyncio.shield(owned.task)

    async def _dispatch(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue and self._running < self.config.jobs.max_running_jobs:
                _, _, job_id = heapq.heappop(self._queue)
                owned = self._owned[job_id]
                self._running += 1
                owned.task = asyncio.ensure_future(self._run(owned))

    def _publish(self, owned: _OwnedJob, event: JobEvent) -> None:
        for queue in owned.watchers:
            queue.put_nowait(event)

    async def _run(self, owned: _OwnedJob) -> None:
        record = owned.record
        try:
            record.state = JobState.RUNNING
            record.started_at = time.time()
            record.attempts += 1
            await self._save_progress(record)
            spec = record.spec
            plan = plan_job(spec, self.model.geometry, self.tiling)

            def report(progress: Progress) -> None:
                record.progress = progress
                self._publish(owned, JobEvent(record.job_id, progress=progress.model_copy()))

            async def check_cancelled() -> None:
                now = time.monotonic()
                if now - owned.last_flush >= self.config.jobs.progress_flush_s:
                    owned.last_flush = now
                    if await self._save_progress(record) and await self._cancel_requested(record):
                        owned.cancel.set()
                if owned.cancel.is_set():
                    raise JobCancelled(record.job_id)

            result = await self.renderer.render(record, plan, report, check_cancelled)
            record.expanded_prompt = result.caption
            record.video_key, record.poster_key, record.manifest_key = result.video_key, result.poster_key, result.manifest_key
            record.image_key = result.image_key
            record.timings = result.timings
            record.progress = Progress(
                stage=Stage.DONE, step=spec.steps, total_steps=spec.steps, segments_done=len(plan.render.decode_tiles),
                total_segments=len(plan.render.decode_tiles), fraction=1.0,
            )
            await self._finish(owned, JobState.SUCCEEDED)
        except JobCancelled:
            await self._finish(owned, JobState.CANCELLED)
        except asyncio.CancelledError:  # the gateway is shutting down: leave the job to be re-queued
            raise
        except BaseException as error:
            failure = describe_failure(error)
            if isinstance(failure, InternalError):
                logger.exception("job %s failed", record.job_id)
            else:
                logger.warning("job %s failed: %s %s", record.job_id, failure.code_name, failure.message)
            record.error_code, record.error_message = failure.code_name, failure.message
            await self._finish(owned, JobState.FAILED)
        finally:
            self._running -= 1
            self._wakeup.set()

    async def _save_progress(self, record: JobRecord) -> bool:
        """Write a running job's record; False if storage failed.

        Best effort: a storage blip while the models work must not fail the job (the next flush
        writes it again, and a restarted gateway re-queues a job whose record says QUEUED or
        RUNNING). The outputs themselves still need S3 and fail the job if it stays away."""
        try:
            await asyncio.to_thread(self.store.save, record)
            return True
        except StorageError as error:
            logger.warning("job %s: progress not recorded, will retry: %s", record.job_id, error)
            return False

    async def _cancel_requested(self, record: JobRecord) -> bool:
        """Whether another gateway replica left a cancel marker for this job (False if storage failed)."""
        try:
            return await asyncio.to_thread(self.objects.exists, self._cancel_marker(record.tenant, record.job_id))
        except StorageError as error:
            logger.warning("job %s: could not look for a cancel marker: %s", record.job_id, error)
            return False

    async def _finish(self, owned: _OwnedJob, state: JobState) -> None:
        record = owned.record
        record.state = state
        if state != JobState.SUCCEEDED:
            record.progress = record.progress.model_copy(update={"stage": Stage.DONE})
        for attempt in range(3):
            try:
                await asyncio.to_thread(self.store.save, record)
                break
            except StorageError:
                if attempt == 2:
                    logger.exception("could not record the end of job %s", record.job_id)
                await asyncio.sleep(1.0)
        try:
            await asyncio.to_thread(self.objects.delete, self._cancel_marker(record.tenant, record.job_id))
        except (StorageError, ObjectNotFoundError):
            pass
        if record.spec.inputs:
            try:
                await asyncio.to_thread(delete_inputs, self.objects, record.tenant, record.job_id)
            except StorageError:
                logger.warning("could not delete the inputs of job %s", record.job_id)
        del self._owned[record.job_id]
        self._publish(owned, JobEvent(record.job_id, record=record.model_copy(deep=True)))
