"""Fixtures shared across test folders."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, settings

from tessera.cluster.s3_server import EmbeddedS3Config, EmbeddedS3Server
from tessera.serving.storage import ObjectStore, StorageConfig

# --- property tests: a few hundred cases by default, thousands with --hypothesis-profile=thorough ---
_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("ci", max_examples=300, deadline=None, suppress_health_check=_HEALTH)
settings.register_profile("thorough", max_examples=3000, deadline=None, suppress_health_check=_HEALTH)
settings.load_profile("ci")

# --- storage: one real embedded S3 server per test session ---------------------------------------

TEST_BUCKET = "tessera-test"


def storage_config_for(server: EmbeddedS3Server, **overrides) -> StorageConfig:
    """A StorageConfig that reaches ``server`` with its credentials; ``overrides`` replace fields."""
    fields = {
        "endpoint_url": server.endpoint_url,
        "bucket": server.bucket,
        "access_key_id": server.credentials.access_key_id,
        "secret_access_key": server.credentials.secret_access_key,
        "max_attempts": 2,
        "connect_timeout_s": 2.0,
        "read_timeout_s": 30.0,
    }
    fields.update(overrides)
    return StorageConfig(**fields)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[EmbeddedS3Server]:
    """The session's embedded S3 server (owned: it stops with the session, or with pytest)."""
    config = EmbeddedS3Config(data_dir=tmp_path_factory.mktemp("s3-session"), bucket=TEST_BUCKET)
    with EmbeddedS3Server(config) as server:
        yield server


@pytest.fixture(scope="session")
def object_store(s3_server) -> ObjectStore:
    return ObjectStore(storage_config_for(s3_server))


@pytest.fixture
def make_store(s3_server) -> Callable[..., ObjectStore]:
    """Builds an ObjectStore on the session server with some config fields replaced."""
    return lambda **overrides: ObjectStore(storage_config_for(s3_server, **overrides))


@pytest.fixture
def key_prefix() -> str:
    """A fresh key prefix, so tests sharing the session bucket never see each other's objects."""
    return f"t-{uuid.uuid4().hex[:12]}/"
