"""An open family through the real Serve app over gRPC: a tiny random Wan 2.1 diffusers folder
served by the embedded stack (tests/open_models/conftest.py). A clip rendered with
``TesseraClient.generate`` (prompt encoding on the PromptExpander replica, the Denoiser's step
batcher carrying UniPC's solver state between step calls, the Decoder's VAE and H.264, the MP4
in S3) decodes to the frames of ``WanPipeline.__call__`` from the same initial noise, encoded
with the same H.264 settings; and a mode the family's card does not list is refused by the
gateway with FAILED_PRECONDITION before any model work.

Faithfulness tolerance: ``MAX_LEVELS`` = 1 uint8 level on every pixel of every frame (measured:
0). The latents equal the pipeline's bit for bit in process (tests/models/test_open_wan.py), the
frames too (tests/serving/test_open_render.py); the level allows for CPU BLAS rounding differently
in another process (a different alignment of the same weights: ~2e-6 on the latents), which can
move a pixel by one level and then H.264's decisions by as much.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch
from ray import serve

from tessera.models.interface import frame_noise
from tessera.serving.client import TesseraError
from tessera.serving.media import decode_media
from tessera.serving.video import encode_mp4, encode_png
from tests.helpers import ffprobe
from tests.open_models.conftest import MODEL_NAME, TEXT_LENGTH

pytestmark = pytest.mark.open_models

PROMPT, NEGATIVE = "a red circle moving to the right", "blue square"
SIZE, FRAMES, STEPS, SEED = 32, 9, 3, 11  # 9 frames = 4k+1: 3 latent frames of 4x4
MAX_LEVELS = 1


def denoiser_stats(open_stack) -> dict:
    return serve.get_deployment_handle("Denoiser", app_name=open_stack.config.app_name).batch_stats.remote().result()


def pipeline_frames(folder, guidance: float) -> np.ndarray:
    """``WanPipeline.__call__`` from the job's initial noise, as uint8 frames (T, H, W, 3)."""
    from diffusers import WanPipeline

    torch.set_num_threads(2)
    pipe = WanPipeline.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    noise = frame_noise(SEED, 0, 3, (16, SIZE // 8, SIZE // 8))[None]  # what the job runner draws for seed SEED
    video = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, height=SIZE, width=SIZE, num_frames=FRAMES,
                 num_inference_steps=STEPS, guidance_scale=guidance, latents=noise, max_sequence_length=TEXT_LENGTH,
                 output_type="np").frames[0]
    return np.round(video * 255).astype(np.uint8)


def test_a_wan_clip_over_grpc_is_the_pipelines_video(open_stack, tmp_path):
    before = denoiser_stats(open_stack)
    job = open_stack.client.generate(PROMPT, negative_prompt=NEGATIVE, num_frames=FRAMES, width=SIZE, height=SIZE,
                                     steps=STEPS, seed=SEED, skip_prompt_expansion=True, timeout_s=300)
    assert job.model.startswith(f"wan/{MODEL_NAME}@") and job.expanded_prompt == PROMPT and job.seed == SEED
    assert job.video_uri.startswith(f"s3://{open_stack.config.storage.bucket}/")
    after = denoiser_stats(open_stack)
    assert after["steps_run"] - before["steps_run"] == STEPS, "one step call per sampler step, on the Denoiser"

    path = open_stack.client.download(job, tmp_path / "clip.mp4")  # the presigned S3 URL the job carries
    assert path.read_bytes() == open_stack.store.get_bytes(job.video_uri.split("/", 3)[3])
    info = ffprobe(path)
    assert (info["codec"], info["width"], info["height"], info["frames"], info["fps"]) == ("h264", SIZE, SIZE, FRAMES, 16.0)

    guidance = 5.0  # WanPipeline.__call__'s default, which the card gives a request that leaves it unset
    expected = decode_media(encode_mp4(pipeline_frames(open_stack.folder, guidance), 16.0, open_stack.config.video))
    got = decode_media(path.read_bytes())
    assert got.shape == expected.shape == (FRAMES, SIZE, SIZE, 3)
    difference = np.abs(got.astype(int) - expected.astype(int))
    print(f"faithfulness over gRPC: max {difference.max()} levels, mean {difference.mean():.4f}")
    assert difference.max() <= MAX_LEVELS


@pytest.mark.parametrize("fields, mode", [
    (dict(loop=True), "loop"),
    (dict(from_image=encode_png(np.zeros((SIZE, SIZE, 3), dtype=np.uint8))), "image_to_video"),  # a text-to-video folder
    (dict(shots=[{"prompt": "a red circle", "duration_s": 1}, {"prompt": "a blue square", "duration_s": 1}]), "multi_shot"),
])
def test_a_mode_the_card_does_not_list_is_refused_before_model_work(open_stack, fields, mode):
    before, jobs_before = denoiser_stats(open_stack), [job.job_id for job in open_stack.client.iter_jobs()]
    with pytest.raises(TesseraError) as caught:
        open_stack.client.generate(PROMPT, num_frames=FRAMES, width=SIZE, height=SIZE, steps=STEPS, **fields, timeout_s=60)
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.message.startswith(f"model {MODEL_NAME} does not support {mode} "), caught.value.message
    assert caught.value.job is None, "no job was created"
    assert [job.job_id for job in open_stack.client.iter_jobs()] == jobs_before
    assert denoiser_stats(open_stack)["steps_run"] == before["steps_run"]
