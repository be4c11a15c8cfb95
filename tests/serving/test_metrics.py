"""Metric definitions, the dashboard and Prometheus config over them, and the log context, without Ray.

(What a scrape shows after a render is tested against the real stack: tests/integration/test_observability.py.)"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest
import yaml

from tessera.serving import logs as tessera_logs
from tessera.serving.config import MetricsConfig, TesseraConfig
from tessera.serving.errors import InputTooLargeError, InvalidRequestError, NotFoundError, UnauthenticatedError, UnavailableError
from tessera.serving.jobs.quotas import QuotaExceededError
from tessera.serving.jobs.submission import NoCapacityError
from tessera.serving.metrics import SPECS, exported_name, rejection_reason, scraped_names
from tessera.serving.storage import _operation
from tests.promql import dashboard_expressions, queried_metrics

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


def test_specs_are_valid_prometheus_metrics():
    names = [spec.name for spec in SPECS]
    assert len(names) == len(set(names))
    for spec in SPECS:
        assert NAME.match(spec.name) and spec.name.startswith("tessera_"), spec.name
        assert spec.description and spec.recorded_by, spec.name
        assert all(NAME.match(label) and label != "le" for label in spec.labels), spec.name
        # Counters carry _total themselves: Ray's exporter adds it otherwise, and the names here are what a scrape shows.
        assert spec.name.endswith("_total") == (spec.kind == "counter"), spec.name
        if spec.kind == "histogram":
            bounds = spec.boundaries
            assert bounds and all(b > 0 for b in bounds) and list(bounds) == sorted(set(bounds)), spec.name
        else:
            assert not spec.boundaries, spec.name


def test_exported_names():
    assert exported_name("tessera_jobs_total") == "ray_tessera_jobs_total"
    step = next(spec for spec in SPECS if spec.name == "tessera_step_seconds")
    assert scraped_names(step) == {"ray_tessera_step_seconds_bucket", "ray_tessera_step_seconds_sum",
                                   "ray_tessera_step_seconds_count"}


def test_queried_metrics_reads_promql():
    assert queried_metrics("histogram_quantile(0.99, sum by (le, call) (rate(ray_tessera_window_seconds_bucket[5m])))") == {
        "ray_tessera_window_seconds_bucket"}
    assert queried_metrics('sum(rate(a_total{kind!~"x|y"}[15m])) / sum(rate(b_total[15m])) * 60') == {"a_total", "b_total"}
    assert queried_metrics('max by (deployment, state) (c{state!="RUNNING"}) > 1e3') == {"c"}


def test_the_dashboard_queries_exactly_tessera_metrics():
    exprs = dashboard_expressions()
    queried = set().union(*(queried_metrics(e) for e in exprs))
    ours = set().union(*(scraped_names(spec) for spec in SPECS))
    assert queried <= ours, sorted(queried - ours)
    assert [spec.name for spec in SPECS if not queried & scraped_names(spec)] == []
    # Histograms are read through their series (buckets for quantiles, sum/count for means), never by the bare name.
    histograms = {exported_name(spec.name) for spec in SPECS if spec.kind == "histogram"}
    assert not queried & histograms


def test_prometheus_config_scrapes_the_embedded_stack_and_ray_nodes():
    from ray._private import ray_constants

    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    embedded = jobs["tessera-embedded"]
    assert embedded["metrics_path"] == "/metrics"
    assert embedded["static_configs"][0]["targets"] == [f"127.0.0.1:{MetricsConfig().export_port}"]
    # Ray's head writes its service discovery file under its temp dir (/tmp/ray by default).
    [files] = [sd["files"] for sd in jobs["ray"]["file_sd_configs"]]
    assert files == [f"/tmp/ray/{ray_constants.PROMETHEUS_SERVICE_DISCOVERY_FILE}"]


def test_rejection_reasons():
    assert rejection_reason(UnauthenticatedError("no key")) == "unauthenticated"
    assert rejection_reason(InvalidRequestError("bad width")) == "invalid"
    assert rejection_reason(QuotaExceededError("max_concurrent_jobs", "over")) == "quota"
    assert rejection_reason(NoCapacityError("full", retry_after_ms=1000)) == "no_capacity"
    assert rejection_reason(InputTooLargeError("big")) == "too_large"
    assert rejection_reason(NotFoundError("gone")) == "not_found"
    assert rejection_reason(UnavailableError("s3 away")) == "unavailable"
    assert rejection_reason(RuntimeError("bug")) == "internal"


@pytest.mark.parametrize("action, operation", [
    ("put", "put"), ("head bucket", "head_bucket"), ("upload part 12 of", "upload_part"),
    ("copy s3://tessera/a key with spaces/x to", "copy"), ("copy s3://tessera/k to (part 3)", "copy"),
    ("abort multipart upload of", "abort_multipart_upload"),
])
def test_storage_operation_labels_are_bounded(action, operation):
    assert _operation(action) == operation


def test_config_sections_have_descriptions():
    for section in ("metrics", "logs"):
        model = TesseraConfig.model_fields[section].annotation
        assert all(field.description for field in model.model_fields.values()), section
    assert TesseraConfig.model_fields["logs"].default.encoding == "JSON"


# -- the log context ----------------------------------------------------------------------------------


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(tessera_logs.ContextFilter())

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def collected():
    logger = logging.getLogger("tessera.test_metrics")
    handler = Collect()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield logger, handler.records
    logger.removeHandler(handler)


def test_log_fields_come_from_the_context(collected):
    logger, records = collected
    with tessera_logs.log_context(tenant="acme", request_id="r-1"):
        logger.info("one")
        with tessera_logs.log_context(tessera_job_id="j-1"):
            logger.info("two")
        logger.info("three", extra={"tessera_job_id": "j-2"})  # a record's own value wins
    logger.info("four")
    fields = [{k: getattr(r, k, None) for k in tessera_logs.FIELDS} for r in records]
    assert fields == [
        {"tessera_job_id": None, "tenant": "acme", "request_id": "r-1"},
        {"tessera_job_id": "j-1", "tenant": "acme", "request_id": "r-1"},
        {"tessera_job_id": "j-2", "tenant": "acme", "request_id": "r-1"},
        {"tessera_job_id": None, "tenant": None, "request_id": None},
    ]
    with pytest.raises(ValueError, match="unknown log fields"):
        tessera_logs.bind(job_id="x")  # Ray's key: never ours


def test_bound_fields_stay_with_their_task(collected):
    """Two calls served at once on one event loop never see each other's tenant or job."""
    logger, records = collected

    async def call(tenant: str, job: str):
        tessera_logs.bind(tenant=tenant)
        await asyncio.sleep(0.01)
        tessera_logs.job_context(job, tenant, "")
        await asyncio.sleep(0.01)
        logger.info("done")

    async def both():
        await asyncio.gather(call("a", "job-a"), call("b", "job-b"))

    asyncio.run(both())
    assert sorted((r.tenant, r.tessera_job_id) for r in records) == [("a", "job-a"), ("b", "job-b")]
    assert tessera_logs.current_request_id() == ""
