"""A job on the simulated accelerator runs every real stage in process (fusion of windows, decode
tiles, H.264, S3 multipart, manifest): the outputs are a playable MP4 of the requested size."""

from __future__ import annotations

import json

from tessera.models import SimModelConfig
from tessera.serving.config import TesseraConfig
from tessera.serving.local import render_once
from tessera.serving.storage import ObjectStore
from tessera.serving.jobs.spec import GenerationRequest
from tests.conftest import storage_config_for
from tests.helpers import ffprobe


def test_a_sim_job_renders_a_real_video(s3_server, tmp_path):
    model = SimModelConfig(time_scale=0.001, torch_threads=1)
    config = TesseraConfig(storage=storage_config_for(s3_server), model=model,
                           limits={"max_duration_s": 300})
    # 37 latent frames: more than one 21-frame window (fused), several decode tiles.
    request = GenerationRequest(prompt="a red circle moving right", duration_s=9, width=128, height=64, steps=4, seed=3)

    record, _ = render_once(config, request)
    assert record.model.startswith("sim/wan2.1-1.3b-480p@sim-")  # never mistaken for the real Wan
    path = tmp_path / "clip.mp4"
    store = ObjectStore(config.storage)
    path.write_bytes(store.get_bytes(record.video_key))
    info = ffprobe(path)
    assert (info["width"], info["height"], info["codec"], info["fps"]) == (128, 64, "h264", 16.0)
    assert info["frames"] == 9 * 16
    manifest = json.loads(store.get_bytes(record.manifest_key))
    assert "sim" in json.dumps(manifest)
