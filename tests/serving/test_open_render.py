"""A job on an open family (a tiny random Wan 2.1 diffusers folder, models/open/wan.py) runs
through every real stage in process: prompt encoding, the Denoiser, decode tiles, H.264, S3 and
the manifest, and the MP4 is the requested size and length. (Faithfulness to the diffusers
pipeline is tests/models/test_open_wan.py; through the Denoiser it also needs the solver state
carried between steps, see DenoiseWork.solver_state.)"""

from __future__ import annotations

import asyncio
import json

from tessera.models.config import WanModelConfig
from tessera.serving.config import TesseraConfig
from tessera.serving.jobs.spec import GenerationRequest
from tessera.serving.local import LocalTessera
from tests.conftest import storage_config_for
from tests.helpers import ffprobe
from tests.models.tiny_open import wan_t2v


def test_a_wan_job_renders_a_real_video(s3_server, tmp_path):
    folder = wan_t2v(tmp_path / "tiny-wan2.1")
    model = WanModelConfig(path=folder, name="wan-tiny", device="cpu", dtype="float32", max_sequence_length=16, torch_threads=2)
    config = TesseraConfig(storage=storage_config_for(s3_server), model=model)
    request = GenerationRequest(prompt="a red circle moving to the right", num_frames=9, width=32, height=32, steps=2, seed=3,
                                skip_prompt_expansion=True)

    async def run():
        local = LocalTessera(config)
        await local.start()
        try:
            return await local.render(request)
        finally:
            await local.stop()

    record, _ = asyncio.run(run())
    assert record.model.startswith("wan/wan-tiny@")
    path = tmp_path / "clip.mp4"
    store = LocalTessera(config).store
    path.write_bytes(store.get_bytes(record.video_key))
    info = ffprobe(path)
    assert (info["width"], info["height"], info["codec"], info["fps"]) == (32, 32, "h264", 16.0)
    assert info["frames"] == 9
    manifest = json.loads(store.get_bytes(record.manifest_key))
    assert manifest["model"]["family"] == "wan"
