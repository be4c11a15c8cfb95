"""A job on an open family (a tiny random Wan 2.1 diffusers folder, models/open/wan.py) runs
through every real stage in process (prompt encoding, the Denoiser's step batcher carrying
UniPC's solver state between steps, decode tiles, H.264, S3, the manifest) and gives the video
``WanPipeline.__call__`` gives from the same initial noise: the frames the MP4 decodes to equal
those of the pipeline's frames encoded with the same H.264 settings (tolerance: 1 level; measured 0)."""

from __future__ import annotations

import json

import numpy as np
import torch

from tessera.models.interface import frame_noise
from tessera.serving.media import decode_media
from tessera.serving.video import encode_mp4
from tessera.models.config import WanModelConfig
from tessera.serving.config import TesseraConfig
from tessera.serving.jobs.spec import GenerationRequest
from tessera.serving.local import render_once
from tessera.serving.storage import ObjectStore
from tests.conftest import storage_config_for
from tests.helpers import ffprobe
from tests.models.tiny_open import wan_t2v


def test_a_wan_job_renders_a_real_video(s3_server, tmp_path):
    folder = wan_t2v(tmp_path / "tiny-wan2.1")
    model = WanModelConfig(path=folder, name="wan-tiny", device="cpu", dtype="float32", max_sequence_length=16, torch_threads=2)
    config = TesseraConfig(storage=storage_config_for(s3_server), model=model)
    request = GenerationRequest(prompt="a red circle moving to the right", num_frames=9, width=32, height=32, steps=2, seed=3,
                                skip_prompt_expansion=True)

    record, _ = render_once(config, request)
    assert record.model.startswith("wan/wan-tiny@")
    path = tmp_path / "clip.mp4"
    store = ObjectStore(config.storage)
    path.write_bytes(store.get_bytes(record.video_key))
    info = ffprobe(path)
    assert (info["width"], info["height"], info["codec"], info["fps"]) == (32, 32, "h264", 16.0)
    assert info["frames"] == 9
    manifest = json.loads(store.get_bytes(record.manifest_key))
    assert manifest["model"]["family"] == "wan"

    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    noise = frame_noise(3, 0, 3, (16, 4, 4))[None]  # the job's initial noise: seed 3, 3 latent frames of 4x4
    video = pipe(prompt=request.prompt, negative_prompt="", height=32, width=32, num_frames=9, num_inference_steps=2,
                 guidance_scale=5.0, latents=noise, max_sequence_length=16, output_type="np").frames[0]
    expected = decode_media(encode_mp4(np.round(video * 255).astype(np.uint8), 16.0, config.video))
    got = decode_media(path.read_bytes())
    assert got.shape == expected.shape and np.abs(got.astype(int) - expected.astype(int)).max() <= 1
