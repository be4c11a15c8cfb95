"""Image to video on an open family through the real Serve app over gRPC: the session's stack
(tests/open_models/conftest.py) redeployed, for this module, over a tiny random
``WanImageToVideoPipeline`` folder (Wan 2.1 I2V: a CLIP image encoder configured locally), then
put back. A clip from an inline PNG (``from_image``) rendered with ``TesseraClient.generate``: the
Decoder replica makes the image's conditioning (the pipeline's ``prepare_latents`` and CLIP
``encode_image``) once, the Denoiser's step batcher takes it by reference with every step; the
MP4 in S3 decodes to the frames of ``WanImageToVideoPipeline.__call__`` from the same image and
initial noise, encoded with the same H.264 settings. A text-to-video request to this folder is
refused by the gateway with FAILED_PRECONDITION (its transformer needs the image's channels).

Faithfulness tolerance: ``MAX_LEVELS`` = 1 uint8 level on every pixel (as tests/open_models/
test_open_grpc.py, whose docstring says why there is one); measured: 0.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch

from tessera.models.config import WanModelConfig
from tessera.models.interface import frame_noise
from tessera.serving.client import TesseraError
from tessera.serving.media import decode_media
from tessera.serving.video import encode_mp4, encode_png
from tests.helpers import ffprobe
from tests.models.tiny_open import wan_i2v, wan_i2v_pipeline_video
from tests.open_models.conftest import TEXT_LENGTH, model_section

pytestmark = pytest.mark.open_models

PROMPT, NEGATIVE = "a red circle moving to the right", "blue square"
SIZE, FRAMES, STEPS, SEED = 32, 9, 3, 13
MAX_LEVELS = 1
MODEL_NAME = "wan-i2v-tiny"


@pytest.fixture(scope="module")
def i2v_stack(open_stack, tmp_path_factory):
    """The session's stack serving a Wan 2.1 I2V folder for this module's tests, then the Wan 2.1 T2V one again."""
    folder = wan_i2v(tmp_path_factory.mktemp("open-i2v") / "tiny-wan2.1-i2v")
    runner, served = open_stack.runner, open_stack.runner.config
    section = {**model_section(folder), "name": MODEL_NAME}
    runner.config = served.model_copy(update={"model": WanModelConfig(**section)})
    try:
        runner.restart_app()
        open_stack.client.wait_until_ready(timeout_s=300)
        yield open_stack, folder
    finally:
        runner.config = served
        runner.restart_app()
        open_stack.client.wait_until_ready(timeout_s=300)


def picture() -> np.ndarray:
    return np.random.default_rng(8).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def pipeline_frames(folder, guidance: float) -> np.ndarray:
    from PIL import Image

    torch.set_num_threads(2)
    noise = frame_noise(SEED, 0, 3, (16, SIZE // 8, SIZE // 8))[None]  # what the job runner draws for seed SEED
    video = wan_i2v_pipeline_video(folder, prompt=PROMPT, negative_prompt=NEGATIVE, max_sequence_length=TEXT_LENGTH,
                                   image=Image.fromarray(picture()), height=SIZE, width=SIZE, num_frames=FRAMES,
                                   num_inference_steps=STEPS, guidance_scale=guidance, latents=noise, output_type="np")
    return np.round(video * 255).astype(np.uint8)


def test_a_wan_image_to_video_clip_over_grpc_is_the_pipelines_video(i2v_stack, tmp_path):
    stack, folder = i2v_stack
    job = stack.client.generate(PROMPT, negative_prompt=NEGATIVE, from_image=encode_png(picture()), num_frames=FRAMES,
                                width=SIZE, height=SIZE, steps=STEPS, seed=SEED, skip_prompt_expansion=True, timeout_s=300)
    assert job.model.startswith(f"wan/{MODEL_NAME}@")
    path = stack.client.download(job, tmp_path / "clip.mp4")
    info = ffprobe(path)
    assert (info["codec"], info["width"], info["height"], info["frames"]) == ("h264", SIZE, SIZE, FRAMES)

    expected = decode_media(encode_mp4(pipeline_frames(folder, 5.0), 16.0, stack.config.video))
    got = decode_media(path.read_bytes())
    assert got.shape == expected.shape == (FRAMES, SIZE, SIZE, 3)
    difference = np.abs(got.astype(int) - expected.astype(int))
    print(f"image to video over gRPC: max {difference.max()} levels, mean {difference.mean():.4f}")
    assert difference.max() <= MAX_LEVELS


def test_text_to_video_on_an_image_to_video_folder_is_refused(i2v_stack):
    stack, _ = i2v_stack
    with pytest.raises(TesseraError) as caught:
        stack.client.generate(PROMPT, num_frames=FRAMES, width=SIZE, height=SIZE, steps=STEPS, timeout_s=60)
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.message.startswith(f"model {MODEL_NAME} does not support text_to_video "), caught.value.message
    with pytest.raises(TesseraError) as caught:
        stack.client.generate(PROMPT, from_image=encode_png(picture()), image_is_last_frame=True, num_frames=FRAMES,
                              width=SIZE, height=SIZE, steps=STEPS, timeout_s=60)
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.message == f"model {MODEL_NAME} does not support image_is_last_frame with image_to_video"
