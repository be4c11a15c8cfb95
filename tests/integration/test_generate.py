"""End to end through the real stack: gRPC in, H.264 MP4 in S3 out."""

from __future__ import annotations

import json
import urllib.request

import grpc
import pytest

from tessera.serving.api import tessera_pb2 as pb
from tessera.serving.client import TesseraError
from tessera.serving.video import decode_frames
from tests.helpers import ffprobe

pytestmark = pytest.mark.integration

PROMPT = "a red circle moving to the right"


@pytest.fixture(scope="module")
def rendered(stack, tmp_path_factory):
    """One clip rendered through Generate, with every progress event it streamed."""
    events = []
    job = stack.client.generate(PROMPT, duration_s=2, width=64, height=64, fps=8, seed=11, steps=8, on_progress=events.append)
    path = stack.client.download(job, tmp_path_factory.mktemp("clip") / "clip.mp4")
    return job, events, path


def test_generate_streams_progress_then_the_result(rendered):
    job, events, _ = rendered
    assert job.state == pb.SUCCEEDED
    stages = [e.stage for e in events]
    # Progress is read from the job's record (watch_poll_s): a stage shorter than that may pass unseen.
    assert stages == sorted(stages) and pb.STAGE_DENOISING in stages, stages
    denoising = [e for e in events if e.stage == pb.STAGE_DENOISING]
    assert all(e.total_steps == 8 for e in denoising)
    steps = [e.step for e in denoising]
    # Progress comes from the job's record, read every watch_poll_s: a step shorter than that may be skipped.
    assert steps == sorted(steps) and all(0 <= s <= 8 for s in steps), steps
    assert job.progress.step == job.progress.total_steps == 8 and job.progress.fraction == 1
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and 0 <= fractions[0] and fractions[-1] <= 1


def test_result_fields(rendered, stack):
    job, _, _ = rendered
    prefix = f"s3://{stack.config.storage.bucket}/default/{job.job_id}/"
    assert job.video_uri == prefix + "video.mp4"
    assert job.poster_uri == prefix + "poster.png"
    assert job.manifest_uri == prefix + "manifest.json"
    assert job.video_url.startswith("http://") and "X-Amz-Signature" in job.video_url
    assert job.seed == 11
    assert job.expanded_prompt and job.expanded_prompt != PROMPT, "the built-in expander re-captions"
    assert job.model.startswith("native/tiny@")
    assert (job.width, job.height, job.num_frames, job.fps, job.duration_s) == (64, 64, 16, 8, 2)
    t = job.timings
    assert t.expand_s > 0 and t.denoise_s > 0 and t.decode_s > 0 and t.total_s >= t.denoise_s + t.decode_s


def test_video_is_real_h264_of_the_requested_shape(rendered):
    _, _, path = rendered
    info = ffprobe(path)
    assert info["codec"] == "h264" and info["pix_fmt"] == "yuv420p"
    assert (info["width"], info["height"]) == (64, 64)
    assert info["frames"] == 16 and info["fps"] == 8
    assert info["duration"] == pytest.approx(2.0, abs=0.01)
    assert "mp4" in info["format"]


def test_poster_and_manifest(rendered, stack):
    job, _, _ = rendered
    poster = stack.store.get_bytes(f"default/{job.job_id}/poster.png")
    assert poster.startswith(b"\x89PNG\r\n\x1a\n")
    assert decode_frames(poster).shape == (1, 64, 64, 3)
    with urllib.request.urlopen(job.poster_url, timeout=10) as response:
        assert response.read() == poster
    manifest = json.loads(stack.store.get_bytes(f"default/{job.job_id}/manifest.json"))
    assert manifest["job_id"] == job.job_id
    assert manifest["request"]["prompt"] == PROMPT
    assert manifest["prompt"]["caption"] == job.expanded_prompt
    assert manifest["seed"] == 11
    assert manifest["model"]["family"] == "native" and manifest["model"]["version"]
    assert manifest["outputs"]["video"] == job.video_uri
    assert manifest["plan"]["num_frames"] == 16
    assert manifest["video"]["codec"] == "h264"


def test_same_seed_same_video(rendered, stack, tmp_path):
    job, _, path = rendered
    again = stack.client.generate(PROMPT, duration_s=2, width=64, height=64, fps=8, seed=11, steps=8)
    assert again.job_id != job.job_id
    second = stack.client.download(again, tmp_path / "again.mp4")
    assert (decode_frames(second.read_bytes()) == decode_frames(path.read_bytes())).all()


def test_submit_get_watch_list(stack):
    submitted = stack.client.submit(PROMPT, duration_s=1, steps=4, seed=3)
    assert submitted.state in (pb.QUEUED, pb.RUNNING)
    assert submitted.job_id and not submitted.video_uri
    progress = []
    finished = stack.client.wait(submitted.job_id, on_progress=progress.append)
    assert finished.state == pb.SUCCEEDED and finished.video_uri
    assert stack.client.get(submitted.job_id).video_uri == finished.video_uri
    watched_again = stack.client.wait(submitted.job_id)  # a finished job's watch ends at once
    assert watched_again.state == pb.SUCCEEDED

    newest = stack.client.list(page_size=1)
    jobs = list(stack.client.iter_jobs(page_size=2))
    assert len(newest.jobs) == 1 and bool(newest.next_page_token) == (len(jobs) > 1), "a next page exactly when there is one"
    ids = [j.job_id for j in jobs]
    assert submitted.job_id in ids and len(ids) == len(set(ids))
    created = [j.created_at.ToMilliseconds() for j in jobs]  # ids order by the millisecond (records.new_job_id)
    assert created == sorted(created, reverse=True), "newest first"
    succeeded = stack.client.list(page_size=100, state=pb.SUCCEEDED).jobs
    assert all(j.state == pb.SUCCEEDED for j in succeeded) and submitted.job_id in [j.job_id for j in succeeded]


def test_idempotency_key_gives_one_job(stack):
    first = stack.client.submit(PROMPT, duration_s=1, steps=4, idempotency_key="batch-7/item-1")
    second = stack.client.submit(PROMPT, duration_s=1, steps=4, idempotency_key="batch-7/item-1")
    assert first.job_id == second.job_id
    listed = [j for j in stack.client.iter_jobs() if j.request.idempotency_key == "batch-7/item-1"]
    assert len(listed) == 1
    with pytest.raises(TesseraError) as caught:
        stack.client.submit("a blue square moving up", duration_s=1, steps=4, idempotency_key="batch-7/item-1")
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "already used for a different request" in caught.value.message
    stack.client.wait(first.job_id)


def test_cancel_running_job_leaves_no_objects(stack):
    job = stack.client.submit(PROMPT, duration_s=6, steps=50, seed=5)
    for event in stack.client._stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id)):
        if event.HasField("progress") and event.progress.stage == pb.STAGE_DENOISING and event.progress.step >= 1:
            break
    cancelled = stack.client.cancel(job.job_id)
    assert cancelled.state == pb.CANCELLED
    with pytest.raises(TesseraError) as caught:
        stack.client.wait(job.job_id)
    assert caught.value.code == grpc.StatusCode.CANCELLED and caught.value.job.state == pb.CANCELLED
    assert stack.store.list_keys(f"default/{job.job_id}/") == []
    again = stack.client.cancel(job.job_id)  # cancelling twice is harmless
    assert again.state == pb.CANCELLED
