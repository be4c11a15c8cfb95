"""Build the Ray Serve application from a :class:`TesseraConfig`.

    Gateway (gRPC + HTTP ingress, stateless) ──► JobRunner (owns jobs by lease) ──► PromptExpander
                                                                        ├─► Denoiser (stateless step server, the GPU stage)
                                                                        └─► Decoder  (VAE decode + H.264 of time tiles)

For ``serve run`` / ``serve deploy`` the import path is ``tessera.serving.app:build``, with
``args: {config: path/to/tessera.yaml}`` (see ``deploy/serve.yaml``).
"""

from __future__ import annotations

from ray import serve
from ray.serve.config import gRPCOptions

from tessera.serving.config import TesseraConfig
from tessera.serving.decoder import Decoder
from tessera.serving.denoiser import Denoiser
from tessera.serving.gateway import Gateway
from tessera.serving.health import HEALTH_SERVICER
from tessera.serving.job_runner import JobRunner
from tessera.serving.logs import serve_logging_config
from tessera.serving.prompt_expander import PromptExpander

GRPC_SERVICER = "tessera.serving.api.servicer.add_VideoGenerationServicer_to_server"
GRPC_SERVICERS = [GRPC_SERVICER, HEALTH_SERVICER]
"""What Serve's gRPC proxy registers: the API and grpc.health.v1.Health (keep deploy/serve.yaml in step)."""
ROUTE_PREFIX = "/"
"""The application's HTTP route prefix: the OpenAI-compatible API is at ``http://HOST:PORT/v1``."""


def build_app(config: TesseraConfig) -> serve.Application:
    """The five deployments, each sized by its entry in ``config.deployments``, each logging as ``config.logs`` says."""
    d = config.deployments
    logs = serve_logging_config(config.logs)
    expander = PromptExpander.options(
        name="PromptExpander", logging_config=logs, **d.prompt_expander.serve_options()
    ).bind(
        config.model, config.expansion, d.prompt_expander.threads
    )
    denoiser = Denoiser.options(name="Denoiser", logging_config=logs, **d.denoiser.serve_options()).bind(
        config.model, d.denoiser.threads, config.batching, config.jobs.interactive_min_priority
    )
    decoder = Decoder.options(name="Decoder", logging_config=logs, **d.decoder.serve_options()).bind(
        config.model, config.video, d.decoder.threads
    )
    job_runner = JobRunner.options(name="JobRunner", logging_config=logs, **d.job_runner.serve_options()).bind(
        config, expander, denoiser, decoder
    )
    return Gateway.options(name="Gateway", logging_config=logs, **d.gateway.serve_options()).bind(config, job_runner)


def grpc_options(config: TesseraConfig) -> gRPCOptions:
    return gRPCOptions(port=config.grpc.port, grpc_servicer_functions=list(GRPC_SERVICERS))


def http_options(config: TesseraConfig) -> dict:
    """Serve's HTTP proxy options: the OpenAI-compatible API on ``config.http``."""
    return {"host": config.http.host, "port": config.http.port}


def build(args: dict) -> serve.Application:
    """Application builder for ``serve run``/``serve deploy``: ``args: {config: <yaml path>}``."""
    unknown = set(args) - {"config"}
    if unknown or "config" not in args:
        raise ValueError(f"expected args {{config: <path to tessera.yaml>}}, got {sorted(args)}")
    return build_app(TesseraConfig.from_file(args["config"]))
