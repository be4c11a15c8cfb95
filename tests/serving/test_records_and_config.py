"""Job ids, request digests, config validation, API keys, and the committed gRPC stubs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tessera.serving.api import generate
from tessera.serving.auth import Authenticator, hash_api_key
from tessera.serving.config import AuthConfig, AutoscalingConfig, DeploymentConfig, TesseraConfig
from tessera.serving.errors import UnauthenticatedError
from tessera.serving.jobs.records import JOB_ID_LENGTH, is_job_id, new_job_id, request_digest
from tessera.serving.jobs.spec import GenerationRequest

STORAGE = {"endpoint_url": "http://127.0.0.1:1", "bucket": "tessera", "access_key_id": "a" * 8, "secret_access_key": "s"}


def test_job_ids_sort_newest_first_and_are_unique():
    times = [1_700_000_000.0 + i * 0.5 for i in range(50)]
    ids = [new_job_id(t) for t in times]
    assert sorted(ids) == list(reversed(ids))
    assert len({new_job_id(1.0) for _ in range(1000)}) == 1000
    assert all(is_job_id(i) and len(i) == JOB_ID_LENGTH for i in ids)
    assert not is_job_id("../x") and not is_job_id("ABCDEFGHJKMNPQRS") and not is_job_id("")


def test_request_digest_ignores_only_the_key():
    a = GenerationRequest(prompt="p", duration_s=2, idempotency_key="one")
    assert request_digest(a) == request_digest(a.model_copy(update={"idempotency_key": "two"}))
    assert request_digest(a) != request_digest(a.model_copy(update={"duration_s": 3}))


def test_config_is_strict():
    config = TesseraConfig(storage=STORAGE)
    assert config.grpc.port == 9000 and config.deployments.denoiser.num_gpus == 0
    with pytest.raises(ValidationError, match="extra"):
        TesseraConfig(storage=STORAGE, unknown_section={})
    with pytest.raises(ValidationError, match="exactly one of num_replicas and autoscaling"):
        DeploymentConfig(num_cpus=1, num_replicas=2, autoscaling=AutoscalingConfig(max_replicas=2))
    with pytest.raises(ValidationError, match="min_replicas"):
        AutoscalingConfig(min_replicas=3, max_replicas=2)
    with pytest.raises(ValidationError, match="tenant name"):
        AuthConfig(api_keys={"Bad Tenant": "k"})
    with pytest.raises(ValidationError, match="frozen"):
        config.grpc.port = 1  # no mutation after construction


def test_config_round_trips_through_yaml(tmp_path):
    config = TesseraConfig(storage={**STORAGE, "secret_access_key": "s3-secret"},
                           auth={"api_keys": {"acme": hash_api_key("secret-key")}})
    path = tmp_path / "tessera.yaml"
    path.write_text(config.to_yaml())
    again = TesseraConfig.from_file(path)
    assert again == config
    assert again.auth.api_keys["acme"] == (hash_api_key("secret-key"),)
    assert "secret-key" not in path.read_text(), "configs hold key hashes, never keys"
    assert "s3-secret" not in repr(again)
    with pytest.raises(ValueError, match="does not exist"):
        TesseraConfig.from_file(tmp_path / "missing.yaml")


def test_serve_options_follow_the_config():
    autoscaled = DeploymentConfig(num_cpus=2, num_gpus=0.5, num_replicas=None, autoscaling=AutoscalingConfig(min_replicas=1, max_replicas=4))
    options = autoscaled.serve_options()
    assert options["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 0.5}
    assert options["autoscaling_config"]["max_replicas"] == 4 and "num_replicas" not in options
    assert autoscaled.threads == 2
    assert DeploymentConfig(num_cpus=0.25).threads == 1


def test_api_keys_decide_the_tenant():
    open_door = Authenticator(AuthConfig(enabled=False))
    assert not open_door.required and open_door.tenant({}) == "default"
    keyed = Authenticator(AuthConfig(api_keys={"acme": hash_api_key("k-acme"), "globex": hash_api_key("k-globex")}))
    assert keyed.tenant({"x-api-key": "k-globex"}) == "globex"
    with pytest.raises(UnauthenticatedError, match="missing API key"):
        keyed.tenant({})
    with pytest.raises(UnauthenticatedError, match="unknown API key"):
        keyed.tenant({"x-api-key": "k-acme-but-wrong"})


def test_committed_stubs_match_the_proto():
    assert generate.main(["--check"]) == 0
