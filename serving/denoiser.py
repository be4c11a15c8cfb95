"""Denoiser stage: a stateless step server.

A call carries one time window of one video (latents, noise levels, a reference to the job's
text conditioning, guidance, given frames) and streams back progress as sampler steps finish (at most one update per
``report_every_s``, since each streamed item is a hop of its own), then the advanced latents;
or, for long videos, several windows of one step group at once (``advance_batch``: one reply,
one batched forward pass per step, so the hop is paid once for the lot).
Nothing a job needs stays on the replica between calls (the text conditioning is cached by
content key only to save the transfer), so any replica can take any window of any job at any step: long videos spread over all replicas, and a new replica helps in-flight jobs at once.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator

import torch
from ray import serve

from tessera.models.config import ModelConfig
from tessera.models.interface import DenoiseWork
from tessera.models.registry import load_model
from tessera.serving.stages import DenoiseUpdate, ModelThread, StepWork, TextCache


class DenoiserEngine:
    def __init__(self, model_config: ModelConfig, threads: int | None = None):
        self._thread = ModelThread(threads)
        self.model = load_model(model_config, parts={"denoiser"})
        self.texts = TextCache()

    async def _resolve(self, work: StepWork) -> DenoiseWork:
        return work.resolve(*await self.texts.get(work.text))

    async def advance(self, step_work: StepWork, report_every_s: float = 0.0) -> AsyncIterator[DenoiseUpdate]:
        """Steps done so far after each sampler step, or after the first step that ends at least
        ``report_every_s`` after the previous update (0: every step); the last update carries the latents."""
        work = await self._resolve(step_work)
        steps = len(work.sigmas) - 1
        if steps < 1:
            raise ValueError(f"a work item needs at least two noise levels, got {work.sigmas}")
        if report_every_s < 0:
            raise ValueError(f"report_every_s must be >= 0, got {report_every_s}")
        latents = work.latents
        reported = time.monotonic()
        for index in range(steps):
            item = dataclasses.replace(work, latents=latents, sigmas=tuple(work.sigmas[index : index + 2]))
            [latents] = await self._thread.run(self.model.step, [item])
            last = index == steps - 1
            if last or time.monotonic() - reported >= report_every_s:
                reported = time.monotonic()
                yield DenoiseUpdate(steps_done=index + 1, latents=latents if last else None)

    async def advance_batch(self, step_works: list[StepWork]) -> list[torch.Tensor]:
        if not step_works:
            raise ValueError("advance_batch needs at least one work item")
        works = [await self._resolve(work) for work in step_works]
        sigmas = works[0].sigmas
        if len(sigmas) < 2 or any(work.sigmas != sigmas for work in works):
            raise ValueError("every window of a batch must share the same noise levels (at least two)")
        latents = [work.latents for work in works]
        for index in range(len(sigmas) - 1):
            items = [
                dataclasses.replace(work, latents=current, sigmas=tuple(sigmas[index : index + 2]))
                for work, current in zip(works, latents, strict=True)
            ]
            latents = await self._thread.run(self.model.step, items)
        return latents


@serve.deployment
class Denoiser:
    """Serve shim around :class:`DenoiserEngine`."""

    def __init__(self, model_config: ModelConfig, threads: int | None = None):
        self.engine = DenoiserEngine(model_config, threads)

    async def advance(self, work: StepWork, report_every_s: float = 0.0) -> AsyncIterator[DenoiseUpdate]:
        async for update in self.engine.advance(work, report_every_s):
            yield update

    async def advance_batch(self, works: list[StepWork]) -> list[torch.Tensor]:
        return await self.engine.advance_batch(works)
