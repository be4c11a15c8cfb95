"""Jobs are durable: after the S3 server and the whole Serve application restart, finished jobs
are still there and unfinished ones are rendered to the end."""

from __future__ import annotations

import pytest

from tessera.serving.api import tessera_pb2 as pb
from tests.helpers import ffprobe

pytestmark = pytest.mark.integration


def restart_stack(stack) -> None:
    """Stop everything that holds Tessera state (the Serve app's replicas and the S3 server),
    then start them again from what is on disk."""
    stack.runner.s3.stop()
    stack.runner.s3.start()
    stack.runner.restart_app()
    stack.client.wait_until_ready(timeout_s=300)


def test_jobs_survive_a_restart(stack, tmp_path):
    finished = stack.client.generate("a yellow square moving down", duration_s=1, steps=4, seed=21)
    unfinished = stack.client.submit("a blue circle moving left", duration_s=4, steps=30, seed=22)

    restart_stack(stack)

    again = stack.client.get(finished.job_id)
    assert again.state == pb.SUCCEEDED and again.video_uri == finished.video_uri
    assert finished.job_id in [j.job_id for j in stack.client.iter_jobs()]

    resumed = stack.client.wait(unfinished.job_id, timeout_s=600)
    assert resumed.state == pb.SUCCEEDED
    info = ffprobe(stack.client.download(resumed, tmp_path / "resumed.mp4"))
    assert info["frames"] == resumed.num_frames == 32
