"""JobRunner: the deployment that runs jobs (the engine core, apart from the ingress).

A thin Serve shim around :class:`~tessera.serving.jobs.engine.JobEngine`: each replica owns the
jobs it runs through leases on their records in S3, drives their sampling loops across the
Denoiser's replicas, and publishes their outputs. Gateways only offer it new jobs; everything
else goes through the records, so replicas come and go (crash, scale-down, redeploy) without
losing a job: a stopping replica hands its jobs over, a dead one's are taken over.
"""

from __future__ import annotations

import logging
import os
import socket

from ray import serve

from tessera.models.registry import load_model
from tessera.serving.config import TesseraConfig
from tessera.serving.jobs.engine import JobEngine
from tessera.serving.logs import configure_replica_logging
from tessera.serving.metrics import MeteredStages
from tessera.serving.stages import ServeStages
from tessera.serving.storage import ObjectStore

# Seconds of Serve's graceful shutdown budget kept back from the hand-over, for the last writes.
_SHUTDOWN_MARGIN_S = 5.0


def replica_name() -> str:
    """``<serve replica id>@<host>:<pid>``: unique, and says where to look when a job is stuck."""
    try:
        replica = serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a replica (benches)
        replica = "local"
    return f"{replica}@{socket.gethostname()}:{os.getpid()}"


@serve.deployment
class JobRunner:
    async def __init__(self, config: TesseraConfig, expander, denoiser, decoder):
        logging.basicConfig(level=logging.INFO)
        configure_replica_logging()
        self.config = config
        model = load_model(config.model, parts=())  # card and schedule only: no weights here
        stages = MeteredStages(ServeStages(expander, denoiser, decoder, retry_budget_s=config.jobs.stage_retry_s))
        self.engine = JobEngine(config, model, stages, ObjectStore(config.storage), replica_name())
        await self.engine.start()

    async def offer(self, tenant: str, job_id: str) -> bool:
        return await self.engine.offer(tenant, job_id)

    async def load(self) -> dict:
        """What this replica holds and has done (tests, status)."""
        return {**self.engine.load(), "pid": os.getpid()}

    async def __del__(self):
        budget = self.config.deployments.job_runner.graceful_shutdown_timeout_s
        await self.engine.drain(timeout_s=max(0.0, budget - _SHUTDOWN_MARGIN_S))
