"""deploy/serve.yaml as Ray reads it, and started with the real ``serve run`` on a Ray head of
its own (not the integration session's cluster: separate processes, temp dir, ports and token)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from tessera.cluster.loopback import SETUP_HOOK, SINGLE_MACHINE_ENV, describe, listening_sockets, not_on_loopback
from tessera.cluster.s3_server import EmbeddedS3Config, EmbeddedS3Server
from tessera.serving.auth import hash_api_key, new_api_key
from tessera.serving.client import TesseraClient, TesseraError
from tessera.serving.config import TesseraConfig
from tests.deploy.serve_schema import validate_serve_config
from tests.helpers import free_port

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
VENV_BIN = Path(sys.executable).parent  # the `ray` and `serve` CLIs installed with Tessera


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_serve_config_validates_against_rays_schema():
    config = validate_serve_config(load(DEPLOY / "serve.yaml"))
    [app] = config.applications
    assert app.import_path == "tessera.serving.app:build"
    assert config.http_options.host == "127.0.0.1", "Serve's HTTP proxy stays behind the TLS front (deploy/nginx)"


def test_the_strict_check_refuses_keys_ray_would_ignore():
    document = load(DEPLOY / "serve.yaml")
    document["grpc_option"] = document.pop("grpc_options")
    ServeDeploySchema.model_validate(document)  # Ray takes it, and would start without the gRPC API
    with pytest.raises(ValueError, match=r"grpc_option\b"):
        validate_serve_config(document)
    document = load(DEPLOY / "serve.yaml")
    document["applications"][0]["route_prefx"] = "/"
    with pytest.raises(ValueError, match=r"applications\.0\.route_prefx"):
        validate_serve_config(document)


# --- serve run -----------------------------------------------------------------------------------


def site_serve_config(tessera_config: Path, grpc_port: int, http_port: int) -> dict:
    """deploy/serve.yaml with the values a site sets (its Tessera config; here, free ports too)
    and nothing else changed."""
    document = load(DEPLOY / "serve.yaml")
    document["grpc_options"]["port"] = grpc_port
    document["http_options"]["port"] = http_port
    [app] = document["applications"]
    app["args"] = {"config": str(tessera_config)}
    validate_serve_config(document)
    return document


def site_tessera_config(s3: EmbeddedS3Server, api_key: str, grpc_port: int, http_port: int) -> dict:
    """deploy/tessera.example.yaml as a site would adapt it to this machine: storage on the
    embedded S3 server, the embedded CPU sizes instead of the GPU ones (this machine has 2 CPUs
    and no GPU), one key of ours, and the ports of the Serve config (they must agree)."""
    document = load(DEPLOY / "tessera.example.yaml")
    document["storage"] = {
        "endpoint_url": s3.endpoint_url, "region": "us-east-1", "bucket": s3.bucket,
        "access_key_id": s3.credentials.access_key_id, "secret_access_key": s3.credentials.secret_access_key,
    }
    del document["deployments"]
    document["auth"]["api_keys"] = {"acme": [hash_api_key(api_key)]}
    document["grpc"]["port"], document["http"]["port"] = grpc_port, http_port
    document["grpc"]["host"] = document["http"]["host"] = "127.0.0.1"
    TesseraConfig.model_validate(document)
    return document


def free_ports(count: int) -> list[int]:
    ports: list[int] = []
    for _ in range(count):
        ports.append(free_port(avoid=ports))
    return ports


def ray_environment(token: str) -> dict[str, str]:
    """This process's environment without its RAY_* variables (the session's own Ray may be up in
    this process), with Ray token auth on (a token of the test's own, not ~/.ray/auth_token) and
    Ray's single-machine mode, which keeps its servers on 127.0.0.1 (cluster/loopback.py)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("RAY_")}
    return env | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, SINGLE_MACHINE_ENV: "0", "RAY_USAGE_STATS_ENABLED": "0"}


def wait_for_port(port: int, process: subprocess.Popen, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"nothing listens on port {port} (exit {process.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


def session_processes(sid: int) -> list[psutil.Process]:
    """Live (not zombie) processes of session ``sid``: what a Popen(start_new_session=True) and
    everything it started, but did not put in a session of its own, still run."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getsid(process.pid) == sid and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


def stop_session(sid: int, grace_s: float = 5.0) -> list[psutil.Process]:
    """SIGTERM then SIGKILL every process of session ``sid`` (as `ray stop` does, with its grace
    period, but only these: `ray stop` would stop every Ray on the machine). Returns survivors."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for process in session_processes(sid):
            with contextlib.suppress(psutil.Error):
                process.send_signal(signum)
        _, alive = psutil.wait_procs(session_processes(sid), timeout=grace_s)
        if not alive:
            break
    return session_processes(sid)


@contextlib.contextmanager
def ray_head(work: Path, env: dict[str, str], num_cpus: int = 2) -> Iterator[tuple[str, subprocess.Popen]]:
    """``ray start --head --block`` on 127.0.0.1, in a temp dir of its own, every port Ray would
    take by default (GCS 6379, client server 10001, dashboard agent 52365, metrics 44217/44227)
    set to a free one, so that it runs beside any other Ray on the machine. Yields its address."""
    gcs, client, agent, autoscaler_metrics, dashboard_metrics = free_ports(5)
    log = work / "ray-head.log"
    command = [
        str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
        f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}", f"--num-cpus={num_cpus}",
        "--num-gpus=0", "--include-dashboard=false", f"--temp-dir={work / 'ray'}", "--disable-usage-stats",
    ]
    env = env | {"AUTOSCALER_METRIC_PORT": str(autoscaler_metrics), "DASHBOARD_METRIC_PORT": str(dashboard_metrics)}
    with open(log, "wb") as out:
        head = subprocess.Popen(command, env=env, cwd=work, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(gcs, head, timeout_s=60, log=log)
        yield f"127.0.0.1:{gcs}", head
    finally:
        survivors = stop_session(head.pid)
        head.wait(timeout=10)
        assert not survivors, f"Ray processes left running: {survivors}"


@pytest.mark.slow
def test_serve_run_starts_the_shipped_config(tmp_path):
    """The real `serve run` CLI on deploy/serve.yaml (site values only) against a Ray head with
    token auth on: every stage healthy over gRPC and HTTP, a job rendered, every port of the
    cluster on loopback, and nothing left running afterwards."""
    work = Path(tempfile.mkdtemp(prefix="tessera-serve-run-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    api_key = new_api_key()
    grpc_port, http_port = free_ports(2)
    try:
        with EmbeddedS3Server(EmbeddedS3Config(data_dir=work / "s3", bucket="tessera")) as s3:
            tessera_config = work / "tessera.yaml"
            tessera_config.write_text(yaml.safe_dump(site_tessera_config(s3, api_key, grpc_port, http_port)))
            serve_config = tmp_path / "serve.yaml"
            serve_config.write_text(yaml.safe_dump(site_serve_config(tessera_config, grpc_port, http_port)))
            env = ray_environment(secrets.token_hex(32))
            with ray_head(work, env) as (address, head):
                log = work / "serve-run.log"
                # The hook keeps Serve's gRPC proxy and replica servers on 127.0.0.1 (cluster/loopback.py);
                # on a real cluster leave it out, and keep the proxies behind the TLS front.
                command = [str(VENV_BIN / "serve"), "run", str(serve_config), "--address", address,
                           "--runtime-env-json", f'{{"worker_process_setup_hook": "{SETUP_HOOK}"}}']
                with open(log, "wb") as out:
                    serve_run = subprocess.Popen(command, env=env, cwd=work, stdout=out, stderr=subprocess.STDOUT)
                try:
                    with TesseraClient(f"127.0.0.1:{grpc_port}", api_key=api_key) as client:
                        check_serving(client, http_port, serve_run, log)
                        job = client.generate("a red circle moving to the right", image=True, width=64, height=64, seed=7)
                        assert job.image_uri.startswith(f"s3://{s3.bucket}/acme/{job.job_id}/"), job
                    listeners = listening_sockets(head.pid) + listening_sockets(serve_run.pid)
                    assert {grpc_port, http_port} <= {item.port for item in listeners}
                    assert not not_on_loopback(listeners), f"beyond loopback: {describe(not_on_loopback(listeners))}"
                finally:
                    serve_run.send_signal(signal.SIGINT)  # Ctrl-C: serve run shuts Serve down, as a user's would
                    # Shutting every replica down took over 60 s once in a full CI run on 2 busy cores
                    # (the whole test takes ~75 s alone); a hang would still fail here.
                    serve_run.wait(timeout=240)
                assert serve_run.returncode == 0, log.read_text()[-3000:]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check_serving(client: TesseraClient, http_port: int, serve_run: subprocess.Popen, log: Path, timeout_s: float = 240) -> None:
    """Until grpc.health.v1 says SERVING (every stage has a replica), then /healthz must agree."""
    deadline = time.monotonic() + timeout_s
    health = "no answer"
    while health != "SERVING":
        if serve_run.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"not SERVING ({health}; serve run exit {serve_run.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
        try:
            health = client.health(timeout_s=5)
        except TesseraError as error:  # the proxy is not up yet, or not routing to the app
            health = error.code.name
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=10) as response:
        assert response.status == 200
