"""Over capacity, new work is refused at once with a retry hint, and every admitted job completes."""

from __future__ import annotations

import concurrent.futures
import time

import grpc
import pytest

from tessera.serving.api import tessera_pb2 as pb

pytestmark = pytest.mark.integration


def test_a_full_cluster_refuses_at_once_with_a_retry_hint_and_finishes_what_it_admitted(stack):
    jobs = stack.config.jobs
    capacity = stack.config.deployments.job_runner.num_replicas * (jobs.max_running_jobs + jobs.max_queued_jobs)
    stub = stack.client._stub

    def submit(seed: int):
        request = stack.client.request("a red circle moving right", duration_s=2, steps=30, seed=seed)
        started = time.monotonic()
        try:
            return stub.SubmitJob(request, timeout=60), None, time.monotonic() - started
        except grpc.RpcError as error:
            return None, error, time.monotonic() - started

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(submit, range(1000, 1000 + capacity + 6)))
    admitted = [job for job, _, _ in results if job is not None]
    refused = [(error, seconds) for _, error, seconds in results if error is not None]
    try:
        # (a job that ends during the burst frees its place, so more than `capacity` may be admitted overall)
        assert refused, f"{len(results)} submits for a capacity of {capacity}: some must be refused"
        for error, seconds in refused:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
            assert "full" in error.details() and "Traceback" not in error.details()
            hint = dict(error.trailing_metadata() or ())
            assert int(hint["grpc-retry-pushback-ms"]) == jobs.retry_pushback_ms
            assert seconds < 10, "refused at once, not after waiting for room"
    finally:  # every admitted job completes (and the next tests find the runners free again)
        for job in admitted:
            assert stack.client.wait(job.job_id, timeout_s=600).state == pb.SUCCEEDED
