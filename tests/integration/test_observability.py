"""Metrics and logs on the real stack: the scrape endpoint (Ray's metrics agent, Prometheus text
over HTTP), the Grafana dashboard's queries against a real scrape, and the replicas' JSON logs.

Metrics reach the agent every ``metrics.report_interval_s`` (1 s here), so every check polls with
a bounded wait; nothing here times the render itself."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import os
import signal

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tessera.serving.api import tessera_pb2 as pb
from tessera.serving.client import TesseraClient, TesseraError
from tessera.serving.jobs.records import JobStore
from tessera.serving.metrics import SPECS, scraped_names
from tests.helpers import owner_pid
from tests.promql import dashboard_expressions, queried_metrics
from tests.integration.conftest import TENANT_KEYS

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RAY_LABELS = {"Component", "NodeAddress", "SessionName", "Version", "WorkerId", "otel_scope_name", "otel_scope_schema_url",
              "otel_scope_version", "JobId"}
STEPS = 6


class Scrape:
    """One scrape of the endpoint: every sample, by name and its own labels (Ray's are dropped, and
    series of several processes summed)."""

    def __init__(self, url: str):
        with urllib.request.urlopen(url, timeout=10) as answer:
            assert answer.status == 200
            assert answer.headers.get_content_type() == "text/plain"
            self.text = answer.read().decode()
        self.samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(self.text):
            for sample in family.samples:
                labels = {k: v for k, v in sample.labels.items() if k not in RAY_LABELS}
                self.samples.setdefault(sample.name, []).append((labels, sample.value))

    def total(self, name: str, **labels: str) -> float:
        return sum(value for have, value in self.samples.get(name, ()) if all(have.get(k) == v for k, v in labels.items()))

    def max(self, name: str, **labels: str) -> float:
        return max((value for have, value in self.samples.get(name, ()) if all(have.get(k) == v for k, v in labels.items())),
                   default=0.0)


def wait_until(check: Callable[[], str | None], timeout_s: float, every_s: float = 0.5) -> None:
    """Poll ``check`` (None: done; else what is still wrong) until it passes or time is up."""
    deadline = time.monotonic() + timeout_s
    problem = check()
    while problem is not None:
        if time.monotonic() > deadline:
            pytest.fail(f"not after {timeout_s:.0f} s: {problem}")
        time.sleep(every_s)
        problem = check()


def quiet_scrape(url: str) -> Scrape:
    """A scrape taken once no job runs or waits and the counters have stopped moving (jobs of earlier
    tests in this session have ended and their last reports arrived)."""
    state: dict[str, Scrape] = {}

    def settled() -> str | None:
        now = Scrape(url)
        previous, state["last"] = state.get("last"), now
        busy = now.total("ray_tessera_running_jobs") + now.total("ray_tessera_queued_jobs")
        if busy:
            return f"{busy:g} jobs still running or queued"
        keys = ("ray_tessera_jobs_total", "ray_tessera_steps_total", "ray_tessera_video_seconds_total",
                "ray_tessera_requests_rejected_total")
        if previous is None or any(previous.total(k) != now.total(k) for k in keys):
            return "counters still moving"
        return None

    wait_until(settled, timeout_s=120, every_s=1.5)  # > the report interval, so a pending report shows up
    return state["last"]


def test_scrape_endpoint_is_prometheus_text_on_loopback(stack):
    assert stack.metrics_url == f"http://127.0.0.1:{stack.config.metrics.export_port}/metrics"
    roles = {item.port: item for item in stack.runner.check_loopback()}
    assert roles[stack.config.metrics.export_port].role == "Prometheus metrics (Ray metrics agent)"
    assert roles[stack.config.metrics.export_port].loopback
    scrape = Scrape(stack.metrics_url)
    assert "# TYPE ray_tessera_" in scrape.text or scrape.samples  # Ray's own metrics at least
    assert any(name.startswith("ray_") for name in scrape.samples)


def test_counters_move_by_a_render(stack):
    """Before and after one render and a few refused calls, each counter moved by exactly what they did."""
    client = stack.client
    # Replica counts are read from Serve's controller by every gateway (the config runs 2 gateways, 2 job runners).
    wait_until(lambda: None if Scrape(stack.metrics_url).max("ray_tessera_deployment_replicas", deployment="Gateway",
                                                             state="RUNNING") == 2 else "no Gateway replica count yet", 60)
    before = quiet_scrape(stack.metrics_url)

    job = client.generate("a red circle moving to the right", duration_s=2, width=64, height=64, steps=STEPS, seed=11)
    assert job.state == pb.SUCCEEDED
    with pytest.raises(TesseraError) as invalid:
        client.submit("a red circle", width=100, height=64)
    assert invalid.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with TesseraClient(stack.address, api_key="tsk_not_a_key") as stranger, pytest.raises(TesseraError) as refused:
        stranger.list()
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(TesseraError) as missing:
        client.get("0" * len(job.job_id))
    assert missing.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(urllib.error.HTTPError) as http_refused:
        urllib.request.urlopen(f"{stack.http_base_url}/videos", timeout=10)
    assert http_refused.value.code == 401

    tiles = job.progress.total_segments
    assert tiles >= 1
    t2v = {"mode": "text_to_video", "tenant": "default"}
    expected = {
        ("ray_tessera_jobs_total", (("outcome", "succeeded"), *t2v.items())): 1,
        ("ray_tessera_jobs_submitted_total", tuple(t2v.items())): 1,
        ("ray_tessera_video_seconds_total", tuple(t2v.items())): job.duration_s,
        ("ray_tessera_steps_total", ()): STEPS,
        ("ray_tessera_step_seconds_count", ()): STEPS,
        ("ray_tessera_job_stage_seconds_count", (("stage", "total"),)): 1,
        ("ray_tessera_job_stage_seconds_count", (("stage", "denoise"),)): 1,
        ("ray_tessera_window_seconds_count", (("call", "stream"),)): 1,  # one window: one streamed Denoiser call
        ("ray_tessera_tile_seconds_count", ()): tiles,
        ("ray_tessera_requests_rejected_total", (("api", "grpc"), ("reason", "invalid"))): 1,
        ("ray_tessera_requests_rejected_total", (("api", "grpc"), ("reason", "unauthenticated"))): 1,
        ("ray_tessera_requests_rejected_total", (("api", "grpc"), ("reason", "not_found"))): 1,
        ("ray_tessera_requests_rejected_total", (("api", "http"), ("reason", "unauthenticated"))): 1,
    }
    state: dict[str, Scrape] = {}

    def moved() -> str | None:
        after = state["after"] = Scrape(stack.metrics_url)
        wrong = []
        for (name, labels), delta in expected.items():
            got = after.total(name, **dict(labels)) - before.total(name, **dict(labels))
            if abs(got - delta) > 1e-6:
                wrong.append(f"{name}{dict(labels)} moved by {got:g}, expected {delta:g}")
        return "; ".join(wrong) or None

    wait_until(moved, timeout_s=60)
    after = state["after"]
    # The unknown job was looked up in S3: a not-found answer counted as an S3 error of its kind.
    assert after.total("ray_tessera_s3_errors_total", kind="not_found") > before.total("ray_tessera_s3_errors_total", kind="not_found")
    assert after.total("ray_tessera_running_jobs") == 0
    assert after.max("ray_tessera_deployment_replicas", deployment="JobRunner", state="RUNNING") == 2
    # No counter of the render was counted twice by a second process: still exact a report later.
    time.sleep(2 * stack.config.metrics.report_interval_s)
    assert moved() is None


@pytest.fixture(scope="module")
def rare_events(stack) -> Scrape:
    """What a normal render never does, done once: a JobRunner paused past its lease (the other one
    takes its job over), then the S3 server away for a few seconds (every JobRunner's scan fails,
    after botocore retried each request). Returns the scrape from before."""
    before = quiet_scrape(stack.metrics_url)
    job = stack.client.submit("a green square moving left", duration_s=6, steps=40, seed=21)
    jobs = JobStore(stack.store)
    record = None

    def held() -> str | None:
        nonlocal record
        record = jobs.get("default", job.job_id)
        return None if record.lease is not None and record.state.value == "RUNNING" else f"job {record.state.value}"

    wait_until(held, timeout_s=120, every_s=0.1)
    paused = owner_pid(record.lease.owner)
    os.kill(paused, signal.SIGSTOP)
    try:
        wait_until(lambda: None if (jobs.get("default", job.job_id).lease or record.lease).token > record.lease.token
                   else "not taken over yet", timeout_s=60, every_s=0.2)
    finally:
        os.kill(paused, signal.SIGCONT)
    assert stack.client.wait(job.job_id, timeout_s=300).state == pb.SUCCEEDED
    stack.runner.s3.stop()
    time.sleep(3 * stack.config.jobs.scan_interval_s)
    stack.runner.s3.start()
    return before


def test_a_takeover_and_storage_retries_are_counted(stack, rare_events):
    before = rare_events

    def counted() -> str | None:
        after = Scrape(stack.metrics_url)
        moved = {name: after.total(name, **labels) - before.total(name, **labels) for name, labels in (
            ("ray_tessera_lease_takeovers_total", {}), ("ray_tessera_s3_retries_total", {"layer": "request"}),
            ("ray_tessera_s3_errors_total", {"kind": "unavailable"}),
            ("ray_tessera_jobs_total", {"outcome": "succeeded", "tenant": "default"}))}
        ok = (moved["ray_tessera_lease_takeovers_total"] == 1 and moved["ray_tessera_jobs_total"] == 1
              and moved["ray_tessera_s3_retries_total"] >= 1 and moved["ray_tessera_s3_errors_total"] >= 1)
        return None if ok else f"moved: {moved}"

    wait_until(counted, timeout_s=60)


# -- the dashboard's queries against a real scrape ------------------------------------------------------

def batcher_metric(name: str) -> bool:
    return any(name in scraped_names(spec) for spec in SPECS if spec.recorded_by.startswith("Denoiser"))


def test_dashboard_queries_only_metrics_a_scrape_has(stack, rare_events):
    """Every metric the dashboard queries is one of Tessera's and appears in a scrape after a render
    (and the rare events: a takeover, storage retries); every Tessera metric has a panel. (The
    Denoiser batcher's are checked by the next test.)"""
    exprs = dashboard_expressions()
    assert exprs
    queried = set().union(*(queried_metrics(e) for e in exprs))
    ours = set().union(*(scraped_names(spec) for spec in SPECS))
    assert queried <= ours, f"the dashboard queries metrics Tessera does not define: {sorted(queried - ours)}"
    unqueried = [spec.name for spec in SPECS if not queried & scraped_names(spec)]
    assert not unqueried, f"metrics without a panel: {unqueried}"
    stack.client.generate("a blue square moving up", duration_s=2, width=64, height=64, steps=4, seed=3)
    needed = {name for name in queried if not batcher_metric(name)}
    wait_until(lambda: (lambda missing: f"not in the scrape: {sorted(missing)}" if missing else None)(
        needed - set(Scrape(stack.metrics_url).samples)), timeout_s=60)


def test_dashboard_batcher_metrics_in_a_scrape(stack):
    """The Denoiser step batcher's metrics, once serving/denoiser.py records them (see serving/metrics.py)."""
    source = (ROOT / "serving" / "denoiser.py").read_text()
    if "record_denoiser_batch" not in source:
        pytest.skip("serving/denoiser.py does not call record_denoiser_batch yet: its metrics are not recorded")
    queried = set().union(*(queried_metrics(e) for e in dashboard_expressions()))
    needed = {name for name in queried if batcher_metric(name)}
    stack.client.generate("a green circle moving left", duration_s=2, width=64, height=64, steps=4, seed=5)
    wait_until(lambda: (lambda missing: f"not in the scrape: {sorted(missing)}" if missing else None)(
        needed - set(Scrape(stack.metrics_url).samples)), timeout_s=60)


# -- JSON logs ------------------------------------------------------------------------------------------


def replica_lines(stack, deployment: str) -> list[dict]:
    """Every line of every replica log of ``deployment``, each parsed as JSON (a line that is not
    JSON fails the test)."""
    files = sorted(Path(stack.runner.ray_logs_dir, "serve").glob(f"replica_{stack.config.app_name}_{deployment}_*.log"))
    assert files, f"no replica log of {deployment} in {stack.runner.ray_logs_dir}/serve"
    lines = []
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    lines.append(json.loads(line))
                except json.JSONDecodeError:
                    pytest.fail(f"{path.name}:{number} is not a JSON line: {line[:200]}")
    return lines


def test_replica_logs_are_json_lines_with_job_request_and_tenant(stack):
    with stack.client_for("acme") as acme:
        job = acme.generate("a yellow square moving down", duration_s=1, width=64, height=64, steps=3, seed=9)
    assert job.state == pb.SUCCEEDED

    def events(deployment: str) -> list[dict]:
        return [line for line in replica_lines(stack, deployment) if line.get("tessera_job_id") == job.job_id]

    found: dict[str, list[dict]] = {}

    def logged() -> str | None:
        found["gateway"], found["runner"] = events("Gateway"), events("JobRunner")
        runner_messages = " | ".join(line["message"] for line in found["runner"])
        if not any("submitted" in line["message"] for line in found["gateway"]):
            return "no gateway line for the submit"
        if f"job {job.job_id} ended as SUCCEEDED" not in runner_messages or "started" not in runner_messages:
            return f"job runner lines so far: {runner_messages}"
        return None

    wait_until(logged, timeout_s=30)
    submitted = next(line for line in found["gateway"] if "submitted" in line["message"])
    request_id = submitted["request_id"]
    assert request_id
    for line in found["gateway"] + found["runner"]:
        assert line["tenant"] == "acme", line
        assert line["deployment"].endswith(("Gateway", "JobRunner")) and line["replica"], line
    # The job's attempt runs under the submit's request id, in the runner and in every stage it calls.
    assert {line.get("request_id") for line in found["runner"] if "started" in line["message"]} == {request_id}
    for stage in ("PromptExpander", "Denoiser", "Decoder"):
        assert any(line.get("request_id") == request_id for line in replica_lines(stack, stage)), stage


def test_no_api_key_in_any_log(stack):
    """After the calls above (good keys, a wrong one), no key appears in any of Ray's logs."""
    keys = [stack.api_key, *TENANT_KEYS.values(), "tsk_not_a_key"]
    logs = Path(stack.runner.ray_logs_dir)
    files = [path for path in logs.rglob("*") if path.is_file()]
    assert any(path.parent.name == "serve" for path in files)
    leaks = [f"{path.relative_to(logs)} holds {key[:8]}..." for path in files for key in keys if key.encode() in path.read_bytes()]
    assert not leaks
