"""One real stack per test session: the embedded S3 server, a local Ray instance, the Serve
app with the shipped tiny model, and a gRPC client over a socket."""

from __future__ import annotations

import dataclasses

import pytest

from tessera.cluster.stack import StackRunner, http_base_url, wait_http_ready
from tessera.serving.auth import hash_api_key, new_api_key
from tessera.serving.client import TesseraClient
from tessera.serving.config import TesseraConfig
from tessera.serving.storage import ObjectStore
from tests.helpers import free_port


# Tenants besides the default one (whose key the stack makes itself, as `tessera up` does, and
# the client finds under the stack's home): another tenant, and one with quotas.
TENANT_KEYS = {"acme": new_api_key(), "capped": new_api_key()}
QUOTAS = {"capped": {"max_concurrent_jobs": 1, "max_video_seconds_per_hour": 3}}

STACK_CONFIG = {
    "auth": {"api_keys": {tenant: [hash_api_key(key)] for tenant, key in TENANT_KEYS.items()}},
    "quotas": {"tenants": QUOTAS},
    # Every sampler step streamed back (the default coalesces steps faster than 0.2 s) and the
    # job records written and read often, so the tests see progress step by step; leases short,
    # so takeovers happen within seconds.
    "jobs": {
        "step_progress_s": 0, "progress_flush_s": 0.1, "watch_poll_s": 0.1,
        "lease_ttl_s": 4.0, "heartbeat_s": 1.0, "scan_interval_s": 1.0, "claim_grace_s": 1.0,
        "checkpoint_every_groups": 2, "storage_retry_s": 12.0, "stage_retry_s": 90.0, "cancel_wait_s": 20.0,
        # small, so that test_overload can fill every job runner: 2 replicas x (2 running + 4 waiting)
        "max_running_jobs": 2, "max_queued_jobs": 4,
    },
    # Metrics reach the scrape endpoint within about a second (the default is 5 s), replica counts too.
    "metrics": {"report_interval_s": 1.0, "replicas_poll_s": 1.0},
    # Several gateways and job runners, as in production: any of them may answer or run any job.
    "deployments": {
        "gateway": {"num_cpus": 0.05, "num_replicas": 2, "max_ongoing_requests": 256, "max_queued_requests": 64},
        "job_runner": {"num_cpus": 0.05, "num_replicas": 2, "max_ongoing_requests": 64, "graceful_shutdown_timeout_s": 30},
        "prompt_expander": {"num_cpus": 0.2, "max_ongoing_requests": 16},
        "denoiser": {"num_cpus": 1.0, "max_ongoing_requests": 32},
        "decoder": {"num_cpus": 0.5, "max_ongoing_requests": 4},
    },
}


@dataclasses.dataclass
class Stack:
    runner: StackRunner
    config: TesseraConfig
    client: TesseraClient
    store: ObjectStore

    @property
    def api_key(self) -> str:
        """The default tenant's key (the stack made it, in ``runner.home/api_key``)."""
        return self.runner.api_key

    def client_for(self, tenant: str) -> TesseraClient:
        """A client of another tenant of :data:`TENANT_KEYS` (close it)."""
        return TesseraClient(self.address, api_key=TENANT_KEYS[tenant])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.config.grpc.port}"

    @property
    def http_base_url(self) -> str:
        """The OpenAI-compatible API: ``OpenAI(base_url=stack.http_base_url, api_key=...)``."""
        return http_base_url(self.config)

    @property
    def metrics_url(self) -> str:
        """Prometheus scrape endpoint (Ray's metrics agent)."""
        return self.runner.metrics_url


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Stack:
    grpc_port = free_port()
    http_port = free_port(avoid={grpc_port})
    metrics_port = free_port(avoid={grpc_port, http_port})
    runner = StackRunner(tmp_path_factory.mktemp("stack"), grpc_port=grpc_port,
                         s3_port=free_port(avoid={grpc_port, http_port, metrics_port}),
                         num_cpus=2, config=STACK_CONFIG, http_port=http_port, metrics_port=metrics_port)
    try:
        config = runner.start()
        client = TesseraClient(f"127.0.0.1:{config.grpc.port}", home=runner.home)  # finds home/api_key, as a user's would
        client.wait_until_ready(timeout_s=300)
        wait_http_ready(http_base_url(config), timeout_s=60)
        yield Stack(runner, config, client, ObjectStore(config.storage))
        client.close()
    finally:
        runner.stop()
