"""The Denoiser's step batcher with the real tiny model, in process: windows of different jobs
share forwards at their own noise levels, each result equals the window run alone, interactive
steps go ahead of batch steps, and one bad window does not fail its batch mates."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import torch

from tessera.models import NativeModelConfig
from tessera.serving.config import ExpansionConfig, StepBatchingConfig
from tessera.serving.denoiser import DenoiserEngine
from tessera.serving.prompt_expander import PromptExpanderEngine
from tessera.serving.stages import SharedText, StepWork

MODEL = NativeModelConfig(torch_threads=1)
TOLERANCE = 1e-4
"""Largest difference a window's latents may show batched vs alone: float32 batched matmuls
sum in a different order (measured ~1e-6 here)."""


@pytest.fixture(scope="module")
def texts():
    expander = PromptExpanderEngine(MODEL, ExpansionConfig(), 1)

    async def share(prompt: str) -> SharedText:
        conditioning = await expander.condition(prompt, "", False)
        pair = (conditioning.text, conditioning.negative_text)
        return SharedText(SharedText.content_key(*pair), pair)

    return asyncio.run(share("a red circle moving right")), asyncio.run(share("a blue square moving up"))


def window(text: SharedText, seed: int, sigmas, priority: int = 0, guidance: float = 4.0) -> StepWork:
    latents = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(seed))  # (C, T, H, W): 64x64, 9 frames
    return StepWork(latents=latents, sigmas=tuple(sigmas), text=text, guidance_scale=guidance, fps=8.0, priority=priority)


def alone(engine: DenoiserEngine, work: StepWork) -> torch.Tensor:
    """The window through its noise levels one step at a time, each step a forward of its own."""
    resolved = work.resolve(*work.text.ref)
    latents = resolved.latents
    for index in range(len(resolved.sigmas) - 1):
        item = dataclasses.replace(resolved, latents=latents, sigmas=resolved.sigmas[index : index + 2])
        [latents] = engine.model.step([item])
    return latents


def test_two_jobs_at_different_noise_levels_share_forwards_and_match_their_unbatched_output(texts):
    engine = DenoiserEngine(MODEL, 1, StepBatchingConfig(max_batch_items=8, max_wait_s=0.05))
    sigmas = engine.model.sigmas(8)
    first = window(texts[0], 1, sigmas[:7], guidance=4.0)  # a job at the start of its schedule
    second = window(texts[1], 2, sigmas[2:], guidance=2.5)  # another, two steps further on, other guidance

    async def both():
        return await asyncio.gather(engine.advance_batch([first]), engine.advance_batch([second]))

    [[out_first], [out_second]] = asyncio.run(both())
    forwards = engine.batch_stats()["forwards"]
    shared = [f for f in forwards if f["jobs"] == 2]
    assert len(shared) == 6 and all(f["size"] == 2 for f in shared), forwards
    out_first, out_second = out_first.latents, out_second.latents
    assert (out_first - alone(engine, first)).abs().max() < TOLERANCE
    assert (out_second - alone(engine, second)).abs().max() < TOLERANCE
    assert (out_first - first.latents).abs().mean() > 0.05, "the steps must move the latents"


def test_windows_of_one_job_and_of_another_fill_the_same_batches(texts):
    engine = DenoiserEngine(MODEL, 1, StepBatchingConfig(max_batch_items=3, max_wait_s=0.05))
    sigmas = tuple(engine.model.sigmas(4))
    long_job = [window(texts[0], seed, sigmas) for seed in range(3)]
    short_job = window(texts[1], 9, sigmas)

    async def run():
        return await asyncio.gather(engine.advance_batch(long_job), engine.advance_batch([short_job]))

    asyncio.run(run())
    forwards = engine.batch_stats()["forwards"]
    assert max(f["size"] for f in forwards) == 3, "capped by max_batch_items"
    assert any(f["jobs"] == 2 for f in forwards), "the short job rode along with the long one's windows"
    assert sum(f["size"] for f in forwards) == 4 * 4


def test_interactive_steps_go_ahead_of_batch_steps_and_batch_work_still_finishes(texts):
    engine = DenoiserEngine(MODEL, 1, StepBatchingConfig(max_batch_items=1, max_wait_s=0.0, aging_s=60.0))
    sigmas = tuple(engine.model.sigmas(12))
    background = window(texts[0], 3, sigmas, priority=-5)
    interactive = window(texts[1], 4, tuple(engine.model.sigmas(4)), priority=0)
    order: list[str] = []

    async def run():
        async def batch():
            await engine.advance_batch([background])
            order.append("batch")

        async def foreground():
            while engine.batcher.steps_run < 3:  # arrive while the batch window is mid-way
                await asyncio.sleep(0.001)
            await engine.advance_batch([interactive])
            order.append("interactive")

        await asyncio.gather(batch(), foreground())

    asyncio.run(run())
    priorities = [f["priorities"][0] for f in engine.batch_stats()["forwards"]]
    first_interactive = priorities.index(0)
    assert priorities[first_interactive : first_interactive + 4] == [0, 0, 0, 0], priorities
    assert order == ["interactive", "batch"]
    assert priorities.count(-5) == 12


def test_a_bad_window_fails_alone(texts):
    engine = DenoiserEngine(MODEL, 1, StepBatchingConfig(max_batch_items=4, max_wait_s=0.05))
    sigmas = tuple(engine.model.sigmas(2))
    good = window(texts[0], 5, sigmas)
    bad = dataclasses.replace(window(texts[1], 6, sigmas), latents=torch.zeros(8, 3, 8, 7))  # not a patch multiple

    async def run():
        return await asyncio.gather(engine.advance_batch([good]), engine.advance_batch([bad]), return_exceptions=True)

    out_good, out_bad = asyncio.run(run())
    assert isinstance(out_bad, ValueError) and "patch" in str(out_bad)
    assert isinstance(out_good, list) and (out_good[0].latents - alone(engine, good)).abs().max() < TOLERANCE


def test_a_cancelled_window_leaves_nothing_pending(texts):
    engine = DenoiserEngine(MODEL, 1, StepBatchingConfig(max_batch_items=1, max_wait_s=0.0))
    sigmas = tuple(engine.model.sigmas(20))

    async def run():
        task = asyncio.ensure_future(engine.advance_batch([window(texts[0], 7, sigmas)]))
        while engine.batcher.steps_run < 2:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)
        return engine.batcher.steps_run

    ran = asyncio.run(run())
    assert engine.batcher.pending == 0
    assert ran < 20
