"""The `tessera` command as a user runs it: a detached stack from `up` to `down`.

This module starts its own (second) Ray instance on purpose: what it tests is exactly the
daemon that `tessera up` starts and `tessera down` must stop without leftovers. It runs before
the integration tests (file order), so the two never run at the same time."""

from __future__ import annotations

import json
import re
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tessera.cluster.stack import port_in_use
from tests.helpers import ffprobe, free_port

pytestmark = pytest.mark.integration

TESSERA = [sys.executable, "-m", "tessera.cluster.cli"]


def tessera(home: Path, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([*TESSERA, "--home", str(home), *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"tessera {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def group_members(pgid: int) -> list[str]:
    members = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.getpgid(int(proc.name)) == pgid:
                    members.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except (ProcessLookupError, PermissionError, FileNotFoundError):
                pass
    return members


def test_up_generate_jobs_down(tmp_path):
    home = tmp_path / "home"
    grpc_port = free_port()
    http_port = free_port(avoid={grpc_port})
    metrics_port = free_port(avoid={grpc_port, http_port})
    up = tessera(home, "up", "--grpc-port", str(grpc_port), "--s3-port", str(free_port(avoid={grpc_port, http_port, metrics_port})),
                 "--http-port", str(http_port), "--metrics-port", str(metrics_port))
    state = json.loads((home / "stack.json").read_text())
    try:
        assert f"gRPC:      127.0.0.1:{grpc_port}" in up.stdout
        assert f"HTTP:      http://127.0.0.1:{http_port}/v1" in up.stdout
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        assert f"metrics:   {metrics_url}" in up.stdout
        again = tessera(home, "up").stdout
        assert "already running" in again

        # Auth is on: `up` made a key, showed it once, and everything below finds it by itself.
        key = tessera(home, "auth", "key").stdout.strip()
        assert key.startswith("tsk_") and up.stdout.count(key) == 1 and key not in again
        assert (home / "api_key").stat().st_mode & 0o777 == 0o600
        assert key not in (home / "tessera.yaml").read_text(), "the effective config holds its hash only"
        wrong = tessera(home, "--api-key", "tsk_wrong", "jobs", "list", check=False)
        assert wrong.returncode == 1 and "error: UNAUTHENTICATED: unknown API key" in wrong.stderr

        # Every port it opened is printed, each on loopback.
        assert "listening: every port on loopback only" in up.stdout
        for port, role in ((grpc_port, "gRPC API"), (http_port, "HTTP API"), (metrics_port, "Prometheus metrics")):
            assert re.search(rf"127\.0\.0\.1:{port} +loopback +{role}", up.stdout), up.stdout
        assert "raylet" in up.stdout and "gcs_server" in up.stdout and "not loopback" not in up.stdout

        status = json.loads(tessera(home, "status", "--json").stdout)
        assert status["running"] and status["healthy"] and status["grpc"] == f"127.0.0.1:{grpc_port}"
        assert status["http"] == f"http://127.0.0.1:{http_port}/v1"
        assert status["health"] == "SERVING" and status["auth"] == "stack-key" and "not_on_loopback" not in status
        # `status` names the scrape endpoint, and it answers in Prometheus' text format (Ray's own metrics at least).
        assert status["metrics"] == metrics_url and f"metrics: {metrics_url}" in tessera(home, "status").stdout
        with urllib.request.urlopen(metrics_url, timeout=10) as scrape:
            assert scrape.status == 200 and b"# TYPE ray_" in scrape.read()
        assert (Path(status["logs"]) / "serve").is_dir()

        out = tmp_path / "clip.mp4"
        generated = tessera(home, "generate", "a green circle moving down", "--duration", "1.5", "--width", "80",
                            "--height", "48", "--steps", "6", "--seed", "4", "--out", str(out))
        assert "SUCCEEDED" in generated.stdout
        assert "video:     s3://tessera/default/" in generated.stdout and "url:       http://127.0.0.1:" in generated.stdout
        assert f"local:     {out.resolve()}" in generated.stdout
        # The bar follows the job's record as the gateway reads it: steps may be skipped, segments never are.
        assert re.search(r"segment 1/1", generated.stderr), "the progress bar follows the stream"
        info = ffprobe(out)
        assert (info["codec"], info["width"], info["height"], info["frames"]) == ("h264", 80, 48, 12)

        job_id = generated.stdout.split("job:")[1].split()[0]
        listing = tessera(home, "jobs", "list")
        assert job_id in listing.stdout and "SUCCEEDED" in listing.stdout
        got = json.loads(tessera(home, "jobs", "get", job_id).stdout)
        assert got["job_id"] == job_id and got["video_uri"].endswith("/video.mp4")

        bad = tessera(home, "generate", "x", "--width", "100", check=False)
        assert bad.returncode == 1
        assert "error: INVALID_ARGUMENT: width 100 is not a multiple of 16" in bad.stderr
        missing = tessera(home, "jobs", "get", "0123456789abcdef", check=False)
        assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
    finally:
        down = tessera(home, "down")
    assert "stopped" in down.stdout
    deadline = time.monotonic() + 10
    while group_members(state["pid"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert group_members(state["pid"]) == [], "down leaves no process of the stack behind"
    assert not (home / "stack.json").exists()
    assert tessera(home, "status", check=False).returncode == 1


def test_down_when_not_running(tmp_path):
    assert "not running" in tessera(tmp_path, "down").stdout


def up_with_one_port_taken(home: Path, taken: str) -> tuple[subprocess.CompletedProcess, int, int]:
    """``tessera up`` while something listens on its ``taken`` ("grpc" or "s3") port."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", free_port()))
        holder.listen()
        held = holder.getsockname()[1]
        other = free_port(avoid={held})
        grpc_port, s3_port = (held, other) if taken == "grpc" else (other, held)
        refused = tessera(home, "up", "--grpc-port", str(grpc_port), "--s3-port", str(s3_port), check=False)
    return refused, grpc_port, s3_port


def test_up_refuses_a_grpc_port_in_use(tmp_path):
    """A taken port is a one-line error before Ray starts, and the refused start leaves nothing running."""
    home = tmp_path / "home"
    refused, port, s3_port = up_with_one_port_taken(home, "grpc")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (f"error: the gRPC port {port} is already in use on this machine; stop what "
                                      "holds it or choose another port (--grpc-port, or grpc.port in the config)")
    assert not (home / "stack.json").exists()
    log = (home / "logs" / "daemon.log").read_text()
    assert "starting the embedded S3 server" in log and "starting Ray" not in log, "refused after S3 started, before Ray"
    assert not port_in_use(s3_port), "the S3 server the refused start had started is stopped"
    assert tessera(home, "status", check=False).returncode == 1


def test_up_refuses_an_s3_port_in_use(tmp_path):
    """The embedded S3 server's taken port is a one-line error too (no Node stack trace)."""
    refused, _, s3_port = up_with_one_port_taken(tmp_path / "home", "s3")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (f"error: cannot listen on 127.0.0.1:{s3_port}: the port is already in use "
                                      "(pick another port, or 0 for a free one)")
