"""Step batching across requests through the real stack (real tiny model, Serve, gRPC, S3):
two jobs running at once share Denoiser forwards, and each one's video is the video it gets
when it runs alone."""

from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest
from ray import serve

from tessera.serving.video import decode_frames

pytestmark = pytest.mark.integration

MEAN_TOLERANCE = 0.5
"""Largest mean absolute difference (of 255 levels) between a job's frames batched and alone:
batched float32 forwards differ from single ones by ~1e-6 in the latents, which may flip a few
pixels by one level and then H.264's decisions."""
MAX_TOLERANCE = 24


def denoiser_stats(stack) -> dict:
    return serve.get_deployment_handle("Denoiser", app_name=stack.config.app_name).batch_stats.remote().result()


def new_forwards(before: dict, after: dict) -> list[dict]:
    count = after["forwards_run"] - before["forwards_run"]
    return after["forwards"][-count:] if count else []


JOBS = {
    "red": dict(prompt="a red circle moving to the right", seed=21),
    "blue": dict(prompt="a blue square moving up", seed=22),
}
COMMON = dict(duration_s=2, width=64, height=64, fps=8, steps=40, skip_prompt_expansion=True)


def frames(stack, job) -> np.ndarray:
    key = job.video_uri.split("/", 3)[3]
    return decode_frames(stack.store.get_bytes(key)).astype(np.int16)


def test_two_concurrent_jobs_share_forwards_and_match_their_videos_alone(stack):
    alone = {}
    for name, fields in JOBS.items():
        before = denoiser_stats(stack)
        job = stack.client.generate(**fields, **COMMON, idempotency_key=f"alone-{name}")
        forwards = new_forwards(before, denoiser_stats(stack))
        assert forwards and all(f["jobs"] == 1 for f in forwards), f"alone means alone: {forwards}"
        alone[name] = frames(stack, job)

    before = denoiser_stats(stack)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        running = {name: pool.submit(stack.client.generate, **fields, **COMMON, idempotency_key=f"together-{name}")
                   for name, fields in JOBS.items()}
        together = {name: frames(stack, future.result()) for name, future in running.items()}
    forwards = new_forwards(before, denoiser_stats(stack))
    shared = [f for f in forwards if f["jobs"] == 2]
    assert shared, f"no forward held both jobs: {forwards}"
    assert sum(f["size"] for f in forwards) >= 2 * COMMON["steps"], "every step of both jobs ran"
    for name in JOBS:
        difference = np.abs(together[name] - alone[name])
        assert difference.mean() <= MEAN_TOLERANCE and difference.max() <= MAX_TOLERANCE, (name, difference.mean(), difference.max())
    assert np.abs(together["red"] - together["blue"]).mean() > 10, "two different videos"
