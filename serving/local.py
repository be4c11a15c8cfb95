"""Tessera in one process: the same engines, job engine, job records and storage, with no Ray Serve.

For benchmarks of what Serve and gRPC cost (the stage calls are identical, only the hops go)
and for scripts that render without a cluster. Production always runs the Serve app.
"""

from __future__ import annotations

import asyncio
import time

from tessera.models.registry import load_model
from tessera.serving.config import TesseraConfig
from tessera.serving.decoder import DecoderEngine
from tessera.serving.denoiser import DenoiserEngine
from tessera.serving.errors import TesseraError
from tessera.serving.jobs.engine import JobEngine
from tessera.serving.jobs.records import JobRecord, JobState
from tessera.serving.jobs.submission import JobFront
from tessera.serving.jobs.spec import GenerationRequest
from tessera.serving.prompt_expander import PromptExpanderEngine
from tessera.serving.stages import LocalStages
from tessera.serving.storage import ObjectStore


class LocalTessera:
    """A :class:`JobEngine` over :class:`LocalStages` and a :class:`JobFront` to submit to it;
    call :meth:`start` inside an event loop."""

    def __init__(self, config: TesseraConfig):
        d = config.deployments
        self.config = config
        self.store = ObjectStore(config.storage)
        stages = LocalStages(
            PromptExpanderEngine(config.model, config.expansion, d.prompt_expander.threads),
            DenoiserEngine(config.model, d.denoiser.threads, config.batching, config.jobs.interactive_min_priority),
            DecoderEngine(config.model, config.video, d.decoder.threads),
        )
        model = load_model(config.model, parts=())
        # The engine and the front get a store (an S3 client) each, as a JobRunner and a Gateway do.
        self.engine_store = ObjectStore(config.storage)
        self.engine = JobEngine(config, model, stages, self.engine_store, replica_id="local")
        self.front = JobFront(config, model, self.store, offer=self.engine.offer, offer_attempts=1)

    async def start(self) -> None:
        await asyncio.to_thread(self.store.ensure_bucket)
        await self.engine.start()

    async def stop(self) -> None:
        await self.engine.stop()

    async def render(self, request: GenerationRequest, tenant: str = "local") -> tuple[JobRecord, float]:
        """Submit a job and wait for it; returns the final record and the wall seconds."""
        started = time.monotonic()
        record = await self.front.submit(tenant, request)
        async for event in self.front.watch(tenant, record.job_id):
            if event.record is not None:
                record = event.record
        if record.state != JobState.SUCCEEDED:
            raise TesseraError(f"job {record.job_id} ended {record.state.value}: {record.error_message}")
        return record, time.monotonic() - started


def render_once(config: TesseraConfig, request: GenerationRequest, tenant: str = "local") -> tuple[JobRecord, float]:
    """Start a :class:`LocalTessera`, render one job, stop it (from code that has no event loop)."""

    async def run() -> tuple[JobRecord, float]:
        local = LocalTessera(config)
        await local.start()
        try:
            return await local.render(request, tenant)
        finally:
            await local.stop()

    return asyncio.run(run())
