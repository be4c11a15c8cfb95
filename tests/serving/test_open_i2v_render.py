"""Image to video on an open family, through every real stage in process (LocalTessera): a tiny
random ``WanImageToVideoPipeline`` folder (tests/models/tiny_open.py), an inline PNG as
``from_image``. The Decoder makes the image's conditioning (the pipeline's ``prepare_latents``
and CLIP ``encode_image``) once per job; it reaches the Denoiser's step batcher by reference
(``SharedConditioning``, fetched once per replica); the MP4 in S3 decodes to the frames of
``WanImageToVideoPipeline.__call__`` from the same image and initial noise, encoded with the same
H.264 settings (tolerance: 1 level; measured 0). And the mode's checks against the card: image to
video refused by a text-to-video folder, ``image_is_last_frame`` by an image-to-video one, both
FAILED_PRECONDITION naming the model, before any model work."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from tessera.models.config import WanModelConfig
from tessera.models.interface import frame_noise
from tessera.models.registry import load_model
from tessera.serving.config import TesseraConfig
from tessera.serving.errors import FailedPreconditionError
from tessera.serving.jobs import modes
from tessera.serving.jobs.spec import GenerationRequest, MediaInput
from tessera.serving.local import LocalTessera, render_once
from tessera.serving.storage import ObjectStore
from tessera.serving.media import decode_media
from tessera.serving.video import encode_mp4, encode_png
from tests.conftest import storage_config_for
from tests.helpers import ffprobe
from tests.models.tiny_open import wan_i2v, wan_i2v_pipeline_video, wan_t2v

PROMPT = "a red circle moving to the right"
SIZE, FRAMES, STEPS, SEED = 32, 9, 2, 3
MAX_LEVELS = 1


def picture() -> np.ndarray:
    return np.random.default_rng(4).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def model_config(folder, name: str) -> WanModelConfig:
    return WanModelConfig(path=folder, name=name, device="cpu", dtype="float32", max_sequence_length=16, torch_threads=2)


def test_a_wan_image_to_video_job_renders_the_pipelines_video(s3_server, tmp_path):
    folder = wan_i2v(tmp_path / "tiny-wan2.1-i2v")
    config = TesseraConfig(storage=storage_config_for(s3_server), model=model_config(folder, "wan-i2v-tiny"))
    request = GenerationRequest(prompt=PROMPT, num_frames=FRAMES, width=SIZE, height=SIZE, steps=STEPS, seed=SEED,
                                skip_prompt_expansion=True, from_image=MediaInput(data=encode_png(picture())))

    record, _ = render_once(config, request)
    assert record.model.startswith("wan/wan-i2v-tiny@")
    store = ObjectStore(config.storage)
    path = tmp_path / "clip.mp4"
    path.write_bytes(store.get_bytes(record.video_key))
    info = ffprobe(path)
    assert (info["width"], info["height"], info["codec"], info["frames"]) == (SIZE, SIZE, "h264", FRAMES)
    manifest = json.loads(store.get_bytes(record.manifest_key))
    assert manifest["mode"] == "image_to_video"
    assert manifest["image_to_video"] == {"conditioning": "model", "last_frame": False}  # the family's own, not a kept frame

    from PIL import Image

    noise = frame_noise(SEED, 0, 3, (16, SIZE // 8, SIZE // 8))[None]  # the job's initial noise
    video = wan_i2v_pipeline_video(folder, prompt=PROMPT, negative_prompt="", max_sequence_length=16,
                                   image=Image.fromarray(picture()), height=SIZE, width=SIZE, num_frames=FRAMES,
                                   num_inference_steps=STEPS, guidance_scale=5.0, latents=noise, output_type="np")
    expected = decode_media(encode_mp4(np.round(video * 255).astype(np.uint8), 16.0, config.video))
    got = decode_media(path.read_bytes())
    difference = np.abs(got.astype(int) - expected.astype(int))
    print(f"Wan image to video in process: max {difference.max()} levels")
    assert got.shape == expected.shape and difference.max() <= MAX_LEVELS


def test_a_long_image_to_video_job_shares_its_conditioning_per_window(s3_server, tmp_path):
    """17 frames (5 latent frames) in windows of 3 overlapping by 1: each window's slice of the
    image's conditioning (its mask and latents channels; the CLIP tokens whole) goes by reference
    once, and the Denoiser fetches each slice once for all the steps."""
    from tessera.serving.config import TilingConfig

    folder = wan_i2v(tmp_path / "tiny-wan2.1-i2v")
    config = TesseraConfig(storage=storage_config_for(s3_server), model=model_config(folder, "wan-i2v-tiny"),
                           tiling=TilingConfig(window_frames=3, min_overlap_frames=1))
    request = GenerationRequest(prompt=PROMPT, num_frames=17, width=SIZE, height=SIZE, steps=STEPS, seed=SEED,
                                skip_prompt_expansion=True, from_image=MediaInput(data=encode_png(picture())))

    async def run():
        local = LocalTessera(config)
        await local.start()
        try:
            record, _ = await local.render(request)
            return record, local.engine.renderer.stages._denoiser  # the in-process DenoiserEngine
        finally:
            await local.stop()

    record, denoiser = asyncio.run(run())
    path = tmp_path / "long.mp4"
    path.write_bytes(ObjectStore(config.storage).get_bytes(record.video_key))
    assert ffprobe(path)["frames"] == 17
    assert denoiser.conditionings.fetches == 2, "one conditioning slice per window, fetched once for every step"
    assert denoiser.batcher.steps_run == 2 * STEPS


def test_the_card_decides_before_model_work(tmp_path):
    image = MediaInput(data=encode_png(picture()))
    t2v = load_model(model_config(wan_t2v(tmp_path / "t2v"), "wan-2.1-t2v"), parts=()).card
    with pytest.raises(FailedPreconditionError, match="^model wan-2.1-t2v does not support image_to_video "):
        modes.select_mode(GenerationRequest(prompt=PROMPT, from_image=image), t2v)
    i2v = load_model(model_config(wan_i2v(tmp_path / "i2v"), "wan-2.1-i2v"), parts=()).card
    assert modes.select_mode(GenerationRequest(prompt=PROMPT, from_image=image), i2v).mode.value == "image_to_video"
    with pytest.raises(FailedPreconditionError, match="^model wan-2.1-i2v does not support image_is_last_frame with image_to_video$"):
        modes.select_mode(GenerationRequest(prompt=PROMPT, from_image=image, image_is_last_frame=True), i2v)
    with pytest.raises(FailedPreconditionError, match="^model wan-2.1-i2v does not support text_to_video "):
        modes.select_mode(GenerationRequest(prompt=PROMPT), i2v)
