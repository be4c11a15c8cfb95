"""The shipped deploy files stay valid against the code."""

from __future__ import annotations

import importlib
from pathlib import Path

import yaml

from tessera.serving.config import TesseraConfig

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_serve_config_points_at_real_code_and_a_valid_config():
    serve_config = yaml.safe_load((DEPLOY / "serve.yaml").read_text())
    [app] = serve_config["applications"]
    module, attribute = app["import_path"].split(":")
    assert callable(getattr(importlib.import_module(module), attribute))
    for function in serve_config["grpc_options"]["grpc_servicer_functions"]:
        module, _, name = function.rpartition(".")
        assert callable(getattr(importlib.import_module(module), name))
    from tessera.serving.app import GRPC_SERVICERS

    assert serve_config["grpc_options"]["grpc_servicer_functions"] == GRPC_SERVICERS, "the API and its health service"
    config = TesseraConfig.from_file(DEPLOY.parent / app["args"]["config"])
    assert config.grpc.port == serve_config["grpc_options"]["port"]
    assert config.http.port == serve_config["http_options"]["port"]
    from tessera.serving.app import ROUTE_PREFIX

    assert app["route_prefix"] == ROUTE_PREFIX
    assert config.app_name == app["name"]


def test_example_config_scales_the_gpu_stages():
    config = TesseraConfig.from_file(DEPLOY / "tessera.example.yaml")
    assert config.deployments.denoiser.num_gpus == 1
    assert config.deployments.denoiser.autoscaling.max_replicas == 8
    assert config.storage.access_key_id is None
