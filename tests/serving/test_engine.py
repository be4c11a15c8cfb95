"""The engine core in one process (no Ray): leases, takeover from a checkpoint, fencing, cancel,
hand-over and admission, with the real engines (shipped tiny weights) and the real S3 server.

Replicas are simulated by several JobEngine instances on one store; a "dead" replica is one
whose tasks were cancelled without a word, a paused one keeps its LeasedJob and writes later."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest

from tessera.models.config import NativeModelConfig
from tessera.models.registry import load_model
from tessera.serving.config import ExpansionConfig, TesseraConfig
from tessera.serving.decoder import DecoderEngine
from tessera.serving.denoiser import DenoiserEngine
from tessera.serving.jobs.engine import JobEngine, claimable
from tessera.serving.jobs.lease import ExpiryWatch, LeasedJob, LeaseLost, acquire
from tessera.serving.jobs.outputs import StaleWriterError, put_fenced
from tessera.serving.jobs.records import JobRecord, JobState, JobStore, new_job_id
from tessera.serving.jobs.spec import GenerationRequest
from tessera.serving.jobs.submission import JobFront, NoCapacityError
from tessera.serving.prompt_expander import PromptExpanderEngine
from tessera.serving.stages import LocalStages
from tessera.serving.video import VideoEncodingConfig
from tests.conftest import storage_config_for

JOBS = {"lease_ttl_s": 1.0, "heartbeat_s": 0.25, "scan_interval_s": 0.2, "claim_grace_s": 0.2, "progress_flush_s": 0.1,
        "watch_poll_s": 0.05, "checkpoint_every_groups": 1, "storage_retry_s": 5.0, "cancel_wait_s": 10.0}


@pytest.fixture(scope="module")
def stages():
    model = NativeModelConfig(torch_threads=1)
    return LocalStages(PromptExpanderEngine(model, ExpansionConfig(), 1), DenoiserEngine(model, 1),
                       DecoderEngine(model, VideoEncodingConfig(), 1))


@pytest.fixture
def config(s3_server) -> TesseraConfig:
    return TesseraConfig(storage=storage_config_for(s3_server), jobs=JOBS, model=NativeModelConfig(torch_threads=1))


def engine(config, stages, store, name: str, **jobs) -> JobEngine:
    if jobs:
        config = config.model_copy(update={"jobs": config.jobs.model_copy(update=jobs)})
    return JobEngine(config, load_model(config.model, parts=()), stages, store, replica_id=name)


def front(config, store, engines: list[JobEngine]) -> JobFront:
    async def offer(tenant: str, job_id: str) -> bool:
        for candidate in engines:
            if await candidate.offer(tenant, job_id):
                return True
        return False

    return JobFront(config, load_model(config.model, parts=()), store, offer=offer, offer_attempts=1)


async def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await predicate() if asyncio.iscoroutinefunction(predicate) else predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def request(**fields) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "a red circle moving right", "duration_s": 2, "steps": 12, "seed": 5, **fields})


def tenant() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


async def finish(front: JobFront, who: str, job_id: str, timeout_s: float = 120) -> JobRecord:
    async def ended():
        record = await front.get(who, job_id)
        return record if record.state.terminal else None

    return await wait_for(ended, timeout_s, f"job {job_id} to end")


def test_a_job_runs_to_one_whole_video(config, stages, object_store):
    async def run():
        one = engine(config, stages, object_store, "one")
        await one.start()
        jobs = front(config, object_store, [one])
        who = tenant()
        record = await jobs.submit(who, request())
        done = await finish(jobs, who, record.job_id)
        await wait_for(lambda: not list(object_store.iter_keys(f"_tessera/staging/{who}/"))
                       and not list(object_store.iter_keys(f"_tessera/checkpoints/{who}/")), 10, "the clean-up after the end")
        await one.stop()
        return who, done

    who, done = asyncio.run(run())
    assert done.state == JobState.SUCCEEDED, done.error_message
    keys = list(object_store.iter_keys(f"{who}/{done.job_id}/"))
    assert {f"{who}/{done.job_id}/{name}" for name in ("video.mp4", "poster.png", "manifest.json")} <= set(keys)
    assert any("/segments/" in key for key in keys)
    for prefix in (JobStore.staging_prefix(who, done.job_id), JobStore.checkpoint_prefix(who, done.job_id)):
        assert list(object_store.iter_keys(prefix)) == []
    assert done.lease is None and done.checkpoint is None and done.commit is None
    assert not object_store.exists(f"_tessera/active/{who}/{done.job_id}")


def test_a_dead_replicas_job_is_taken_over_from_its_checkpoint(config, stages, object_store):
    async def run():
        first = engine(config, stages, object_store, "first")
        second = engine(config, stages, object_store, "second")
        await first.start()
        jobs = front(config, object_store, [first])
        who = tenant()
        record = await jobs.submit(who, request(duration_s=6, steps=100))
        checkpointed = await wait_for(
            lambda: (r := JobStore(object_store).get(who, record.job_id)).checkpoint and r.checkpoint.groups_done >= 3 and r,
            60, "a checkpoint")
        await first.stop()  # dies without a word
        await second.start()
        done = await finish(jobs, who, record.job_id)
        await wait_for(lambda: not list(object_store.iter_keys(f"_tessera/staging/{who}/")), 10, "the clean-up after the end")
        await second.stop()
        return who, checkpointed, done, second.stats

    who, checkpointed, done, stats = asyncio.run(run())
    assert done.state == JobState.SUCCEEDED, done.error_message
    assert stats["taken_over"] == 1 and stats["resumed"] == 1
    assert done.takeovers == 1 and done.resumed_from_groups >= checkpointed.checkpoint.groups_done
    manifest = json.loads(object_store.get_bytes(done.manifest_key))
    assert manifest["lease_token"] == 2 and manifest["resumed_from_step_groups"] == done.resumed_from_groups
    assert list(object_store.iter_keys(JobStore.staging_prefix(who, done.job_id))) == []


def test_a_holder_that_lost_its_lease_can_write_nothing(config, object_store):
    store = JobStore(object_store)
    who = tenant()
    model = load_model(config.model, parts=())
    from tessera.serving.jobs.validation import resolve_request

    spec = resolve_request(request(), model.card, config.limits, {})
    now = time.time()
    record = JobRecord(job_id=new_job_id(now), tenant=who, request=request(), spec=spec, created_at=now, updated_at=now)
    job_id, etag = store.create(record)
    first, first_etag = acquire(store, record, etag, "first", 1.0)
    assert acquire(store, record, etag, "rival", 1.0) is None, "one etag, one winner"
    current, current_etag = store.read(who, job_id)
    second, second_etag = acquire(store, current, current_etag, "second", 1.0)
    assert (first.lease.token, second.lease.token) == (1, 2)

    stale = LeasedJob(store, first, first_etag, storage_budget_s=1.0)
    stale.record.progress.step = 99
    with pytest.raises(LeaseLost):
        asyncio.run(stale.write())
    assert store.get(who, job_id).lease.owner == "second" and store.get(who, job_id).progress.step == 0

    # A gateway's cancel request is merged by the holder, not mistaken for a takeover.
    holder = LeasedJob(store, second, second_etag, storage_budget_s=1.0)
    flagged, flagged_etag = store.read(who, job_id)
    flagged.cancel_requested = True
    store.write(flagged, flagged_etag)
    holder.record.progress.step = 3
    asyncio.run(holder.write())
    assert holder.record.cancel_requested and store.get(who, job_id).progress.step == 3

    # Previews: a stale holder cannot overwrite the newer holder's, and learns it is stale.
    key = f"{who}/{job_id}/segments/0000.mp4"
    put_fenced(object_store, key, b"old", "video/mp4", token=1)
    put_fenced(object_store, key, b"new", "video/mp4", token=2)
    with pytest.raises(StaleWriterError):
        put_fenced(object_store, key, b"stale", "video/mp4", token=1)
    assert object_store.get_bytes(key) == b"new"

    ended, ended_etag = store.read(who, job_id)  # leave no unfinished job for the other tests' engines
    ended.state, ended.lease = JobState.CANCELLED, None
    store.write(ended, ended_etag)


def test_expiry_is_judged_by_the_observers_own_clock():
    watch = ExpiryWatch()
    assert not watch.expired("job", "etag1", ttl_s=5, now=100.0)
    assert not watch.expired("job", "etag1", ttl_s=5, now=104.9)
    assert watch.expired("job", "etag1", ttl_s=5, now=105.0)
    assert not watch.expired("job", "etag2", ttl_s=5, now=106.0), "a renewal restarts the clock"
    watch.reset()
    assert not watch.expired("job", "etag2", ttl_s=5, now=200.0), "after a failed read nothing is known"


def test_claimable_leaves_new_jobs_to_their_gateway_for_a_moment(config, object_store):
    model = load_model(config.model, parts=())
    from tessera.serving.jobs.validation import resolve_request

    spec = resolve_request(request(), model.card, config.limits, {})
    record = JobRecord(job_id="a" * 16, tenant="x", request=request(), spec=spec, created_at=100.0, updated_at=100.0)
    assert not claimable(record, "e", ExpiryWatch(), claim_grace_s=2, now=101.0)
    assert claimable(record, "e", ExpiryWatch(), claim_grace_s=2, now=102.5)
    record.state = JobState.SUCCEEDED
    assert not claimable(record, "e", ExpiryWatch(), claim_grace_s=2, now=1e9)


def test_cancel_stops_a_running_job_and_leaves_nothing(config, stages, object_store):
    async def run():
        one = engine(config, stages, object_store, "one")
        await one.start()
        jobs = front(config, object_store, [one])
        who = tenant()
        record = await jobs.submit(who, request(duration_s=6, steps=40))
        await wait_for(lambda: JobStore(object_store).get(who, record.job_id).progress.step >= 2, 60, "denoising")
        cancelled = await jobs.cancel(who, record.job_id)
        await wait_for(lambda: not list(object_store.iter_keys(f"_tessera/staging/{who}/"))
                       and not list(object_store.iter_keys(f"_tessera/checkpoints/{who}/")), 10, "the clean-up after the end")
        await one.stop()
        return who, cancelled, one

    who, cancelled, one = asyncio.run(run())
    assert cancelled.state == JobState.CANCELLED
    assert list(object_store.iter_keys(f"{who}/")) == []
    assert list(object_store.iter_keys(f"_tessera/staging/{who}/")) == []
    assert list(object_store.iter_keys(f"_tessera/checkpoints/{who}/")) == []
    assert one.load()["held"] == 0


def test_a_stopping_replica_hands_its_jobs_over(config, stages, object_store):
    async def run():
        first = engine(config, stages, object_store, "first")
        second = engine(config, stages, object_store, "second")
        await first.start()
        jobs = front(config, object_store, [first])
        who = tenant()
        record = await jobs.submit(who, request(duration_s=6, steps=100))
        await wait_for(lambda: JobStore(object_store).get(who, record.job_id).progress.step >= 3, 60, "denoising")
        await first.drain(timeout_s=30)
        released = JobStore(object_store).get(who, record.job_id)
        await second.start()
        done = await finish(jobs, who, record.job_id)
        await second.stop()
        return released, done, first.stats, second.stats

    released, done, first_stats, second_stats = asyncio.run(run())
    assert released.lease is None and released.state == JobState.QUEUED and released.checkpoint is not None
    assert first_stats["handed_over"] == 1 and second_stats["taken_over"] == 0, "released, not taken over"
    assert done.state == JobState.SUCCEEDED and done.resumed_from_groups == released.checkpoint.groups_done > 0


def test_a_full_cluster_refuses_new_work_at_once(config, stages, object_store):
    async def run():
        one = engine(config, stages, object_store, "one", max_running_jobs=1, max_queued_jobs=1)
        await one.start()
        jobs = front(config, object_store, [one])
        who = tenant()
        admitted = [await jobs.submit(who, request(steps=20, seed=i)) for i in range(2)]
        started = time.monotonic()
        with pytest.raises(NoCapacityError) as refused:
            await jobs.submit(who, request(steps=20, seed=9, idempotency_key="k1"))
        refused_after = time.monotonic() - started
        ends = [await finish(jobs, who, r.job_id) for r in admitted]
        listed, _ = await jobs.list(who, 10, "", None)
        again = await jobs.submit(who, request(steps=2, seed=9, idempotency_key="k1"))
        await finish(jobs, who, again.job_id)
        await one.stop()
        return refused.value, refused_after, ends, listed

    refused, refused_after, ends, listed = asyncio.run(run())
    assert refused.code_name == "RESOURCE_EXHAUSTED" and refused.retry_after_ms > 0 and refused_after < 2
    assert [e.state for e in ends] == [JobState.SUCCEEDED] * 2, "every admitted job completes"
    assert len(listed) == 2, "the refused job left no record behind"


def test_a_full_batch_backlog_never_turns_an_interactive_job_away(config, stages, object_store):
    """Batch work has its own queue places and running slots: with them full, an interactive
    job is still admitted, starts at once, and finishes while the batch backlog waits."""
    async def run():
        one = engine(config, stages, object_store, "one", max_running_jobs=1, max_queued_jobs=1,
                     max_running_batch_jobs=1, max_queued_batch_jobs=2)
        await one.start()
        jobs = front(config, object_store, [one])
        who = tenant()
        backlog = [await jobs.submit(who, request(steps=12, seed=i, priority=-1)) for i in range(3)]
        with pytest.raises(NoCapacityError) as refused:
            await jobs.submit(who, request(steps=12, seed=7, priority=-1))
        interactive = await jobs.submit(who, request(steps=2, seed=8, priority=0))
        done = await finish(jobs, who, interactive.job_id)
        states = [(await jobs.get(who, r.job_id)).state for r in backlog]
        ends = [await finish(jobs, who, r.job_id, timeout_s=240) for r in backlog]
        await one.stop()
        return refused.value, done, states, ends

    refused, done, states_then, ends = asyncio.run(run())
    assert "batch jobs" in refused.message
    assert done.state == JobState.SUCCEEDED
    assert states_then.count(JobState.SUCCEEDED) <= 1, "the interactive job did not wait for the batch backlog"
    assert [e.state for e in ends] == [JobState.SUCCEEDED] * 3, "batch work still completes"
    assert ends[0].priority == -1, "a job's priority is in its record"
