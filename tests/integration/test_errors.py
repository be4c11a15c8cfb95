"""Bad input and broken dependencies give specific gRPC statuses, never INTERNAL tracebacks."""

from __future__ import annotations

import time

import grpc
import pytest

from tessera.serving.api import tessera_pb2 as pb
from tessera.serving.client import TesseraError

pytestmark = pytest.mark.integration

BAD_REQUESTS = [
    (dict(prompt=""), "prompt is empty"),
    (dict(prompt="x" * 5000), "prompt has 5000 characters; the limit is 2000"),
    (dict(prompt="ok", width=100), "width 100 is not a multiple of 16"),
    (dict(prompt="ok", height=-32), "height must be a positive number of pixels"),
    (dict(prompt="ok", width=4096), "width 4096 is above the model's maximum"),
    (dict(prompt="ok", fps=500), "fps 500 is out of range"),
    (dict(prompt="ok", duration_s=61), "duration_s 61 is above the maximum of 60 s"),
    (dict(prompt="ok", duration_s=-2), "duration_s must be positive"),
    (dict(prompt="ok", duration_s=1, num_frames=8), "set duration_s or num_frames, not both"),
    (dict(prompt="ok", steps=-3), "steps must be between 1 and"),
    (dict(prompt="ok", guidance_scale=float("nan")), "guidance_scale must be a finite number"),
]


@pytest.mark.parametrize("fields,message", BAD_REQUESTS, ids=[m for _, m in BAD_REQUESTS])
@pytest.mark.parametrize("method", ["Generate", "SubmitJob"])
def test_bad_request_is_invalid_argument(stack, method, fields, message):
    request = pb.GenerateRequest(**fields)
    with pytest.raises(grpc.RpcError) as caught:
        call = getattr(stack.client._stub, method)(request, timeout=30)
        if method == "Generate":
            list(call)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details()
    assert "Traceback" not in caught.value.details()


@pytest.mark.parametrize("job_id", ["00000000000000000000", "0123456789abcdef", "../etc/passwd", ""])
def test_unknown_job_is_not_found(stack, job_id):
    for call in (stack.client.get, stack.client.cancel, stack.client.wait):
        with pytest.raises(TesseraError) as caught:
            call(job_id)
        assert caught.value.code == grpc.StatusCode.NOT_FOUND
        assert "no job" in caught.value.message


def test_bad_list_arguments(stack):
    for kwargs, message in ((dict(page_size=1000), "page_size must be between 1 and 100"),
                            (dict(page_token="not-a-token"), "page_token is not one this API returned"),
                            (dict(state=42), "unknown job state")):
        with pytest.raises(TesseraError) as caught:
            stack.client.list(**kwargs)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert message in caught.value.message


def test_storage_down_is_unavailable_then_recovers(stack):
    stack.runner.s3.stop()
    try:
        with pytest.raises(TesseraError) as caught:
            stack.client.submit("a green square moving up", duration_s=1, steps=2)
        assert caught.value.code == grpc.StatusCode.UNAVAILABLE
        assert "storage" in caught.value.message.lower()
        assert "Traceback" not in caught.value.message
    finally:
        stack.runner.s3.start()
    job = stack.client.generate("a green square moving up", duration_s=1, steps=2)
    assert job.state == pb.SUCCEEDED


def test_storage_blip_while_denoising_does_not_fail_the_job(stack):
    job = stack.client.submit("a red circle moving right", duration_s=12, steps=100, seed=9)
    for event in stack.client._stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id)):
        if event.HasField("progress") and event.progress.stage == pb.STAGE_DENOISING and event.progress.step >= 1:
            break
    stack.runner.s3.stop()
    try:
        time.sleep(stack.config.jobs.progress_flush_s + 0.5)  # at least one progress write finds S3 down
    finally:
        stack.runner.s3.start()
    done = stack.client.wait(job.job_id, timeout_s=300)
    assert done.state == pb.SUCCEEDED, done.error
    assert stack.store.exists(stack.store.parse_uri(done.video_uri)[1])
