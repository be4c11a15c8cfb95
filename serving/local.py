"""Tessera in one process: the same engines, job manager and storage, with no Ray Serve.

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
from tessera.serving.jobs.manager import JobManager
from tessera.serving.jobs.records import JobRecord, JobState
from tessera.serving.jobs.spec import GenerationRequest
from tessera.serving.prompt_expander import PromptExpanderEngine
from tessera.serving.stages import LocalStages
from tessera.serving.storage import ObjectStore


class LocalTessera:
    """A :class:`JobManager` over :class:`LocalStages`; call :meth:`start` inside an event loop."""

    def __init__(self, config: TesseraConfig):
        d = config.deployments
        self.config = config
        self.store = ObjectStore(config.storage)
        stages = LocalStages(
            PromptExpanderEngine(config.model, config.expansion, d.prompt_expander.threads),
            DenoiserEngine(config.model, d.denoiser.threads),
            DecoderEngine(config.model, config.video, d.decoder.threads),
        )
        self.manager = JobManager(config, load_model(config.model, parts=()), stages, self.store)

    async def start(self) -> None:
        await asyncio.to_thread(self.store.ensure_bucket)
        await self.manager.start()

    async def stop(self) -> None:
        await self.manager.stop()

    async def render(self, request: GenerationRequest, tenant: str = "local") -> tuple[JobRecord, float]:
        """Submit a job and wait for it; returns the final record and the wall seconds."""
        started = time.monotonic()
        record = await self.manager.submit(tenant, request)
        async for event in self.manager.watch(tenant, record.job_id):
            if event.record is not None:
                record = event.record
        if record.state != JobState.SUCCEEDED:
            raise TesseraError(f"job {record.job_id} ended {record.state.value}: {record.error_message}")
        return record, time.monotonic() - started
