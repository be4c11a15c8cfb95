"""The engine core: what a JobRunner replica does with the jobs it owns.

Each replica holds a bounded set of jobs through leases on their records (``lease.py``):

* it *claims* jobs offered by a gateway right after submit, and, every ``scan_interval_s``,
  unowned jobs nobody claimed and jobs whose holder stopped renewing (a takeover);
* it *runs* at most ``max_running_jobs`` interactive jobs and ``max_running_batch_jobs`` batch
  jobs at once (each class has its own queue places and slots, so batch work never takes an
  interactive job's place), the rest wait in priority order; every held
  job's record is renewed by a keeper task (heartbeat and progress), and a cancel request a
  gateway writes into the record is noticed there;
* at every step group the running job may save a checkpoint of its latents; a takeover
  resumes from it;
* it *publishes* outputs only after a fenced commit (``outputs.py``), and ends the job with
  a fenced write;
* when Serve stops the replica (scale-down, redeploy) it *hands over*: each job is
  checkpointed at its next step group and its lease released, so another replica resumes it.

Which job to claim and run next is decided by the pure helpers at the bottom.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import heapq
import logging
import time

import safetensors.torch
import torch

from tessera.models.interface import VideoModel
from tessera.serving.config import TesseraConfig
from tessera.serving.errors import CancelledError, InternalError, TesseraError
from tessera.serving.jobs.failures import describe_failure
from tessera.serving.jobs.inputs import delete_inputs
from tessera.serving.jobs.modes import plan_job
from tessera.serving.jobs.lease import ExpiryWatch, LeasedJob, LeaseLost, acquire
from tessera.serving.jobs.outputs import OutputKeys, StaleWriterError, delete_prefix, publish
from tessera.serving.jobs.records import Checkpoint, JobRecord, JobState, JobStore, Progress, Stage
from tessera.serving.jobs.render import AttemptControl, JobRenderer
from tessera.serving.jobs.retry import retry_storage
from tessera.serving.jobs.sampling import SamplingSettings
from tessera.serving.logs import job_context, log_context
from tessera.serving.metrics import record_job_ended, record_job_load, record_takeover
from tessera.serving.stages import Stages
from tessera.serving.storage import ObjectNotFoundError, ObjectStore, StorageError

logger = logging.getLogger(__name__)


class JobCancelled(CancelledError):
    """Raised inside a render when its job is cancelled."""

    def __init__(self, job_id: str):
        super().__init__(f"job {job_id} was cancelled")


class HandOver(Exception):
    """Raised inside a render when this replica is stopping: the job goes back to the pool."""


@dataclasses.dataclass
class HeldJob:
    leased: LeasedJob
    task: asyncio.Task | None = None
    keeper: asyncio.Task | None = None
    running: bool = False
    dirty: bool = False
    """Progress changed since the last record write."""

    @property
    def record(self) -> JobRecord:
        return self.leased.record


class JobEngine:
    """Runs jobs through :class:`Stages`; one instance per JobRunner replica (or per process, in benches)."""

    def __init__(self, config: TesseraConfig, model: VideoModel, stages: Stages, store: ObjectStore, replica_id: str):
        self.config = config
        self.jobs = config.jobs
        self.model = model
        self.objects = store
        self.store = JobStore(store)
        self.replica_id = replica_id
        self.tiling = config.tiling.options(model.geometry)
        self.renderer = JobRenderer(
            model, stages, store,
            SamplingSettings(
                denoiser_replicas=config.deployments.denoiser.most_replicas,
                max_windows_per_call=config.tiling.max_windows_per_call,
                step_progress_s=config.jobs.step_progress_s,
            ),
            decode_ahead=config.tiling.decode_ahead, storage_budget_s=config.jobs.storage_retry_s,
        )
        self._held: dict[str, HeldJob] = {}
        self._waiting: dict[str, list[tuple[int, float, str]]] = {"interactive": [], "batch": []}
        """Per admission class, a heap of (-priority, created_at, job_id)."""
        self._wakeup = asyncio.Event()
        self._expiry = ExpiryWatch()
        self._leased_elsewhere: dict[str, float] = {}
        """Jobs another replica held when last read, and their TTL: scans HEAD these instead of reading them."""
        self._tasks: list[asyncio.Task] = []
        self.draining = False
        self._load_priorities: set[int] = set()
        """Priorities this replica reported waiting jobs for (tessera_queued_jobs), so each goes back to 0."""
        self.stats = {"claimed": 0, "taken_over": 0, "resumed": 0, "leases_lost": 0, "handed_over": 0, "checkpoints": 0}

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._dispatch()), asyncio.ensure_future(self._scan_forever())]

    async def stop(self) -> None:
        """Stop at once (tests, benches): jobs are left to expire and be taken over."""
        for task in self._tasks:
            task.cancel()
        for held in list(self._held.values()):
            for task in (held.task, held.keeper):
                if task:
                    task.cancel()

    async def drain(self, timeout_s: float) -> None:
        """Hand every held job over (checkpointed at its next step group, lease released), waiting
        at most ``timeout_s``; whatever is still held then is left to expire."""
        self.draining = True
        for task in self._tasks:
            task.cancel()
        for held in list(self._held.values()):
            if not held.running:
                await self._release(held)
        pending = [held.task for held in self._held.values() if held.task]
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)

    def room(self, priority: int) -> int:
        """Jobs of this priority's class this replica can still take (running slots + queue places)."""
        job_class = self.jobs.job_class(priority)
        running, queued = self.jobs.class_limits(job_class)
        held = sum(1 for h in self._held.values() if self.jobs.job_class(h.record.priority) == job_class)
        return max(0, running + queued - held)

    def load(self) -> dict:
        running = sum(1 for held in self._held.values() if held.running)
        return {"replica": self.replica_id, "held": len(self._held), "running": running, "waiting": len(self._held) - running,
                "room": {"interactive": self.room(self.jobs.interactive_min_priority),
                         "batch": self.room(self.jobs.interactive_min_priority - 1)}, **self.stats}

    # -- claiming ------------------------------------------------------------------------
    async def offer(self, tenant: str, job_id: str) -> bool:
        """A gateway's new job: claim it if there is room. True when the job is held by some
        replica now (this one, or another that was quicker); False when there was no room here."""
        if job_id in self._held:
            return True
        if self.draining:
            return False
        try:
            record, etag = await asyncio.to_thread(self.store.read, tenant, job_id)
        except (TesseraError, StorageError):
            return False
        if record.lease is not None or record.state.terminal:
            return True
        if self.room(record.priority) == 0:
            return False
        return await self._claim(record, etag) or (await self._held_elsewhere(tenant, job_id))

    async def _held_elsewhere(self, tenant: str, job_id: str) -> bool:
        try:
            record, _ = await asyncio.to_thread(self.store.read, tenant, job_id)
        except (TesseraError, StorageError):
            return False
        return record.lease is not None or record.state.terminal

    async def _claim(self, record: JobRecord, etag: str) -> bool:
        takeover = record.lease is not None
        leased = await asyncio.to_thread(acquire, self.store, record, etag, self.replica_id, self.jobs.lease_ttl_s)
        if leased is None:
            return False
        record, etag = leased
        self.stats["claimed"] += 1
        with log_context(tessera_job_id=record.job_id, tenant=record.tenant, request_id=record.request_id):
            if takeover:
                self.stats["taken_over"] += 1
                record_takeover()
                logger.info("took over job %s/%s (lease %d)", record.tenant, record.job_id, record.lease.token)
            else:
                logger.info("claimed job %s/%s (lease %d, priority %d)", record.tenant, record.job_id, record.lease.token,
                            record.priority)
        self._expiry.forget(record.job_id)
        held = HeldJob(LeasedJob(self.store, record, etag, self.jobs.storage_retry_s))
        self._held[record.job_id] = held
        held.keeper = asyncio.ensure_future(self._keep(held))
        heapq.heappush(self._waiting[self.jobs.job_class(record.priority)], (-record.priority, record.created_at, record.job_id))
        self._publish_load()
        self._wakeup.set()
        return True

    async def _scan_forever(self) -> None:
        while True:
            await asyncio.sleep(self.jobs.scan_interval_s)
            try:
                await self.scan()
            except StorageError as error:
                self._expiry.reset()
                self._leased_elsewhere.clear()
                logger.warning("job scan failed: %s", error)

    async def scan(self) -> int:
        """Claim unowned jobs and jobs whose lease expired, best first, while there is room.

        Costs one LIST of the active markers (per 1000 jobs), a HEAD per job another replica holds
        and a GET per job nobody holds (or whose record stopped changing)."""
        if self.draining:
            return 0
        candidates: list[tuple[JobRecord, str]] = []
        active = await asyncio.to_thread(self.store.active)
        for job_id in set(self._leased_elsewhere) - {job_id for _, job_id in active}:
            self._leased_elsewhere.pop(job_id, None)
            self._expiry.forget(job_id)
        for tenant, job_id in active:
            if job_id in self._held:
                continue
            ttl = self._leased_elsewhere.get(job_id)
            if ttl is not None:  # held elsewhere when last read: its etag (a HEAD) says whether it is renewed
                try:
                    info = await asyncio.to_thread(self.objects.head, JobStore.record_key(tenant, job_id))
                except ObjectNotFoundError:
                    continue
                if not self._expiry.expired(job_id, info.etag, ttl):
                    continue
            try:
                record, etag = await asyncio.to_thread(self.store.read, tenant, job_id)
            except TesseraError:  # the record is gone: a stale marker
                await asyncio.to_thread(self.store.unmark_active, tenant, job_id)
                continue
            if record.state.terminal:
                await asyncio.to_thread(self.store.unmark_active, tenant, job_id)
                continue
            if record.lease is not None:
                self._leased_elsewhere[job_id] = record.lease.ttl_s
            else:
                self._leased_elsewhere.pop(job_id, None)
            if claimable(record, etag, self._expiry, self.jobs.claim_grace_s):
                candidates.append((record, etag))
        claimed = 0
        for record, etag in sorted(candidates, key=lambda c: claim_order(c[0])):
            if self.room(record.priority) == 0:
                continue  # its class is full here; a job of the other class may still fit
            claimed += await self._claim(record, etag)
        return claimed

    # -- running -------------------------------------------------------------------------
    async def _dispatch(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            for job_class, waiting in self._waiting.items():
                slots, _ = self.jobs.class_limits(job_class)
                while waiting and self._running(job_class) < slots and not self.draining:
                    _, _, job_id = heapq.heappop(waiting)
                    held = self._held.get(job_id)
                    if held is None or held.running:
                        continue
                    held.running = True
                    held.task = asyncio.ensure_future(self._run(held))
            self._publish_load()

    def _publish_load(self) -> None:
        """tessera_queued_jobs (per priority) and tessera_running_jobs of this replica, now."""
        waiting = collections.Counter(held.record.priority for held in self._held.values() if not held.running)
        record_job_load(waiting, sum(1 for held in self._held.values() if held.running), self._load_priorities)

    def _running(self, job_class: str) -> int:
        return sum(1 for held in self._held.values() if held.running and self.jobs.job_class(held.record.priority) == job_class)

    async def _keep(self, held: HeldJob) -> None:
        """Renew the lease (heartbeat), flush progress, and notice cancel requests."""
        leased = held.leased
        job_context(leased.job_id, leased.tenant, leased.record.request_id)  # this task's log lines name the job
        while True:
            await asyncio.sleep(min(self.jobs.progress_flush_s, self.jobs.heartbeat_s))
            due = time.monotonic() - leased.last_write >= self.jobs.heartbeat_s
            if not (due or (held.dirty and time.monotonic() - leased.last_write >= self.jobs.progress_flush_s)):
                continue
            held.dirty = False
            try:
                await leased.write(essential=False)
            except LeaseLost:
                self.stats["leases_lost"] += 1
                if held.task:
                    held.task.cancel()
                else:
                    self._drop(held)
                return
            if leased.record.cancel_requested and not held.running:
                held.running = True  # cancel a waiting job right here
                held.task = asyncio.ensure_future(self._run(held))

    async def _run(self, held: HeldJob) -> None:
        leased = held.leased
        record = leased.record
        # This task's log lines name the job, and its stage calls carry the submit's request id.
        job_context(record.job_id, record.tenant, record.request_id)
        try:
            if record.commit is not None:  # the previous holder decided the outputs: finish publishing
                await self._publish_and_succeed(held)
                return
            if record.cancel_requested:
                raise JobCancelled(record.job_id)
            record.state = JobState.RUNNING
            record.started_at = time.time()
            record.attempts += 1
            await leased.write()
            logger.info("job %s started (attempt %d, %s, %d steps)", record.job_id, record.attempts, record.spec.mode.value,
                        record.spec.steps)
            job_plan = plan_job(record.spec, self.model.geometry, self.tiling)
            groups = len(job_plan.step_groups(len(job_plan.noise_levels(self.model, record.spec.steps)) - 1))
            resume = await self._load_checkpoint(record)
            record.resumed_from_groups = resume[0] if resume else 0
            control = AttemptControl(
                report=lambda progress: self._report(held, progress),
                check=lambda: self._check(held),
                after_group=lambda done, latents: self._after_group(held, done, groups, latents),
                resume=resume,
            )
            commit = await self.renderer.render(record, leased.token, job_plan, control)
            await self._check(held)
            record.commit = commit
            await leased.write()  # the fenced commit point: from here on the outputs are decided
            await self._publish_and_succeed(held)
        except JobCancelled:
            await self._end(held, JobState.CANCELLED)
        except HandOver:
            await self._release(held)
        except (LeaseLost, StaleWriterError):
            self.stats["leases_lost"] += 1
            held.leased.lost = True
            await self._abandon(held)
        except asyncio.CancelledError:
            if leased.lost:  # the keeper found the lease gone
                await asyncio.shield(self._abandon(held))
                return
            raise  # the replica is stopping at once: the job is left to expire and be taken over
        except Exception as error:
            failure = describe_failure(error)
            if isinstance(failure, InternalError):
                logger.exception("job %s failed", record.job_id)
            else:
                logger.warning("job %s failed: %s %s", record.job_id, failure.code_name, failure.message)
            record.error_code, record.error_message = failure.code_name, failure.message
            await self._end(held, JobState.FAILED)
        finally:
            self._wakeup.set()

    def _report(self, held: HeldJob, progress: Progress) -> None:
        held.record.progress = progress
        held.dirty = True

    async def _check(self, held: HeldJob) -> None:
        if held.leased.lost:
            raise LeaseLost(held.record.job_id)
        if held.record.cancel_requested:
            raise JobCancelled(held.record.job_id)

    async def _after_group(self, held: HeldJob, groups_done: int, groups: int, latents: torch.Tensor) -> None:
        if self.draining:
            await self._checkpoint(held, groups_done, latents)
            raise HandOver()
        every = self.jobs.checkpoint_every_groups
        if every and (groups_done % every == 0 or groups_done == groups):
            await self._checkpoint(held, groups_done, latents)

    # -- checkpoints ---------------------------------------------------------------------
    async def _checkpoint(self, held: HeldJob, groups_done: int, latents: torch.Tensor) -> None:
        """Best effort: a checkpoint that cannot be written costs a takeover some work, not the job."""
        leased = held.leased
        record = leased.record
        previous = record.checkpoint
        if previous is not None and previous.groups_done >= groups_done:
            return
        key = f"{JobStore.checkpoint_prefix(record.tenant, record.job_id)}{leased.token}-{groups_done:05d}.safetensors"
        data = await asyncio.to_thread(safetensors.torch.save, {"latents": latents.contiguous()})
        try:
            await asyncio.to_thread(self.objects.put_bytes, key, data, "application/octet-stream")
        except StorageError as error:
            logger.warning("job %s: checkpoint not saved: %s", record.job_id, error)
            return
        record.checkpoint = Checkpoint(key=key, groups_done=groups_done, token=leased.token)
        if not await leased.write(essential=False):
            record.checkpoint = previous
            return
        self.stats["checkpoints"] += 1
        if previous is not None:
            try:
                await asyncio.to_thread(self.objects.delete, previous.key)
            except StorageError:
                pass  # deleted with the prefix when the job ends

    async def _load_checkpoint(self, record: JobRecord) -> tuple[int, torch.Tensor] | None:
        if record.checkpoint is None:
            return None
        try:
            data = await retry_storage(self.objects.get_bytes, record.checkpoint.key, budget_s=self.jobs.storage_retry_s,
                                       what="reading the job's checkpoint")
        except ObjectNotFoundError:
            logger.warning("job %s: checkpoint %s is gone; starting over", record.job_id, record.checkpoint.key)
            return None
        latents = (await asyncio.to_thread(safetensors.torch.load, data))["latents"]
        self.stats["resumed"] += 1
        logger.info("job %s resumes after %d step groups", record.job_id, record.checkpoint.groups_done)
        return record.checkpoint.groups_done, latents

    # -- endings -------------------------------------------------------------------------
    async def _publish_and_succeed(self, held: HeldJob) -> None:
        record = held.record
        commit = record.commit
        await publish(self.objects, commit, self.jobs.end_retry_s)
        record.video_key, record.poster_key = commit.video_key, commit.poster_key
        record.manifest_key, record.image_key = commit.manifest_key, commit.image_key
        record.expanded_prompt, record.timings = commit.expanded_prompt, commit.timings
        tiles = record.progress.total_segments
        record.progress = Progress(stage=Stage.DONE, step=record.progress.total_steps, total_steps=record.progress.total_steps,
                                   segments_done=tiles, total_segments=tiles, fraction=1.0)
        await self._end(held, JobState.SUCCEEDED)

    async def _end(self, held: HeldJob, state: JobState) -> None:
        """Record the job's end (fenced, riding out storage outages), then clean up after it."""
        leased = held.leased
        record = leased.record
        record.state = state
        if state != JobState.SUCCEEDED:
            record.progress = record.progress.model_copy(update={"stage": Stage.DONE, "segment_key": ""})
        record.commit = None
        record.lease = None
        record.checkpoint = None
        try:
            leased.storage_budget_s = self.jobs.end_retry_s
            await leased.write()
        except LeaseLost:
            await self._abandon(held)
            return
        except TesseraError as error:
            logger.error("job %s: could not record its end (%s): %s", record.job_id, state.value, error.message)
            self._drop(held)
            return
        self._record_end(record)
        self._drop(held)
        await self._clean_up(record, final_too=state != JobState.SUCCEEDED)

    @staticmethod
    def _record_end(record: JobRecord) -> None:
        """The metrics and the log line of a job whose end this replica recorded (once per job)."""
        timings = record.timings
        stages = {"queued": timings.queued_s, "expand": timings.expand_s, "denoise": timings.denoise_s,
                  "decode": timings.decode_s, "finalize": timings.finalize_s, "total": timings.total_s}
        succeeded = record.state == JobState.SUCCEEDED
        record_job_ended(record.state.value.lower(), record.spec.mode.value, record.tenant,
                         video_seconds=record.spec.duration_s if succeeded else 0.0, stage_seconds=stages if succeeded else None)
        logger.info("job %s ended as %s", record.job_id, record.state.value)

    async def _clean_up(self, record: JobRecord, final_too: bool) -> None:
        """Staging, checkpoints and inputs of an ended job; its final prefix too unless it succeeded."""
        prefixes = [JobStore.staging_prefix(record.tenant, record.job_id), JobStore.checkpoint_prefix(record.tenant, record.job_id)]
        if final_too:  # what a caller could see goes first
            prefixes.insert(0, OutputKeys.final(record.tenant, record.job_id).root + "/")
        for prefix in prefixes:
            try:
                await retry_storage(delete_prefix, self.objects, prefix, budget_s=self.jobs.end_retry_s, what=f"cleaning up {prefix}")
            except TesseraError as error:
                logger.warning("job %s: %s", record.job_id, error.message)
        if record.spec.inputs:
            try:
                await retry_storage(delete_inputs, self.objects, record.tenant, record.job_id, budget_s=self.jobs.end_retry_s,
                                    what="deleting the job's inputs")
            except TesseraError as error:
                logger.warning("job %s: %s", record.job_id, error.message)

    async def _release(self, held: HeldJob) -> None:
        """Give the job back (replica stopping): queued again, with its checkpoint, for another replica."""
        leased = held.leased
        record = leased.record
        if held.keeper:
            held.keeper.cancel()
        record.state = JobState.QUEUED
        record.lease = None
        record.progress = record.progress.model_copy(update={"stage": Stage.QUEUED, "segment_key": ""})
        try:
            await leased.write(essential=False)
            self.stats["handed_over"] += 1
            logger.info("handed job %s over", record.job_id)
        except LeaseLost:
            pass
        self._drop(held)
        await self._delete_staging(record, leased.token)

    async def _abandon(self, held: HeldJob) -> None:
        """The lease is gone: write nothing of the job's, remove what this holder staged."""
        record = held.record
        logger.warning("job %s: stopped without writing (lease %d lost)", record.job_id, held.leased.token)
        self._drop(held)
        await self._delete_staging(record, held.leased.token)

    async def _delete_staging(self, record: JobRecord, token: int) -> None:
        try:
            await asyncio.to_thread(delete_prefix, self.objects, JobStore.staging_prefix(record.tenant, record.job_id, token))
        except StorageError as error:
            logger.warning("job %s: staging of lease %d not deleted: %s", record.job_id, token, error)

    def _drop(self, held: HeldJob) -> None:
        self._held.pop(held.record.job_id, None)
        if held.keeper and held.keeper is not asyncio.current_task():
            held.keeper.cancel()
        self._publish_load()
        self._wakeup.set()


# -- pure scheduling decisions ---------------------------------------------------------------
def claimable(record: JobRecord, etag: str, expiry: ExpiryWatch, claim_grace_s: float, now: float | None = None) -> bool:
    """Whether a scan may claim this unfinished job: nobody holds it and its gateway had its
    chance to offer it, or its holder has not renewed for a whole TTL (by ``expiry``'s clock)."""
    if record.state.terminal:
        return False
    if record.lease is None:
        return (time.time() if now is None else now) - record.updated_at >= claim_grace_s
    return expiry.expired(record.job_id, etag, record.lease.ttl_s)


def claim_order(record: JobRecord) -> tuple[int, float]:
    """Higher priority first, then older first."""
    return (-record.priority, record.created_at)
