"""The detached process behind ``tessera up``: runs a :class:`StackRunner` until SIGTERM.

While running it publishes ``stack.json`` (addresses, pid) once the application answers, and
refreshes ``serve_status.json`` (application and replica states, including replicas that
cannot be placed) every few seconds for ``tessera status``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

from tessera.cluster.s3_server import S3ServerError
from tessera.cluster.stack import StackRunner, StackStartError, http_base_url, wait_http_ready
from tessera.serving.auth import key_file
from tessera.serving.config import load_document

logger = logging.getLogger("tessera.daemon")


def serve_status_snapshot(app_name: str) -> dict:
    """Application and per-deployment replica states from Serve, as plain data."""
    from ray import serve

    status = serve.status()
    app = status.applications.get(app_name)
    if app is None:
        return {"application": "NOT_DEPLOYED"}
    deployments = {}
    for name, deployment in app.deployments.items():
        deployments[name] = {
            "status": str(deployment.status.value if hasattr(deployment.status, "value") else deployment.status),
            "replicas": {str(k.value if hasattr(k, "value") else k): v for k, v in deployment.replica_states.items()},
            "message": deployment.message,
        }
    return {"application": str(app.status.value if hasattr(app.status, "value") else app.status), "deployments": deployments}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--grpc-port", type=int)
    parser.add_argument("--s3-port", type=int)
    parser.add_argument("--http-port", type=int)
    parser.add_argument("--metrics-port", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    document = load_document(args.config) if args.config else None
    runner = StackRunner(args.home, config=document, grpc_port=args.grpc_port, s3_port=args.s3_port, http_port=args.http_port,
                         metrics_port=args.metrics_port)
    state_path = args.home / "stack.json"
    status_path = args.home / "serve_status.json"
    try:
        try:
            config = runner.start(log=logger.info)
        except (StackStartError, S3ServerError) as error:
            logger.error("cannot start: %s", error)  # the user can fix this; no traceback
            return 2
        config_path = args.home / "tessera.yaml"
        config_path.write_text(config.to_yaml())
        config_path.chmod(0o600)
        from tessera.serving.client import TesseraClient

        address = f"{config.grpc.host}:{config.grpc.port}"
        with TesseraClient(address, home=args.home) as client:
            client.wait_until_ready(timeout_s=300)
        wait_http_ready(http_base_url(config), timeout_s=60)
        state = {
            "pid": os.getpid(),
            "grpc_address": address,
            "s3_endpoint": config.storage.endpoint_url,
            "bucket": config.storage.bucket,
            "config_path": str(config_path),
            "started_at": time.time(),
            "http_base_url": http_base_url(config),
            "auth": runner.auth_mode,
            "api_key_file": str(key_file(args.home)) if runner.api_key else None,
            "api_key_created": runner.api_key_created,
            "listening": [item.as_dict() for item in runner.listening()],
            "metrics_url": runner.metrics_url,
            "ray_logs_dir": runner.ray_logs_dir,
        }
        state_path.write_text(json.dumps(state, indent=2))
        logger.info("ready: gRPC %s, HTTP %s, S3 %s, metrics %s", address, http_base_url(config), config.storage.endpoint_url,
                    runner.metrics_url)
        while not stop.wait(5.0):
            try:
                status_path.write_text(json.dumps(serve_status_snapshot(config.app_name), indent=2))
            except Exception:  # status is best effort; never let it take the stack down
                logger.exception("could not read Serve status")
    finally:
        logger.info("shutting down")
        state_path.unlink(missing_ok=True)
        status_path.unlink(missing_ok=True)
        runner.stop()
        logger.info("stopped")
        sweep_process_group()
    return 0


def sweep_process_group() -> None:
    """End whatever Ray left behind in this daemon's process group.

    After ``ray.shutdown()`` Ray 2.60 leaves its dashboard and runtime-env agents running as
    orphans; the daemon leads its own process group (``tessera up`` starts it in a new
    session), so signalling the group reaches them and nothing outside the stack."""
    if os.getpgid(0) != os.getpid():
        return  # not a group leader (run by hand): the group is not ours alone
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    raise SystemExit(main())
