"""The batch driver: runs one batch on the cluster, as a detached Ray actor named after it.

It submits every item as a normal job through the same :class:`JobFront` and JobRunner path as
``SubmitJob``, with a deterministic idempotency key per (tenant, batch, item, attempt)
(:func:`~tessera.serving.batches.spec.idempotency_key`), so whatever the driver did before it
died, submitting an item again returns the job that attempt already has: no item is rendered
twice, none is lost. At most ``concurrency`` of the batch's jobs are queued or running at once,
at the batch's priority (the JobRunners' queues order by priority, so interactive jobs go first).

Its state is in S3 (:mod:`.store`), written after every round: a driver restarted after a crash
(Ray restarts the actor) or a new one started by a resubmit reads it and carries on. The actor
is detached: it survives the submitting client and the gateway replica that started it, and it
ends itself once the batch's report is written.
"""

from __future__ import annotations

import asyncio
import logging
import os
import posixpath
import time

from tessera.serving.batches import report as reports
from tessera.serving.batches.spec import idempotency_key
from tessera.serving.batches.state import (
    Attempt, BatchProgress, BatchSpec, BatchState, ItemProgress, ItemState, final_state, initial_progress,
)
from tessera.serving.batches.store import BatchStore
from tessera.serving.config import TesseraConfig
from tessera.serving.errors import FailedPreconditionError, TesseraError
from tessera.serving.jobs.failures import describe_failure
from tessera.serving.jobs.records import JobRecord, JobState
from tessera.serving.jobs.submission import JobFront, NoCapacityError
from tessera.serving.logs import bind as bind_log_fields, configure_process_logging
from tessera.serving.storage import ObjectStore, StorageError

logger = logging.getLogger("tessera.batches")

NAMESPACE = "tessera-batches"
POLL_S = 0.5
NOT_RETRIED = {"INVALID_ARGUMENT", "NOT_FOUND", "PERMISSION_DENIED", "FAILED_PRECONDITION", "UNAUTHENTICATED"}
"""Failures another attempt cannot fix."""


def actor_name(tenant: str, name: str) -> str:
    return f"batch/{tenant}/{name}"


class BatchRun:
    """One batch's rounds: read control objects, follow jobs, submit, write state, repeat."""

    def __init__(self, front: JobFront, objects: ObjectStore, tenant: str, name: str, poll_s: float = POLL_S):
        self.front = front
        self.objects = objects
        self.batches = BatchStore(objects)
        self.tenant = tenant
        self.name = name
        self.poll_s = poll_s

    async def _io(self, fn, *args):
        return await asyncio.to_thread(fn, *args)

    async def run(self) -> BatchProgress:
        spec = await self._io(self.batches.spec, self.tenant, self.name)
        progress = await self._io(self.batches.progress, self.tenant, self.name) or initial_progress(spec)
        progress.driver_starts += 1
        requests = {item.id: item.request for item in spec.items}
        while True:
            await self._controls(spec, progress)
            if progress.state.terminal and progress.report_written:
                return progress
            for item in progress.items:
                if item.job_id and not item.state.terminal:
                    await self._follow(spec, progress, item)
            if progress.cancelled:
                await self._cancel_all(spec, progress)
            else:
                await self._submit_more(spec, progress, requests)
            if all(item.state.terminal for item in progress.items):
                progress.state = final_state(progress)
                progress.ended_at = progress.ended_at or time.time()
                await self._write_report(spec, progress)
                progress.report_written = True
                await self._save(progress)
                return progress
            await self._save(progress)
            await asyncio.sleep(self.poll_s)

    async def _save(self, progress: BatchProgress) -> None:
        progress.updated_at = time.time()
        try:
            await self._io(self.batches.write_progress, self.tenant, self.name, progress)
        except StorageError as error:  # the next round writes it again; the keys make resubmits safe
            logger.warning("batch %s: progress not saved: %s", self.name, error)

    async def _controls(self, spec: BatchSpec, progress: BatchProgress) -> bool:
        """Apply a retry or cancel asked for since the last round; True if the batch runs again."""
        changed = False
        try:
            generation = await self._io(self.batches.retry_generation, self.tenant, self.name)
            cancel = await self._io(self.batches.cancel_requested, self.tenant, self.name)
        except StorageError as error:
            logger.warning("batch %s: control objects not readable: %s", self.name, error)
            return False
        if cancel and not progress.cancelled:
            progress.cancelled = True
            changed = True
        if generation > progress.retry_generation:
            progress.retry_generation = generation
            if not progress.cancelled:
                for item in progress.items:
                    if item.state == ItemState.FAILED:
                        item.attempt += 1  # a new attempt: a new idempotency key, so a new job
                        item.state, item.job_id, item.error, item.ended_at = ItemState.PENDING, "", "", None
                        changed = True
        if changed:
            progress.ended_at = None
            progress.report_written = False
            progress.state = BatchState.RUNNING
        return changed

    async def _submit_more(self, spec: BatchSpec, progress: BatchProgress, requests: dict) -> None:
        in_flight = sum(1 for item in progress.items if item.state.in_flight)
        for item in progress.items:
            if in_flight >= spec.settings.concurrency:
                return
            if item.state != ItemState.PENDING:
                continue
            request = requests[item.id].model_copy(
                update={"idempotency_key": idempotency_key(self.tenant, self.name, item.id, item.attempt)}
            )
            try:
                record = await self.front.submit(self.tenant, request)
            except NoCapacityError:
                return  # every job runner is full: try again next round
            except TesseraError as error:
                if error.code_name in NOT_RETRIED:
                    self._fail(item, error.code_name, error.message, spec, retry=False)
                    continue
                logger.warning("batch %s item %s: submit failed: %s", self.name, item.id, error)
                return
            except StorageError as error:
                logger.warning("batch %s item %s: submit failed: %s", self.name, item.id, error)
                return
            item.job_id = record.job_id
            item.submitted_at = item.submitted_at or time.time()
            await self._apply(spec, progress, item, record)
            if item.state.in_flight:
                in_flight += 1

    async def _follow(self, spec: BatchSpec, progress: BatchProgress, item: ItemProgress) -> None:
        try:
            record = await self.front.get(self.tenant, item.job_id)
        except (TesseraError, StorageError) as error:
            logger.warning("batch %s item %s: job %s not readable: %s", self.name, item.id, item.job_id, error)
            return
        await self._apply(spec, progress, item, record)

    async def _apply(self, spec: BatchSpec, progress: BatchProgress, item: ItemProgress, record: JobRecord) -> None:
        if record.state == JobState.QUEUED:
            item.state = ItemState.QUEUED
        elif record.state == JobState.RUNNING:
            item.state, item.fraction = ItemState.RUNNING, record.progress.fraction
        elif record.state == JobState.SUCCEEDED:
            try:
                item.outputs = await self._io(self._publish, spec, item, record)
            except StorageError as error:
                logger.warning("batch %s item %s: outputs not copied yet: %s", self.name, item.id, error)
                return
            item.state, item.fraction, item.error = ItemState.SUCCEEDED, 1.0, ""
            item.seed, item.width, item.height = record.spec.seed, record.spec.width, record.spec.height
            item.video_seconds = 0.0 if record.image_key else record.spec.num_frames / record.spec.fps
            item.timings = record.timings.model_dump()
            item.ended_at = record.updated_at
        elif record.state == JobState.CANCELLED:
            item.errors.append(Attempt(attempt=item.attempt, job_id=record.job_id, state="CANCELLED", error="the job was cancelled"))
            item.state, item.ended_at = ItemState.CANCELLED, record.updated_at
            item.error = "cancelled with the batch" if progress.cancelled else f"job {record.job_id} was cancelled"
        elif record.state == JobState.FAILED:
            self._fail(item, record.error_code, record.error_message, spec, retry=not progress.cancelled, job_id=record.job_id)

    def _fail(self, item: ItemProgress, code: str, message: str, spec: BatchSpec, retry: bool, job_id: str = "") -> None:
        reason = f"{code}: {message}" if code else message
        item.errors.append(Attempt(attempt=item.attempt, job_id=job_id, state="FAILED", error=reason))
        if retry and code not in NOT_RETRIED and item.attempt < spec.settings.max_attempts:
            item.attempt += 1
            item.state, item.job_id = ItemState.PENDING, ""
            return
        item.state, item.error, item.ended_at = ItemState.FAILED, reason, time.time()

    def _publish(self, spec: BatchSpec, item: ItemProgress, record: JobRecord) -> dict[str, str]:
        """The job's outputs copied (inside the store) under ``{output prefix}{item id}/``."""
        outputs = {}
        for kind, key in (("video", record.video_key), ("image", record.image_key), ("poster", record.poster_key),
                          ("manifest", record.manifest_key)):
            if key:
                target = f"{spec.output_prefix}{item.id}/{posixpath.basename(key)}"
                self.objects.copy(key, target)
                outputs[kind] = target
        return outputs

    async def _cancel_all(self, spec: BatchSpec, progress: BatchProgress) -> None:
        for item in progress.items:
            if item.state == ItemState.PENDING:
                item.state, item.error, item.ended_at = ItemState.CANCELLED, "cancelled with the batch before it started", time.time()
            elif item.state.in_flight and item.job_id:
                try:
                    record = await self.front.cancel(self.tenant, item.job_id)
                except FailedPreconditionError:  # it ended meanwhile
                    record = await self.front.get(self.tenant, item.job_id)
                except (TesseraError, StorageError) as error:
                    logger.warning("batch %s: cancel of job %s failed: %s", self.name, item.job_id, error)
                    continue
                await self._apply(spec, progress, item, record)

    async def _write_report(self, spec: BatchSpec, progress: BatchProgress) -> None:
        await self._io(write_report, self.objects, spec, progress)


def write_report(objects: ObjectStore, spec: BatchSpec, progress: BatchProgress, now: float | None = None) -> dict[str, str]:
    """Write the four report files under the batch's output prefix; returns name -> key."""
    now = time.time() if now is None else now
    rows = reports.report_rows(spec, progress, objects.uri)
    data = reports.summary(spec, progress, now)
    tiles = []
    for row in rows:
        if row["state"] == "INVALID":
            continue
        poster = None
        key = _key_of(objects, row.get("poster_uri") or row.get("image_uri") or "")
        if key:
            try:
                poster = objects.get_bytes(key)
            except StorageError:
                poster = None
        tiles.append((reports.tile_label(row), poster))

    def sign(uri: str) -> str:
        return objects.presign_get(_key_of(objects, uri))

    keys = {name: spec.output_prefix + name for name in reports.REPORT_FILES}
    objects.put_bytes(keys["report.jsonl"], reports.report_jsonl(rows), "application/x-ndjson")
    objects.put_json(keys["summary.json"], data)
    objects.put_bytes(keys["contact_sheet.png"], reports.contact_sheet(tiles), "image/png")
    objects.put_bytes(keys["report.html"], reports.report_html(spec, data, rows, sign), "text/html; charset=utf-8")
    return keys


def _key_of(objects: ObjectStore, uri: str) -> str:
    if not uri:
        return ""
    prefix = f"s3://{objects.bucket}/"
    return uri[len(prefix):] if uri.startswith(prefix) else ""


def make_driver_class():
    """The Ray actor class (built on first use, so the pure modules never import Ray)."""
    import ray

    @ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
    class BatchDriver:
        def __init__(self, config: TesseraConfig, tenant: str, name: str):
            logging.basicConfig(level=logging.INFO)
            configure_process_logging(config.logs)
            self.config, self.tenant, self.name = config, tenant, name
            self._task: asyncio.Task | None = None
            self._result: BatchProgress | None = None
            # Started again by Ray after its process died (max_restarts): carry on without waiting
            # for a caller. The call queues behind __init__, so it runs once the actor is up.
            try:
                ray.get_runtime_context().current_actor.ensure.remote()
            except Exception:  # noqa: BLE001 - the gateway's next ensure() starts it instead
                logger.warning("batch %s: the driver could not start itself", name)

        def _front(self) -> tuple[JobFront, ObjectStore]:
            from ray import serve

            from tessera.models.registry import load_model

            objects = ObjectStore(self.config.storage)
            model = load_model(self.config.model, parts=())
            runner = serve.get_deployment_handle("JobRunner", app_name=self.config.app_name)
            attempts = 2 * self.config.deployments.job_runner.most_replicas + 1
            front = JobFront(self.config, model, objects, offer=lambda tenant, job_id: runner.offer.remote(tenant, job_id),
                             offer_attempts=attempts)
            return front, objects

        async def ensure(self) -> int:
            """Start the batch's rounds unless they run; returns this process's pid."""
            if self._task is None or self._task.done():
                front, objects = self._front()
                self._task = asyncio.get_running_loop().create_task(self._main(BatchRun(front, objects, self.tenant, self.name)))
            return os.getpid()

        async def _main(self, run: BatchRun) -> None:
            # The batch's jobs and lines carry one request id, the batch's own (the driver outlives the call that made it).
            bind_log_fields(tenant=self.tenant, request_id=actor_name(self.tenant, self.name))
            while True:
                try:
                    self._result = await run.run()
                    break
                except Exception:  # noqa: BLE001 - keep driving: the state is in S3, the keys make rounds repeatable
                    logger.exception("batch %s: round failed; starting again", self.name)
                    await asyncio.sleep(2.0)
            logger.info("batch %s ended as %s; the driver exits", self.name, self._result.state.value)
            await asyncio.sleep(0.5)
            try:
                ray.kill(ray.get_runtime_context().current_actor, no_restart=True)
            except Exception:  # noqa: BLE001
                pass

        async def pid(self) -> int:
            return os.getpid()

    return BatchDriver


_DRIVER_CLASS = None


def driver_class():
    global _DRIVER_CLASS
    if _DRIVER_CLASS is None:
        _DRIVER_CLASS = make_driver_class()
    return _DRIVER_CLASS


async def ensure_driver(config: TesseraConfig, tenant: str, name: str) -> int:
    """Start the batch's driver unless one runs (one named actor per batch); returns its pid."""
    import ray

    last: Exception | None = None
    for _ in range(5):
        handle = driver_class().options(
            name=actor_name(tenant, name), namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        ).remote(config, tenant, name)
        try:
            return await handle.ensure.remote()
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as error:  # one ending right now
            last = error
            await asyncio.sleep(0.5)
    raise describe_failure(last) if last else RuntimeError("no batch driver")
