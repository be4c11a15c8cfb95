"""Faults on the real stack (Ray, Serve, the S3 server over HTTP, gRPC over a socket): replicas of
every deployment killed or paused mid-job, storage outages, cancels, a redeploy, a client going
away. Each job must end as the fault allows, with its outputs whole or absent, and exactly one
video. The session stack runs two gateways and two job runners with 4 s leases (conftest.py)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable

import grpc
import pytest

from tessera.serving.api import tessera_pb2 as pb
from tessera.serving.client import TesseraError
from tessera.serving.jobs.records import JobRecord, JobStore
from tests.helpers import ffprobe, owner_pid, replica_pids

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TENANT = "default"


def record_of(stack, job_id: str) -> JobRecord:
    return JobStore(stack.store).get(TENANT, job_id)


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str, every_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def keys_under(stack, prefix: str) -> list[str]:
    return list(stack.store.iter_keys(prefix))


def pending_uploads(stack, prefix: str) -> list[str]:
    client = stack.store._client
    response = client.list_multipart_uploads(Bucket=stack.store.bucket, Prefix=prefix)
    return [upload["Key"] for upload in response.get("Uploads", [])]


def assert_one_whole_video(stack, job: pb.Job, tmp_path) -> dict:
    """The job succeeded with exactly one video, its manifest beside it, nothing left staged."""
    assert job.state == pb.SUCCEEDED, job.error
    keys = keys_under(stack, f"{TENANT}/{job.job_id}/")
    assert keys.count(f"{TENANT}/{job.job_id}/video.mp4") == 1
    assert f"{TENANT}/{job.job_id}/manifest.json" in keys
    info = ffprobe(stack.client.download(job, tmp_path / f"{job.job_id}.mp4"))
    assert info["codec"] == "h264" and info["frames"] == job.num_frames
    # The staging and checkpoints go right after the end is recorded (before it, a takeover still needs them).
    wait_for(lambda: not keys_under(stack, JobStore.staging_prefix(TENANT, job.job_id))
             and not keys_under(stack, JobStore.checkpoint_prefix(TENANT, job.job_id)), 30, "the clean-up after the end")
    assert pending_uploads(stack, f"_tessera/staging/{TENANT}/{job.job_id}/") == []
    return json.loads(stack.store.get_bytes(f"{TENANT}/{job.job_id}/manifest.json"))


def cleaned(stack, job_id: str) -> None:
    """Wait for an ended job's clean-up: its prefix (unless it succeeded), staging and checkpoints."""
    prefixes = (JobStore.staging_prefix(TENANT, job_id), JobStore.checkpoint_prefix(TENANT, job_id))
    wait_for(lambda: not any(keys_under(stack, prefix) for prefix in prefixes), 60, "the clean-up after the end")


def outcome(fault: str, job: pb.Job, **facts) -> None:
    """One line per fault for the README's table (run with -s to see them)."""
    details = ", ".join(f"{k}={v}" for k, v in facts.items())
    print(f"\nFAULT | {fault} | {pb.JobState.Name(job.state)} in {job.timings.total_s:.1f} s | {details}", flush=True)


def kill_one(deployment: str) -> int:
    [pid, *_] = replica_pids(deployment)
    os.kill(pid, signal.SIGKILL)
    return pid


def test_denoiser_killed_mid_job(stack, tmp_path):
    job = stack.client.submit("a red circle moving right", duration_s=2, steps=60, seed=31)
    wait_for(lambda: record_of(stack, job.job_id).progress.step >= 3, 120, "denoising to start")
    killed = kill_one("Denoiser")
    done = stack.client.wait(job.job_id, timeout_s=300)
    manifest = assert_one_whole_video(stack, done, tmp_path)
    assert killed not in replica_pids("Denoiser")
    outcome("Denoiser replica killed at step 3", done, videos=1, attempts=manifest["attempts"])


def test_decoder_killed_mid_job(stack, tmp_path):
    job = stack.client.submit("a blue square moving left", duration_s=20, steps=2, seed=32)
    wait_for(lambda: record_of(stack, job.job_id).progress.segments_done >= 1, 180, "the first decoded tile")
    kill_one("Decoder")
    done = stack.client.wait(job.job_id, timeout_s=300)
    manifest = assert_one_whole_video(stack, done, tmp_path)
    outcome("Decoder replica killed after the first tile", done, videos=1, attempts=manifest["attempts"])


def test_job_runner_killed_mid_job_is_taken_over_from_its_checkpoint(stack, tmp_path):
    job = stack.client.submit("a green circle moving up", duration_s=6, steps=40, seed=33)
    record = wait_for(lambda: (r := record_of(stack, job.job_id)).checkpoint and r, 180, "a checkpoint")
    os.kill(owner_pid(record.lease.owner), signal.SIGKILL)
    killed_at = time.monotonic()
    taken = wait_for(lambda: (r := record_of(stack, job.job_id)).lease and r.lease.token > record.lease.token and r, 60,
                     "a takeover")
    took = time.monotonic() - killed_at
    assert took < 3 * stack.config.jobs.lease_ttl_s
    done = stack.client.wait(job.job_id, timeout_s=300)
    manifest = assert_one_whole_video(stack, done, tmp_path)
    assert manifest["takeovers"] >= 1 and manifest["lease_token"] >= taken.lease.token
    assert manifest["resumed_from_step_groups"] >= record.checkpoint.groups_done > 0, "resumed, not restarted"
    outcome("JobRunner replica killed (SIGKILL) mid-job", done, videos=1, taken_over_after_s=round(took, 1),
            resumed_from_step_group=manifest["resumed_from_step_groups"], of_step_groups=done.progress.total_steps)


def test_paused_job_runner_writes_nothing_after_losing_its_lease(stack, tmp_path):
    job = stack.client.submit("a yellow square moving right", duration_s=6, steps=40, seed=34)
    record = wait_for(lambda: (r := record_of(stack, job.job_id)).checkpoint and r, 180, "a checkpoint")
    paused = owner_pid(record.lease.owner)
    old_token = record.lease.token
    os.kill(paused, signal.SIGSTOP)
    try:
        wait_for(lambda: (r := record_of(stack, job.job_id)).lease and r.lease.token > old_token, 60, "a takeover")
    finally:
        os.kill(paused, signal.SIGCONT)
    done = stack.client.wait(job.job_id, timeout_s=300)
    manifest = assert_one_whole_video(stack, done, tmp_path)
    assert manifest["lease_token"] > old_token, "the outputs are the new owner's"
    time.sleep(stack.config.jobs.heartbeat_s * 3)  # the resumed holder finds its lease gone and cleans up
    assert keys_under(stack, JobStore.staging_prefix(TENANT, job.job_id)) == []
    assert record_of(stack, job.job_id).state.value == "SUCCEEDED"
    outcome("JobRunner paused (SIGSTOP) past its lease, resumed after the takeover", done, videos=1,
            old_token=old_token, outputs_token=manifest["lease_token"])


def test_gateway_killed_while_watching(stack, tmp_path):
    job = stack.client.submit("a red square moving down", duration_s=4, steps=40, seed=35)
    stream = stack.client._stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), timeout=300)
    next(stream)
    for pid in replica_pids("Gateway"):  # whichever gateway serves the stream, it dies
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(grpc.RpcError):
        for _ in stream:
            pass
    # Serve replaces the gateways; the client reconnects and follows the job to its end.
    done = wait_for(lambda: _rewatch(stack, job.job_id), 240, "a watch to succeed again", every_s=1.0)
    manifest = assert_one_whole_video(stack, done, tmp_path)
    outcome("every Gateway replica killed during WatchJob; client re-watched", done, videos=1, attempts=manifest["attempts"])


def _rewatch(stack, job_id: str) -> pb.Job | None:
    try:
        return stack.client.wait(job_id, timeout_s=240)
    except TesseraError as error:
        if error.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.NOT_FOUND):
            return None
        raise


def test_storage_outage_shorter_than_the_budget_is_ridden_out(stack, tmp_path):
    job = stack.client.submit("a blue circle moving right", duration_s=12, steps=2, seed=36)
    wait_for(lambda: record_of(stack, job.job_id).progress.segments_done >= 1, 180, "decoding")
    stack.runner.s3.stop()
    time.sleep(5)
    stack.runner.s3.start()
    done = stack.client.wait(job.job_id, timeout_s=300)
    assert_one_whole_video(stack, done, tmp_path)
    outcome("S3 server stopped for 5 s while decoding", done, videos=1)


def test_storage_outage_longer_than_the_budget_fails_cleanly(stack):
    # 60 s: decoding outlasts the poll by far, so the outage begins while segments are still to be written
    # (a 20 s video's last tiles could all be uploaded before the server stopped on a quiet machine)
    job = stack.client.submit("a green square moving left", duration_s=60, steps=2, seed=37)
    seen = wait_for(lambda: (r := record_of(stack, job.job_id)).progress.segments_done >= 1 and r, 300, "decoding")
    stack.runner.s3.stop()
    assert seen.progress.total_segments - seen.progress.segments_done >= 4, "the outage must begin with segments still to write"
    time.sleep(stack.config.jobs.storage_retry_s + 6)
    stack.runner.s3.start()
    with pytest.raises(TesseraError) as caught:
        stack.client.wait(job.job_id, timeout_s=300)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert "storage" in caught.value.message and "Traceback" not in caught.value.message
    cleaned(stack, job.job_id)
    assert keys_under(stack, f"{TENANT}/{job.job_id}/") == [], "no video without its manifest, nothing at all"
    assert pending_uploads(stack, f"_tessera/staging/{TENANT}/{job.job_id}/") == []
    outcome(f"S3 server stopped for {stack.config.jobs.storage_retry_s + 6:.0f} s (budget {stack.config.jobs.storage_retry_s:.0f} s)",
            caught.value.job, code=caught.value.code.name, objects_left=0, uploads_left=0)


def test_cancel_a_running_long_job(stack):
    job = stack.client.submit("a red circle moving left", duration_s=20, steps=30, seed=38)
    wait_for(lambda: record_of(stack, job.job_id).progress.step >= 2, 180, "denoising")
    step_at_cancel = record_of(stack, job.job_id).progress.step
    cancelled = stack.client.cancel(job.job_id)
    assert cancelled.state == pb.CANCELLED
    final = record_of(stack, job.job_id)
    # sync_every_steps is 1: a step group is one step, and the record may lag by one flush
    assert final.progress.step - step_at_cancel <= 2 * stack.config.tiling.sync_every_steps + 1
    cleaned(stack, job.job_id)
    assert keys_under(stack, f"{TENANT}/{job.job_id}/") == []
    assert pending_uploads(stack, f"_tessera/staging/{TENANT}/{job.job_id}/") == []
    outcome("CancelJob on a running 20 s job", cancelled, steps_after_cancel=final.progress.step - step_at_cancel,
            objects_left=0, uploads_left=0)
    # its replicas are free again: the next job runs at once
    assert stack.client.generate("a red circle moving left", duration_s=0.5, steps=2).state == pb.SUCCEEDED


def test_client_disconnecting_mid_generate_leaves_the_job_running(stack, tmp_path):
    seen = _serve_log_sizes("Gateway")  # only what the gateways log from here on counts: other tests cancel streams too
    call = stack.client._stub.Generate(stack.client.request("a yellow circle moving up", duration_s=2, steps=30, seed=39),
                                       timeout=300)
    first = next(call)
    job_id = first.job_id
    call.cancel()
    done = stack.client.wait(job_id, timeout_s=300)
    assert_one_whole_video(stack, done, tmp_path)
    logs = _serve_logs("Gateway", since=seen)
    assert "unexpected error" not in logs and "CancelledError" not in logs
    outcome("client cancelled its Generate call after the first event", done, videos=1, unexpected_errors_logged=0)


def _serve_log_files(deployment: str) -> list[str]:
    import ray

    session = ray._private.worker._global_node.get_session_dir_path()
    return [os.path.join(root, name) for root, _, files in os.walk(os.path.join(session, "logs", "serve"))
            for name in files if deployment in name]


def _serve_log_sizes(deployment: str) -> dict[str, int]:
    return {path: os.path.getsize(path) for path in _serve_log_files(deployment)}


def _serve_logs(deployment: str, since: dict[str, int] | None = None) -> str:
    """The replica logs of ``deployment``; with ``since`` (from :func:`_serve_log_sizes`) only what was written after."""
    text = []
    for path in _serve_log_files(deployment):
        with open(path, errors="replace") as handle:
            handle.seek((since or {}).get(path, 0))
            text.append(handle.read())
    return "\n".join(text)


def test_redeploy_while_two_jobs_run(stack, tmp_path):
    """A `serve deploy` of a changed config replaces the gateways and job runners; their jobs are
    handed over at a step group and finished by the new replicas, each once."""
    from ray import serve

    from tessera.serving.app import ROUTE_PREFIX, build_app

    jobs = [stack.client.submit("a blue square moving up", duration_s=4, steps=40, seed=40 + i) for i in range(2)]
    for job in jobs:
        wait_for(lambda job=job: record_of(stack, job.job_id).progress.step >= 2, 180, "both jobs denoising")
    changed = stack.config.model_copy(update={"jobs": stack.config.jobs.model_copy(update={"max_queued_jobs": 5})})
    serve.run(build_app(changed), name=changed.app_name, route_prefix=ROUTE_PREFIX, blocking=False)
    try:
        for job in jobs:
            done = stack.client.wait(job.job_id, timeout_s=400)
            manifest = assert_one_whole_video(stack, done, tmp_path)
            assert manifest["attempts"] >= 1
            outcome("serve deploy of a changed config with two jobs running", done, videos=1,
                    attempts=manifest["attempts"], resumed_from_step_group=manifest["resumed_from_step_groups"])
    finally:
        serve.run(build_app(stack.config), name=stack.config.app_name, route_prefix=ROUTE_PREFIX)
        stack.client.wait_until_ready(timeout_s=300)
