"""Run it in production, on the real stack: API keys (on by default), tenants kept apart, quotas,
health (grpc.health.v1 and /healthz), and every socket of the embedded stack on loopback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tessera.cluster.loopback import is_loopback, not_on_loopback
from tessera.serving.api import tessera_pb2 as pb
from tessera.serving.api import tessera_pb2_grpc as pb_grpc
from tessera.serving.auth import hash_api_key
from tessera.serving.client import TesseraClient, TesseraError
from tests.helpers import replica_pids

pytestmark = pytest.mark.integration

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
TINY = dict(duration_s=1, width=64, height=64, steps=2)


def expect(code: grpc.StatusCode, call, *args, **kwargs) -> str:
    with pytest.raises(TesseraError) as caught:
        call(*args, **kwargs)
    assert caught.value.code == code, caught.value
    assert "Traceback" not in caught.value.message
    return caught.value.message


def test_the_stack_made_a_key_for_the_default_tenant_and_keeps_only_its_hash(stack):
    key_path = stack.runner.home / "api_key"
    assert key_path.read_text().strip() == stack.api_key and stack.api_key.startswith("tsk_")
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert stack.config.auth.enabled
    assert stack.config.auth.api_keys["default"] == (hash_api_key(stack.api_key),)
    assert stack.api_key not in stack.config.to_yaml(), "the config holds the hash, not the key"


def test_no_key_or_a_wrong_key_is_unauthenticated(stack):
    with TesseraClient(stack.address, api_key="") as anonymous:
        for call, args in ((anonymous.list, ()), (anonymous.get, ("0123456789abcdef",)),
                           (anonymous.submit, ("a red circle",)), (anonymous.generate, ("a red circle",))):
            assert "missing API key" in expect(grpc.StatusCode.UNAUTHENTICATED, call, *args)
    with TesseraClient(stack.address, api_key="tsk_" + "x" * 43) as wrong:
        assert expect(grpc.StatusCode.UNAUTHENTICATED, wrong.list) == "unknown API key"
        assert expect(grpc.StatusCode.UNAUTHENTICATED, wrong.wait, "0123456789abcdef") == "unknown API key"
    channel = grpc.insecure_channel(stack.address)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            pb_grpc.VideoGenerationStub(channel).ListJobs(pb.ListJobsRequest(), metadata=[("authorization", "Basic dTpw")], timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "must be 'Bearer KEY'" in caught.value.details()
    finally:
        channel.close()


def test_bearer_and_x_api_key_both_work(stack):
    channel = grpc.insecure_channel(stack.address)
    try:
        stub = pb_grpc.VideoGenerationStub(channel)
        for metadata in ([("authorization", f"Bearer {stack.api_key}")], [("x-api-key", stack.api_key)]):
            stub.ListJobs(pb.ListJobsRequest(page_size=1), metadata=metadata, timeout=30)
    finally:
        channel.close()


def test_another_tenants_job_is_not_found_and_outputs_are_per_tenant(stack):
    job = stack.client.generate("a blue square moving up", seed=3, **TINY)
    assert job.video_uri.startswith(f"s3://{stack.config.storage.bucket}/default/{job.job_id}/")
    expiry = urllib.parse.parse_qs(urllib.parse.urlparse(job.video_url).query)["X-Amz-Expires"]
    assert expiry == [str(stack.config.storage.presign_expiry_s)], "presigned URLs expire as configured"
    with stack.client_for("acme") as acme:
        unknown = expect(grpc.StatusCode.NOT_FOUND, acme.get, "0123456789abcdef")
        for call in (acme.get, acme.cancel, acme.wait):
            message = expect(grpc.StatusCode.NOT_FOUND, call, job.job_id)
            assert message == unknown.replace("0123456789abcdef", job.job_id), "no hint that the job exists"
        assert job.job_id not in [j.job_id for j in acme.iter_jobs()]
        message = expect(grpc.StatusCode.PERMISSION_DENIED, acme.submit, "x", extend_video=job.video_uri, extend_seconds=1)
        assert "acme/" in message
        own = acme.submit("a green circle", seed=4, **TINY)
        assert own.job_id not in [j.job_id for j in stack.client.iter_jobs()]
        expect(grpc.StatusCode.NOT_FOUND, stack.client.get, own.job_id)
        done = acme.wait(own.job_id, timeout_s=300)
        assert done.video_uri.startswith(f"s3://{stack.config.storage.bucket}/acme/{own.job_id}/")


def test_quotas_refuse_with_resource_exhausted_naming_the_quota(stack):
    """Tenant `capped`: 1 job at once, 3 s of video per hour (tests/integration/conftest.py)."""
    with stack.client_for("capped") as capped:
        running = capped.submit("a red circle moving right", duration_s=2, steps=80, seed=5)
        message = expect(grpc.StatusCode.RESOURCE_EXHAUSTED, capped.submit, "a red circle", **TINY)
        assert message.startswith("quota max_concurrent_jobs exceeded: tenant capped may have 1 jobs queued or running")
        stack.client.submit("the default tenant has no quota", **TINY)  # other tenants are not affected
        capped.cancel(running.job_id)
        deadline = time.monotonic() + 120
        while capped.get(running.job_id).state != pb.CANCELLED:  # its active marker goes with its end
            assert time.monotonic() < deadline, "the cancelled job ends"
            time.sleep(0.2)
        message = expect(grpc.StatusCode.RESOURCE_EXHAUSTED, capped.submit, "a red circle", duration_s=2, steps=2)
        assert message.startswith("quota max_video_seconds_per_hour exceeded: tenant capped may submit 3 s of video per hour")
        fits = capped.submit("a red circle", num_frames=5, width=64, height=64, steps=2)  # 0.625 s: at most 2.75 s in the hour
        assert capped.wait(fits.job_id, timeout_s=300).state == pb.SUCCEEDED


def _healthz(stack) -> tuple[int, dict]:
    base = stack.http_base_url.rsplit("/v1", 1)[0]
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_health_is_serving_only_while_every_stage_has_a_running_replica(stack):
    channel = grpc.insecure_channel(stack.address)  # no key: a health check needs none
    health = health_pb2_grpc.HealthStub(channel)
    try:
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=30).status == SERVING
        api = health_pb2.HealthCheckRequest(service="tessera.v1.VideoGeneration")
        assert health.Check(api, timeout=30).status == SERVING
        with pytest.raises(grpc.RpcError) as caught:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=30)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        status, report = _healthz(stack)
        assert status == 200 and report["status"] == "SERVING"
        assert set(report["deployments"]) == {"Gateway", "JobRunner", "PromptExpander", "Denoiser", "Decoder"}

        seen: list[int] = []
        watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=600)
        def read() -> None:
            try:
                seen.extend(answer.status for answer in watch)
            except grpc.RpcError as error:  # our own cancel at the end
                assert error.code() == grpc.StatusCode.CANCELLED, error

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = time.monotonic() + 30
        while not seen and time.monotonic() < deadline:
            time.sleep(0.1)
        assert seen[:1] == [SERVING]

        for pid in replica_pids("Decoder"):  # the stage's only replica dies; Serve starts another
            os.kill(pid, signal.SIGKILL)
        grpc_down = http_down = None
        deadline = time.monotonic() + 120
        while (grpc_down is None or http_down is None) and time.monotonic() < deadline:
            if health.Check(health_pb2.HealthCheckRequest(), timeout=30).status == NOT_SERVING:
                grpc_down = True
            status, report = _healthz(stack)
            if status == 503:
                http_down = report
            time.sleep(0.1)
        assert grpc_down, "Check said NOT_SERVING while the Decoder had no running replica"
        assert http_down and http_down["status"] == "NOT_SERVING" and "Decoder" in http_down["problem"]

        deadline = time.monotonic() + 300
        while health.Check(health_pb2.HealthCheckRequest(), timeout=30).status != SERVING and time.monotonic() < deadline:
            time.sleep(0.5)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=30).status == SERVING, "back once Serve replaced it"
        assert _healthz(stack)[0] == 200
        deadline = time.monotonic() + 30
        while seen[-1:] != [SERVING] or NOT_SERVING not in seen:
            assert time.monotonic() < deadline, seen
            time.sleep(0.2)
        assert seen[0] == SERVING and NOT_SERVING in seen, "Watch streamed the changes"
        watch.cancel()
    finally:
        channel.close()
    assert stack.client.generate("a red circle after the outage", **TINY).state == pb.SUCCEEDED


def test_every_socket_of_the_stack_listens_on_loopback_only(stack):
    listeners = stack.runner.listening()
    by_port = {item.port: item for item in listeners}
    for port in (stack.config.grpc.port, stack.config.http.port, stack.runner.s3.port):
        assert port in by_port, f"port {port} is listening"
    processes = " ".join(item.process for item in listeners)
    assert "gcs_server" in processes and "raylet" in processes and "ServeReplica" in processes
    assert not_on_loopback(listeners) == [], [item.as_dict() for item in listeners]
    assert by_port[stack.config.grpc.port].role.startswith("gRPC API")
    if shutil.which("ss"):  # the kernel's own table agrees: every one of those ports is bound to loopback only
        table = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout.split("\n")
        for item in listeners:
            bound = [line.split()[3].rsplit(":", 1)[0] for line in table if line.split()[3:4]
                     and line.split()[3].rsplit(":", 1)[1] == str(item.port)]
            assert bound and all(is_loopback(address.strip("[]")) for address in bound), (item, bound)
