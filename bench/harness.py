"""Shared plumbing of the benchmarks: stacks, in-process renders, memory sampling, results.

Benchmarks run by hand (``bash scripts/bootstrap.sh bench`` installs matplotlib and psutil)
and write ``bench/results/<name>.json`` plus ``<name>.png``. Nothing here is used by tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
    }


def median(values) -> float:
    return float(statistics.median(values))


def git_source() -> dict:
    """The commit a bench ran on, and the tracked files that differed from it then."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=RESULTS.parent).stdout

    dirty = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines() if line.strip()]
    return {"commit": git("rev-parse", "HEAD").strip(), "subject": git("log", "-1", "--format=%s").strip(), "dirty_files": dirty}


def write_results(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), "written_at": time.time(), **data}, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def role_of(process: psutil.Process) -> str:
    """A readable role for a process of the stack (Ray sets replica process titles)."""
    try:
        cmdline = process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "gone"
    text = " ".join(cmdline)
    for marker in ("Gateway", "PromptExpander", "Denoiser", "Decoder", "ServeController", "ProxyActor"):
        if marker in text:
            return marker
    if "s3server" in text or "server.js" in text:
        return "s3-server"
    for marker in ("gcs_server", "raylet", "dashboard", "runtime_env", "log_monitor"):
        if marker in text:
            return f"ray:{marker}"
    if "ray::IDLE" in text or "default_worker" in text:
        return "ray:idle-worker"
    return "driver" if process.pid == os.getpid() else Path(cmdline[0]).name if cmdline else "?"


class RssSampler:
    """Samples the RSS of this process and all its descendants; keeps per-process peaks.

    Use one sampler per measured interval: ``with RssSampler() as s: ...`` then ``s.peaks()``."""

    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self._peaks: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        root = psutil.Process()
        for process in [root, *root.children(recursive=True)]:
            try:
                rss = process.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            role, peak = self._peaks.get(process.pid, (None, 0))
            if role is None:
                role = role_of(process)
            self._peaks[process.pid] = (role, max(peak, rss))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def peaks(self) -> dict[str, float]:
        """Peak RSS in MiB per process, keyed ``role`` (``role#2`` for a second one)."""
        result: dict[str, float] = {}
        for pid, (role, peak) in sorted(self._peaks.items()):
            key, n = role, 1
            while key in result:
                n += 1
                key = f"{role}#{n}"
            result[key] = round(peak / 2**20, 1)
        return result


@contextlib.contextmanager
def serve_stack(home: Path, config: dict, num_cpus: int) -> Iterator:
    """The real Serve app (embedded S3, local Ray) and a gRPC client; everything stopped after."""
    from tessera.cluster.stack import StackRunner, pick_free_port
    from tessera.serving.client import TesseraClient

    grpc_port = pick_free_port()
    http_port = pick_free_port(avoid={grpc_port})
    runner = StackRunner(home, config=config, grpc_port=grpc_port, s3_port=pick_free_port(avoid={grpc_port, http_port}),
                         num_cpus=num_cpus, http_port=http_port)
    try:
        started = time.monotonic()
        resolved = runner.start()
        client = TesseraClient(f"127.0.0.1:{resolved.grpc.port}", home=home)  # the stack's key, from home/api_key
        client.wait_until_ready(timeout_s=300)
        print(f"stack ready in {time.monotonic() - started:.1f} s")
        yield client, resolved
        client.close()
    finally:
        runner.stop()


@contextlib.contextmanager
def embedded_store(home: Path) -> Iterator[dict]:
    """An embedded S3 server alone (for in-process renders); yields the ``storage`` config section."""
    from tessera.cluster.s3_server import EmbeddedS3Config, EmbeddedS3Server
    from tessera.cluster.stack import pick_free_port

    server = EmbeddedS3Server(EmbeddedS3Config(data_dir=home / "s3", port=pick_free_port(), bucket="tessera"))
    server.start()
    try:
        yield {
            "endpoint_url": server.endpoint_url,
            "region": "us-east-1",
            "bucket": server.bucket,
            "access_key_id": server.credentials.access_key_id,
            "secret_access_key": server.credentials.secret_access_key,
        }
    finally:
        server.stop()


def plot(name: str, draw) -> Path:
    """Save a figure drawn by ``draw(plt)`` next to the JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    draw(plt)
    path = RESULTS / f"{name}.png"
    plt.tight_layout()
    plt.savefig(path, dpi=110)
    plt.close("all")
    print(f"wrote {path}")
    return path
