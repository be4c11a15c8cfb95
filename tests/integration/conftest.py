"""One real stack per test session: the embedded S3 server, a local Ray instance, the Serve
app with the shipped tiny model, and a gRPC client over a socket."""

from __future__ import annotations

import dataclasses

import pytest

from tessera.cluster.stack import StackRunner
from tessera.serving.client import TesseraClient
from tessera.serving.config import TesseraConfig
from tessera.serving.storage import ObjectStore
from tests.helpers import free_port


@dataclasses.dataclass
class Stack:
    runner: StackRunner
    config: TesseraConfig
    client: TesseraClient
    store: ObjectStore

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.config.grpc.port}"


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Stack:
    # Every sampler step streamed back (the default coalesces steps faster than 0.2 s), so the
    # tests see the streaming itself, step by step.
    grpc_port = free_port()
    runner = StackRunner(tmp_path_factory.mktemp("stack"), grpc_port=grpc_port, s3_port=free_port(avoid={grpc_port}), num_cpus=2,
                         config={"jobs": {"step_progress_s": 0}})
    try:
        config = runner.start()
        client = TesseraClient(f"127.0.0.1:{config.grpc.port}")
        client.wait_until_ready(timeout_s=300)
        yield Stack(runner, config, client, ObjectStore(config.storage))
        client.close()
    finally:
        runner.stop()
