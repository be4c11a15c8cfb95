"""Per-tenant quotas at submit, counted from the bucket (a real S3 server), across racing submits;
and the health report read from Serve's status."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from ray.serve._private.common import DeploymentStatus, DeploymentStatusTrigger, ReplicaState
from ray.serve.schema import ApplicationStatus, ApplicationStatusOverview, DeploymentStatusOverview, ServeStatus

from tessera.models.registry import load_model
from tessera.serving.config import TesseraConfig
from tessera.serving.health import HealthMonitor, report_from_status
from tessera.serving.jobs.quotas import QuotaExceededError, job_id_time, usage_prefix, video_ms
from tessera.serving.jobs.records import PREFIX, JobState, new_job_id
from tessera.serving.jobs.spec import GenerationRequest
from tessera.serving.jobs.submission import JobFront, NoCapacityError
from tessera.serving.storage import ObjectStore
from tests.conftest import storage_config_for

REQUEST = GenerationRequest(prompt="a red circle moving right", duration_s=2, steps=2)


def tenant() -> str:
    return "q" + uuid.uuid4().hex[:10]


def front(s3_server, who: str, quota: dict, room: bool = True) -> JobFront:
    """A gateway's job front over the session's S3 server; its "job runner" holds every job and
    runs none (``room``), so the jobs stay QUEUED."""
    config = TesseraConfig(storage=storage_config_for(s3_server), quotas={"tenants": {who: quota}})

    async def offer(tenant: str, job_id: str) -> bool:
        return room

    return JobFront(config, load_model(config.model, parts=()), ObjectStore(config.storage), offer=offer, offer_attempts=1)


def submit(jobs: JobFront, who: str, request: GenerationRequest = REQUEST):
    return asyncio.run(jobs.submit(who, request))


def keys(jobs: JobFront, prefix: str) -> list[str]:
    return list(jobs.objects.iter_keys(prefix))


def test_job_ids_carry_their_time():
    now = time.time()
    assert abs(job_id_time(new_job_id(now)) - now) < 0.002


def test_concurrent_jobs_quota_names_itself_and_frees_up_when_a_job_ends(s3_server):
    who = tenant()
    jobs = front(s3_server, who, {"max_concurrent_jobs": 2})
    first, _ = submit(jobs, who), submit(jobs, who)
    with pytest.raises(QuotaExceededError) as caught:
        submit(jobs, who)
    assert caught.value.quota == "max_concurrent_jobs" and caught.value.code.name == "RESOURCE_EXHAUSTED"
    assert str(caught.value) == (f"quota max_concurrent_jobs exceeded: tenant {who} may have 2 jobs queued or running at "
                                 f"once and has 2 besides this one; wait for one to end (quotas.tenants.{who}.max_concurrent_jobs)")
    assert len(keys(jobs, f"{PREFIX}/jobs/{who}/")) == 2, "a refused submit leaves no record"
    asyncio.run(jobs.cancel(who, first.job_id))  # nobody holds it: it ends at once
    submit(jobs, who)


def test_an_idempotent_repeat_is_not_a_new_job(s3_server):
    who = tenant()
    jobs = front(s3_server, who, {"max_concurrent_jobs": 1})
    keyed = REQUEST.model_copy(update={"idempotency_key": "once"})
    job = submit(jobs, who, keyed)
    assert submit(jobs, who, keyed).job_id == job.job_id, "the same job, not refused"


def test_queued_jobs_quota_counts_only_jobs_waiting_to_start(s3_server):
    who = tenant()
    jobs = front(s3_server, who, {"max_queued_jobs": 2})
    first, _ = submit(jobs, who), submit(jobs, who)
    with pytest.raises(QuotaExceededError, match=r"^quota max_queued_jobs exceeded: .* may have 2 jobs waiting to start and has 2"):
        submit(jobs, who)
    record, etag = jobs.store.read(who, first.job_id)  # a job runner starts it
    record.state = JobState.RUNNING
    jobs.store.write(record, etag)
    submit(jobs, who)
    with pytest.raises(QuotaExceededError, match="max_queued_jobs"):
        submit(jobs, who)


def test_video_seconds_per_hour_over_a_sliding_hour(s3_server):
    who = tenant()
    jobs = front(s3_server, who, {"max_video_seconds_per_hour": 5})
    stale = f"{usage_prefix(who)}{new_job_id(time.time() - 3 * 3600)}.999000"
    older = f"{usage_prefix(who)}{new_job_id(time.time() - 3700)}.999000"
    for key in (stale, older):  # jobs of long ago: not counted
        jobs.objects.put_bytes(key, b"", content_type="text/plain")
    first = submit(jobs, who)
    seconds = video_ms(first) / 1000
    assert 2 <= seconds < 2.5
    submit(jobs, who)
    with pytest.raises(QuotaExceededError) as caught:
        submit(jobs, who)
    assert caught.value.quota == "max_video_seconds_per_hour"
    assert f"may submit 5 s of video per hour and submitted {2 * seconds:g} s in the last hour; this job's {seconds:g} s" in str(caught.value)
    assert not jobs.objects.exists(stale), "markers older than two hours are cleaned up"
    assert jobs.objects.exists(older)
    assert len(keys(jobs, usage_prefix(who))) == 3, "a refused job's usage marker is withdrawn with it"
    short = REQUEST.model_copy(update={"duration_s": None, "num_frames": 1})
    submit(jobs, who, short)  # what is left of the hour still fits a short one


def test_a_job_refused_for_capacity_gives_its_seconds_back(s3_server):
    who = tenant()
    jobs = front(s3_server, who, {"max_video_seconds_per_hour": 100}, room=False)
    with pytest.raises(NoCapacityError):
        submit(jobs, who)
    assert keys(jobs, usage_prefix(who)) == [] and keys(jobs, f"{PREFIX}/active/{who}/") == []


def test_racing_submits_never_pass_the_quota(s3_server):
    """Six submits at once from several 'gateways' (each its own JobFront): at most the limit stand."""
    who = tenant()
    fronts = [front(s3_server, who, {"max_concurrent_jobs": 3}) for _ in range(3)]

    async def race():
        return await asyncio.gather(*(fronts[i % 3].submit(who, REQUEST) for i in range(6)), return_exceptions=True)

    results = asyncio.run(race())
    admitted = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, Exception)]
    assert all(isinstance(r, QuotaExceededError) and r.quota == "max_concurrent_jobs" for r in refused), refused
    assert 1 <= len(admitted) <= 3
    assert len(keys(fronts[0], f"{PREFIX}/active/{who}/")) == len(admitted)
    assert len(keys(fronts[0], f"{PREFIX}/jobs/{who}/")) == len(admitted)


def test_a_tenant_without_quota_is_not_counted(s3_server):
    who = tenant()
    jobs = front(s3_server, "someone-else", {"max_concurrent_jobs": 0})
    for _ in range(3):
        submit(jobs, who)
    assert keys(jobs, usage_prefix(who)) == []


def _status(**running: int) -> ServeStatus:
    deployments = {
        name: DeploymentStatusOverview(
            status=DeploymentStatus.HEALTHY if n else DeploymentStatus.UPDATING,
            status_trigger=DeploymentStatusTrigger.CONFIG_UPDATE_STARTED,
            replica_states={ReplicaState.RUNNING: n} if n else {ReplicaState.STARTING: 1}, message="",
        )
        for name, n in running.items()
    }
    app = ApplicationStatusOverview(status=ApplicationStatus.RUNNING, message="", last_deployed_time_s=0, deployments=deployments)
    return ServeStatus(applications={"tessera": app})


def test_serving_only_when_every_stage_has_a_running_replica():
    ok = report_from_status(_status(Gateway=2, JobRunner=2, PromptExpander=1, Denoiser=1, Decoder=1), "tessera")
    assert ok.serving and ok.status == "SERVING" and ok.problem == ""
    down = report_from_status(_status(Gateway=2, JobRunner=2, PromptExpander=1, Denoiser=1, Decoder=0), "tessera")
    assert not down.serving and down.problem == "no running replica of Decoder"
    assert down.as_dict()["deployments"]["Decoder"] == {"running_replicas": 0}
    assert not report_from_status(_status(), "tessera").serving
    assert report_from_status(_status(Gateway=1), "other").problem == "application 'other' is not deployed"


def test_the_health_monitor_asks_serve_at_most_once_per_interval():
    calls = []

    def read():
        calls.append(1)
        return report_from_status(_status(Gateway=1), "tessera")

    monitor = HealthMonitor(read, cache_s=60)

    async def probes():
        return await asyncio.gather(*(monitor.report() for _ in range(20)))

    assert all(r.serving for r in asyncio.run(probes()))
    assert len(calls) == 1
