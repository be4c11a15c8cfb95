"""A batch driver's rounds in one process (no Ray): the real JobFront, JobEngine (shipped tiny
weights) and embedded S3 server. A driver killed mid-batch and a new one on the same state: each
item rendered exactly once; retries get a new key; cancel stops running and queued items."""

from __future__ import annotations

import asyncio
import json
import uuid

from tessera.serving.batches.driver import BatchRun
from tessera.serving.batches.service import BatchService
from tessera.serving.batches.spec import BatchSettings
from tessera.serving.batches.state import BatchState, ItemState
from tessera.serving.jobs.records import JobRecord
from tessera.serving.storage import ObjectStore
from tests.serving.test_engine import config, engine, front, stages, wait_for  # noqa: F401 - fixtures

TINY = {"duration_s": 0.5, "width": 64, "height": 64, "steps": 2, "seed": 1}


def batch_file(n: int, bad: bool = False) -> bytes:
    lines = [json.dumps({"id": f"item{k}", "prompt": f"a red circle moving right {k}", **TINY}) for k in range(n)]
    if bad:
        lines.insert(2, json.dumps({"prompt": "", **TINY}))
    return "\n".join(lines).encode()


def job_records(store: ObjectStore, tenant: str) -> list[JobRecord]:
    prefix = f"_tessera/jobs/{tenant}/"
    return [JobRecord.model_validate_json(store.get_bytes(k)) for k in store.iter_keys(prefix)]


async def no_driver(config, tenant, name):  # the test drives BatchRun itself
    return 0


def setup(config, stages, **jobs):  # noqa: F811
    store = ObjectStore(config.storage)
    engines = [engine(config, stages, store, "r1", **jobs)]
    jobfront = front(config, store, engines)
    service = BatchService(config, jobfront.model.card, store, start_driver=no_driver)
    return store, engines, jobfront, service


def test_killed_driver_resumes_exactly_once(config, stages):  # noqa: F811
    tenant = f"t{uuid.uuid4().hex[:8]}"

    async def scenario():
        store, engines, jobfront, service = setup(config, stages, max_running_jobs=1)
        for e in engines:
            await e.start()
        try:
            view = await service.submit(tenant, "night", batch_file(4, bad=True), filename="night.jsonl",
                                        settings=BatchSettings(concurrency=2, skip_invalid=True))
            assert [line.line for line in view.spec.invalid] == [3]
            first = asyncio.create_task(BatchRun(jobfront, store, tenant, "night", poll_s=0.1).run())
            seen_concurrency = 0

            async def one_done():
                nonlocal seen_concurrency
                progress = service.batches.progress(tenant, "night")
                if progress:
                    seen_concurrency = max(seen_concurrency, sum(i.state.in_flight for i in progress.items))
                return progress and any(i.state == ItemState.SUCCEEDED for i in progress.items)

            await wait_for(one_done, 120, "a first item")
            first.cancel()  # the driver dies without a word
            await asyncio.gather(first, return_exceptions=True)
            progress = await BatchRun(jobfront, store, tenant, "night", poll_s=0.1).run()
            assert progress.state == BatchState.SUCCEEDED and progress.driver_starts == 2
            assert seen_concurrency <= 2
            records = job_records(store, tenant)
            assert len(records) == 4 and len({r.request.idempotency_key for r in records}) == 4
            videos = [k for k in store.iter_keys(f"{tenant}/batches/night/") if k.endswith("video.mp4")]
            assert sorted(videos) == [f"{tenant}/batches/night/item{k}/video.mp4" for k in range(4)]
            assert all(r.priority == -1 for r in records)
            rows = [json.loads(line) for line in store.get_bytes(f"{tenant}/batches/night/report.jsonl").decode().splitlines()]
            assert [r["state"] for r in rows] == ["SUCCEEDED", "SUCCEEDED", "INVALID", "SUCCEEDED", "SUCCEEDED"]
            # the same file again: nothing new is rendered
            again = await service.submit(tenant, "night", batch_file(4, bad=True), filename="night.jsonl",
                                         settings=BatchSettings(concurrency=2, skip_invalid=True))
            assert not again.created and again.progress.state == BatchState.SUCCEEDED
            await BatchRun(jobfront, store, tenant, "night", poll_s=0.1).run()
            assert len(job_records(store, tenant)) == 4
        finally:
            for e in engines:
                await e.stop()

    asyncio.run(scenario())


def test_cancel_stops_running_and_queued_items(config, stages):  # noqa: F811
    tenant = f"t{uuid.uuid4().hex[:8]}"

    async def scenario():
        store, engines, jobfront, service = setup(config, stages, max_running_jobs=1)
        for e in engines:
            await e.start()
        try:
            slow = "\n".join(json.dumps({"id": f"s{k}", "prompt": "a blue square", "duration_s": 2, "width": 64,
                                         "height": 64, "steps": 40, "seed": 1}) for k in range(4)).encode()
            await service.submit(tenant, "c", slow, settings=BatchSettings(concurrency=1))
            run = asyncio.create_task(BatchRun(jobfront, store, tenant, "c", poll_s=0.1).run())

            def running():
                progress = service.batches.progress(tenant, "c")
                return progress and any(i.state == ItemState.RUNNING for i in progress.items)

            await wait_for(running, 60, "a running item")
            service.batches.request_cancel(tenant, "c")
            progress = await asyncio.wait_for(run, 60)
            assert progress.state == BatchState.CANCELLED
            assert [i.state for i in progress.items] == [ItemState.CANCELLED] * 4
            assert len(job_records(store, tenant)) == 1  # the queued ones never started
            assert not [k for k in store.iter_keys(f"{tenant}/") if k.endswith(".mp4")]
            html = store.get_bytes(f"{tenant}/batches/c/report.html").decode()
            assert html.count("data-state='CANCELLED'") >= 4 and "cancelled with the batch" in html
        finally:
            for e in engines:
                await e.stop()

    asyncio.run(scenario())


def test_retry_uses_a_new_key_per_attempt(config, stages):  # noqa: F811
    tenant = f"t{uuid.uuid4().hex[:8]}"

    async def scenario():
        store, engines, jobfront, service = setup(config, stages)
        for e in engines:
            await e.start()
        try:
            data = batch_file(2) + b"\n" + json.dumps({"id": "missing", "prompt": "edit", "edit_video": f"s3://{store.bucket}/{tenant}/none.mp4"}).encode()
            await service.submit(tenant, "r", data, settings=BatchSettings())
            progress = await BatchRun(jobfront, store, tenant, "r", poll_s=0.1).run()
            assert progress.state == BatchState.FAILED
            failed = [i for i in progress.items if i.state == ItemState.FAILED]
            assert [i.id for i in failed] == ["missing"] and "NOT_FOUND" in failed[0].error
            view = await service.retry(tenant, "r")
            # Before a driver takes the retry up, the batch already shows as running again, without
            # the old report (so `retry --wait` waits for the retry, not the previous end).
            assert view.progress.state == BatchState.RUNNING and not view.report_keys
            progress = await BatchRun(jobfront, store, tenant, "r", poll_s=0.1).run()
            item = next(i for i in progress.items if i.id == "missing")
            assert item.attempt == 2 and len(item.errors) == 2 and item.state == ItemState.FAILED
            assert len(job_records(store, tenant)) == 2  # the refused item never made a job; the others ran once
            assert view.spec.name == "r"
        finally:
            for e in engines:
                await e.stop()

    asyncio.run(scenario())
