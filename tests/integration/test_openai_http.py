"""The OpenAI-compatible HTTP API on the running stack, through the real ``openai`` SDK.

Videos made here are Tessera jobs like any other: the same records answer gRPC's GetJob and
ListJobs, and jobs submitted over gRPC answer here. Renders are tiny (64x64, at most 2 s, at
most 16 steps). Keys, bad input and the OpenAPI document without a stack:
tests/serving/test_openai_http.py."""

from __future__ import annotations

import io
import json
import time
import urllib.request

import av
import grpc
import openai
import pytest

from tessera.serving.api import tessera_pb2 as pb
from tessera.serving.client import TesseraError
from tessera.serving.jobs.records import JobStore
from tessera.serving.video import VideoEncodingConfig, encode_mp4
from tests.helpers import ffprobe

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:The Sora API is scheduled:DeprecationWarning")]

PROMPT = "a red circle moving to the right"
TINY = {"size": "64x64", "seconds": "2"}


def key_and_tenant(stack) -> tuple[str, str]:
    """The stack's own key (the config holds only hashes) and its tenant; any key works with auth off."""
    if stack.config.auth.enabled:
        return stack.api_key, stack.config.auth.default_tenant
    return "no-keys-configured", stack.config.auth.default_tenant


@pytest.fixture(scope="module")
def sdk(stack) -> openai.OpenAI:
    with openai.OpenAI(base_url=stack.http_base_url, api_key=key_and_tenant(stack)[0], max_retries=0, timeout=120) as client:
        yield client


def wait(sdk: openai.OpenAI, video_id: str):
    video = sdk.videos.poll(video_id, poll_interval_ms=200)
    assert video.status == "completed", video
    return video


def server_sent_events(stack, video_id: str) -> list[tuple[str, dict]]:
    """Every event of GET /v1/videos/{id}/events, read with a plain HTTP client to the stream's end."""
    request = urllib.request.Request(f"{stack.http_base_url}/videos/{video_id}/events",
                                     headers={"Authorization": f"Bearer {key_and_tenant(stack)[0]}"})
    events, name, data = [], None, []
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        for raw in response:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                data.append(line[len("data: "):])
            elif not line and name:
                events.append((name, json.loads("\n".join(data))))
                name, data = None, []
    return events


def keys_under(stack, prefix: str) -> list[str]:
    return stack.store.list_keys(prefix)


@pytest.fixture(scope="module")
def first(stack, sdk):
    """One video made over HTTP (with Tessera's own fields in extra_body), followed by its event stream."""
    # 16 steps: denoising lasts long enough on a quiet machine for the event stream to see it
    created = sdk.videos.create(prompt=PROMPT, **TINY, extra_body={"steps": 16, "seed": 7, "negative_prompt": "blurry"})
    events = server_sent_events(stack, created.id)
    return created, events, sdk.videos.retrieve(created.id)


def test_create_answers_a_video_object_at_once(first):
    created, _, _ = first
    assert created.object == "video" and created.status in ("queued", "in_progress")
    assert (created.size, created.seconds, created.model, created.prompt) == ("64x64", "2", "native/tiny", PROMPT)
    assert abs(created.created_at - time.time()) < 120 and created.completed_at is None and created.expires_at is None
    assert 0 <= created.progress < 100 and created.error is None and created.remixed_from_video_id is None


def test_events_stream_progress_then_the_final_video(first):
    created, events, _ = first
    names = [name for name, _ in events]
    assert names[-1] == "video" and set(names[:-1]) == {"progress"} and len(names) >= 3, names
    progress = [data for name, data in events if name == "progress"]
    assert all(p["id"] == created.id and p["object"] == "video.progress" for p in progress)
    percents = [p["progress"] for p in progress]
    assert percents == sorted(percents) and percents[-1] < 100, percents
    denoising = [p for p in progress if p["stage"] == "DENOISING"]
    assert denoising and denoising[-1]["total_steps"] == 16, progress
    final = events[-1][1]
    assert final["id"] == created.id and final["status"] == "completed" and final["progress"] == 100


def test_a_completed_video_carries_its_facts(first, stack):
    _, _, done = first
    assert done.status == "completed" and done.progress == 100 and done.completed_at >= done.created_at
    assert abs(done.expires_at - (time.time() + stack.config.storage.presign_expiry_s)) < 120
    details = done.tessera  # Tessera's own fields ride along
    assert (details["seed"], details["steps"], details["width"], details["height"], details["fps"], details["num_frames"]) == (
        7, 16, 64, 64, 8, 16)
    assert details["state"] == "SUCCEEDED" and details["mode"] == "text_to_video"
    assert details["video_url"].startswith("http") and "X-Amz-Signature" in details["video_url"]
    with urllib.request.urlopen(details["thumbnail_url"], timeout=30) as response:
        assert response.read()[:8] == b"\x89PNG\r\n\x1a\n"


def test_http_videos_are_grpc_jobs_and_grpc_jobs_are_http_videos(first, stack, sdk):
    created, _, _ = first
    job = stack.client.get(created.id)
    assert job.state == pb.SUCCEEDED and job.seed == 7
    assert (job.request.prompt, job.request.negative_prompt, job.request.steps) == (PROMPT, "blurry", 16)
    assert created.id in [j.job_id for j in stack.client.list(page_size=50).jobs]

    made = stack.client.generate("a blue square moving left", duration_s=1, width=64, height=64, steps=2, seed=3)
    video = sdk.videos.retrieve(made.job_id)
    assert (video.status, video.size, video.seconds, video.tessera["seed"]) == ("completed", "64x64", "1", 3)
    assert made.job_id in [v.id for v in sdk.videos.list(limit=50)]


def test_create_and_poll_with_tessera_fields(sdk):
    video = sdk.videos.create_and_poll(prompt="a yellow square moving down", size="64x64", seconds="1",
                                       extra_body={"steps": 2, "fps": 6, "skip_prompt_expansion": True})
    assert video.status == "completed" and video.seconds == "1"
    assert video.tessera["fps"] == 6 and video.tessera["num_frames"] == 6
    assert video.tessera["expanded_prompt"] == "a yellow square moving down", "rendered as written"


def test_download_content_in_every_variant(first, sdk, tmp_path):
    created, _, _ = first
    path = tmp_path / "clip.mp4"
    sdk.videos.download_content(created.id).write_to_file(path)
    info = ffprobe(path)
    assert (info["codec"], info["width"], info["height"], info["frames"], info["pix_fmt"]) == ("h264", 64, 64, 16, "yuv420p")

    thumbnail = sdk.videos.download_content(created.id, variant="thumbnail")
    assert thumbnail.response.headers["content-type"] == "image/png"
    with av.open(io.BytesIO(thumbnail.content)) as container:
        assert container.streams.video[0].codec_context.name == "png"
        frame = next(container.decode(video=0))
        assert (frame.width, frame.height) == (64, 64)

    sheet = sdk.videos.download_content(created.id, variant="spritesheet")
    assert sheet.response.headers["content-type"] == "image/jpeg" and sheet.content[:2] == b"\xff\xd8"
    layout = json.loads(sheet.response.headers["x-tessera-spritesheet"])
    assert (layout["columns"], layout["rows"], layout["total_frames"]) == (4, 4, 16)
    with av.open(io.BytesIO(sheet.content)) as container:
        frame = next(container.decode(video=0))
        assert (frame.width, frame.height) == (4 * 64, 4 * 64)


def test_list_pages_with_after_in_both_orders(sdk, stack):
    page = sdk.videos.list(limit=1)
    assert page.object == "list" and len(page.data) == 1 and page.has_more and page.first_id == page.last_id
    second = sdk.videos.list(limit=1, after=page.last_id)
    assert second.data[0].id != page.data[0].id and second.data[0].created_at <= page.data[0].created_at
    newest_first = [video.id for video in sdk.videos.list(limit=2)]  # the SDK pages on with after=last_id
    assert newest_first == [job.job_id for job in stack.client.iter_jobs(page_size=3)], "the same jobs as gRPC lists"
    oldest_first = [video.id for video in sdk.videos.list(limit=2, order="asc")]
    assert oldest_first == newest_first[::-1]
    assert [v.id for v in sdk.videos.list(order="asc", limit=2, after=oldest_first[1]).data] == oldest_first[2:4]


def test_extend_edit_remix_and_image_to_video_map_onto_tessera_modes(first, sdk):
    created, _, _ = first
    clip = sdk.videos.download_content(created.id).content
    poster = sdk.videos.download_content(created.id, variant="thumbnail").content
    # openai 3.5x's extend()/edit() cannot send video={"id": ...} themselves (their upload extraction
    # insists on a file): the reference goes in extra_body, as any HTTP client would send it.
    extended = sdk.videos.extend(prompt="the red circle keeps moving", seconds="1", video=openai.omit,
                                 extra_body={"video": {"id": created.id}, "steps": 2})
    edited = sdk.videos.edit(prompt="a green circle moving to the right", video=("clip.mp4", clip, "video/mp4"),
                             extra_body={"steps": 2, "strength": 0.5})
    remixed = sdk.videos.remix(created.id, prompt="a blue circle moving to the right", extra_body={"steps": 2})
    animated = sdk.videos.create(prompt="a red circle moving to the right", seconds="1",
                                 input_reference=("first.png", poster, "image/png"), extra_body={"steps": 2})

    extended = wait(sdk, extended.id)
    assert extended.tessera["mode"] == "extend" and float(extended.seconds) > 2, "the stitched whole"
    assert extended.tessera["num_frames"] > 16 and extended.remixed_from_video_id is None
    edited = wait(sdk, edited.id)
    assert edited.tessera["mode"] == "edit" and edited.remixed_from_video_id is None and edited.size == "64x64"
    remixed = wait(sdk, remixed.id)
    assert remixed.tessera["mode"] == "edit" and remixed.remixed_from_video_id == created.id
    assert remixed.prompt == "a blue circle moving to the right"
    animated = wait(sdk, animated.id)
    assert animated.tessera["mode"] == "image_to_video" and animated.size == "64x64" and animated.seconds == "1"


def test_bad_input_and_unknown_videos_raise_the_sdks_own_errors(sdk):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.videos.create(prompt=PROMPT, size="1280x720")
    assert caught.value.status_code == 400 and caught.value.body["param"] == "size" and "256 px" in caught.value.message
    with pytest.raises(openai.BadRequestError, match="above this deployment's maximum of 60 s"):
        sdk.videos.create(prompt=PROMPT, seconds="90")
    with pytest.raises(openai.NotFoundError):
        sdk.videos.retrieve("0123456789abcdef")
    with pytest.raises(openai.BadRequestError, match="prompt is empty"):
        sdk.videos.create(prompt="   ", size="64x64")


def test_wrong_key_on_the_stack(stack):
    if not stack.config.auth.api_keys:
        pytest.skip("the session stack has no API keys (tests/serving/test_openai_http.py covers keys)")
    with openai.OpenAI(base_url=stack.http_base_url, api_key="sk-wrong", max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError):
            wrong.videos.list()


def test_delete_a_running_video_cancels_it_and_leaves_nothing(sdk, stack):
    _, tenant = key_and_tenant(stack)
    running = sdk.videos.create(prompt=PROMPT, **TINY, extra_body={"steps": 60})
    with pytest.raises(openai.ConflictError) as caught:
        sdk.videos.download_content(running.id)
    assert caught.value.body["code"] == "video_not_ready"
    deleted = sdk.videos.delete(running.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (running.id, True, "video.deleted")
    assert keys_under(stack, f"{tenant}/{running.id}/") == []
    assert not stack.store.exists(JobStore.record_key(tenant, running.id))
    with pytest.raises(openai.NotFoundError):
        sdk.videos.retrieve(running.id)


def test_delete_a_completed_video_removes_its_objects(sdk, stack, tmp_path):
    _, tenant = key_and_tenant(stack)
    video = sdk.videos.create_and_poll(prompt="a white circle moving up", size="64x64", seconds="1", extra_body={"steps": 2})
    prefix = f"{tenant}/{video.id}/"
    assert {"video.mp4", "poster.png", "manifest.json"} <= {key[len(prefix):] for key in keys_under(stack, prefix)}
    assert sdk.videos.delete(video.id).deleted
    assert keys_under(stack, prefix) == [], "video, poster, manifest and segment previews are gone"
    assert not stack.store.exists(JobStore.record_key(tenant, video.id))
    with pytest.raises(openai.NotFoundError):
        sdk.videos.download_content(video.id)
    with pytest.raises(openai.NotFoundError):
        sdk.videos.delete(video.id)
    with pytest.raises(TesseraError) as caught:
        stack.client.get(video.id)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND


def test_an_uploaded_edit_source_may_be_an_mp4_of_any_origin(sdk):
    """A clip made outside Tessera, uploaded inline, is edited like one made here."""
    import numpy as np

    frames = np.zeros((9, 64, 64, 3), np.uint8)
    frames[:, 24:40, 8:24, 0] = 255  # a red square on black
    edited = sdk.videos.edit(prompt="a red square", video=("red.mp4", encode_mp4(frames, 8, VideoEncodingConfig()), "video/mp4"),
                             extra_body={"steps": 2})
    assert wait(sdk, edited.id).tessera["num_frames"] == 9
