"""One real stack per test session over an open family: a tiny random Wan 2.1 diffusers folder
(tests/models/tiny_open.py) built here and served from it by the embedded S3 server, a local Ray
instance, the Serve app and gRPC, exactly as a user's ``model: {family: wan, path: DIR}`` config
would. These tests carry the ``open_models`` marker and run in a pytest session of their own
(scripts/test.sh runs ``pytest -m open_models`` after the main session, which has its own stack
over the native tiny model: one Ray cluster per process)."""

from __future__ import annotations

import dataclasses

import pytest

from tessera.cluster.stack import StackRunner
from tessera.serving.client import TesseraClient
from tessera.serving.config import TesseraConfig
from tessera.serving.storage import ObjectStore
from tests.helpers import free_port
from tests.models.tiny_open import wan_t2v

MODEL_NAME = "wan-tiny"
TEXT_LENGTH = 16
"""Tokens the tiny UMT5 reads (the released Wan folders: 512)."""


def model_section(folder) -> dict:
    return {"family": "wan", "path": str(folder), "name": MODEL_NAME, "device": "cpu", "dtype": "float32",
            "max_sequence_length": TEXT_LENGTH}


@dataclasses.dataclass
class OpenStack:
    runner: StackRunner
    config: TesseraConfig
    client: TesseraClient
    store: ObjectStore
    folder: object
    """The tiny Wan 2.1 diffusers folder the stack serves."""


@pytest.fixture(scope="session")
def open_stack(tmp_path_factory) -> OpenStack:
    folder = wan_t2v(tmp_path_factory.mktemp("open-models") / "tiny-wan2.1")
    document = {
        "model": model_section(folder),
        # every step's progress streamed, records read often: a job of a few steps ends promptly
        "jobs": {"step_progress_s": 0, "progress_flush_s": 0.1, "watch_poll_s": 0.1},
    }
    grpc_port = free_port()
    http_port = free_port(avoid={grpc_port})
    taken = {grpc_port, http_port}
    if "metrics" in TesseraConfig.model_fields:  # Ray's metrics agent, on a free port too
        document["metrics"] = {"export_port": free_port(avoid=taken)}
        taken.add(document["metrics"]["export_port"])
    runner = StackRunner(tmp_path_factory.mktemp("open-stack"), config=document, grpc_port=grpc_port, http_port=http_port,
                         s3_port=free_port(avoid=taken), num_cpus=2)
    try:
        config = runner.start()
        client = TesseraClient(f"127.0.0.1:{config.grpc.port}", home=runner.home)
        client.wait_until_ready(timeout_s=300)
        yield OpenStack(runner, config, client, ObjectStore(config.storage), folder)
        client.close()
    finally:
        runner.stop()
