"""Tessera's Prometheus metrics: every metric is defined here, and recorded only through the small
typed functions below.

**Why Ray's metrics API (``ray.util.metrics``) and not ``prometheus_client``.** A Serve
application is many processes that come and go (replicas scale, die and are replaced, on any
node). Ray already runs one *metrics agent* per node (in the dashboard agent that every raylet
starts) which collects what every worker process of the node records, and serves the lot in the
Prometheus text format on the node's metrics export port, beside Ray's own and Serve's
(``ray_serve_*``) metrics; Ray's service discovery file lists those ports for Prometheus. With
``prometheus_client`` each replica would need an HTTP server of its own (a port per process,
which scrape configs and the stack's loopback check would have to learn as replicas change), or a
multiprocess directory, which works within one machine only. Measured with Ray 2.60.0 on the
embedded stack: the agent runs and exports with ``include_dashboard=False`` (the dashboard head,
~1 GB here, stays off; only the per-node agent is needed), and binds 127.0.0.1 when the node IP is
loopback (``cluster/loopback.py``).

What Ray's exporter does to them (so dashboards query the right names):

* every name gets the prefix ``ray_``: ``tessera_jobs_total`` is scraped as ``ray_tessera_jobs_total``
  (:func:`exported_name`);
* each series carries Ray's labels too (``WorkerId``, ``NodeAddress``, ``SessionName``, ...): one
  series per process, so queries sum (counters, queue gauges) or take the max (replica counts,
  which every gateway reports) over them;
* values reach the agent every ``metrics_report_interval_ms`` (the embedded stack sets it from
  ``metrics.report_interval_s``), so a scrape lags a recording by up to that interval;
* a process that exits takes its series with it (counters of a dead replica drop out of a sum:
  use ``rate``/``increase``, which Prometheus corrects for resets).

Outside Ray (unit tests, benches in one process) recording works and goes nowhere. Ray's metric
objects are made on first use in each process, so importing this module does not import Ray.

Recording functions for the Denoiser's step batcher, for ``serving/denoiser.py`` to call (nothing
else records these series; until it does they are absent from a scrape, and the dashboard test
for them skips): :func:`record_denoiser_batch` after every batched forward, and
:func:`record_denoiser_queue` whenever its pending steps change.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping
from typing import Literal

logger = logging.getLogger(__name__)

EXPORT_PREFIX = "ray_"
"""What Ray's exporter puts in front of every application metric's name."""

# Bucket boundaries (Ray needs explicit, positive ones).
FAST_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""A step, a forward, a window, a tile: milliseconds on a small model, seconds on a large one."""
JOB_SECONDS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
"""A stage of a whole job, up to an hour."""
BATCH_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
TOKENS = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144)

Kind = Literal["counter", "gauge", "histogram"]


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: Kind
    description: str
    labels: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()
    recorded_by: str = ""
    """Where it is recorded (the README's table; the dashboard test tells which deployment must run)."""


SPECS: tuple[MetricSpec, ...] = (
    MetricSpec("tessera_jobs_submitted_total", "counter", "Jobs accepted at submit (a repeated idempotency key is not a new job).",
               ("mode", "tenant"), recorded_by="Gateway, batch driver"),
    MetricSpec("tessera_jobs_total", "counter", "Jobs that ended, by outcome (succeeded, failed, cancelled) and mode.",
               ("outcome", "mode", "tenant"), recorded_by="JobRunner, Gateway (cancel of a job nobody held)"),
    MetricSpec("tessera_queued_jobs", "gauge", "Jobs a JobRunner replica holds waiting for a running slot, per priority.",
               ("priority",), recorded_by="JobRunner"),
    MetricSpec("tessera_running_jobs", "gauge", "Jobs a JobRunner replica is rendering.", (), recorded_by="JobRunner"),
    MetricSpec("tessera_steps_total", "counter", "Sampler steps of jobs done (a step of a long video covers all its windows); "
               "rate() is steps per second.", recorded_by="JobRunner"),
    MetricSpec("tessera_step_seconds", "histogram", "Wall time of one sampler step of a job, as the job sees it (every window, "
               "hops and fusion included).", boundaries=FAST_SECONDS, recorded_by="JobRunner"),
    MetricSpec("tessera_window_seconds", "histogram", "A Denoiser call as the JobRunner sees it, once per window in the call: "
               "'stream' advances one window through all its steps, 'batch' several windows through one step group.",
               ("call",), FAST_SECONDS, recorded_by="JobRunner"),
    MetricSpec("tessera_denoiser_call_windows", "histogram", "Windows per Denoiser call sent by a JobRunner.",
               ("call",), BATCH_SIZES, recorded_by="JobRunner"),
    MetricSpec("tessera_denoiser_batch_size", "histogram", "Windows in one batched forward of a Denoiser replica (any jobs).",
               ("model",), BATCH_SIZES, recorded_by="Denoiser (step batcher)"),
    MetricSpec("tessera_denoiser_batch_tokens", "histogram", "Latent tokens (patches) in one batched forward.",
               ("model",), TOKENS, recorded_by="Denoiser (step batcher)"),
    MetricSpec("tessera_denoiser_forward_seconds", "histogram", "Wall time of one batched forward (one sampler step of each window).",
               ("model",), FAST_SECONDS, recorded_by="Denoiser (step batcher)"),
    MetricSpec("tessera_denoiser_window_steps_total", "counter", "Window steps the Denoiser ran, by the job's priority.",
               ("model", "priority"), recorded_by="Denoiser (step batcher)"),
    MetricSpec("tessera_denoiser_pending_steps", "gauge", "Window steps waiting on a Denoiser replica, by priority.",
               ("model", "priority"), recorded_by="Denoiser (step batcher)"),
    MetricSpec("tessera_tile_seconds", "histogram", "A Decoder replica's time for one decode tile (VAE decode and H.264).",
               (), FAST_SECONDS, recorded_by="Decoder"),
    MetricSpec("tessera_job_stage_seconds", "histogram", "Seconds a succeeded job spent per stage (queued, expand, denoise, "
               "decode, finalize, total).", ("stage",), JOB_SECONDS, recorded_by="JobRunner"),
    MetricSpec("tessera_video_seconds_total", "counter", "Seconds of video produced by succeeded jobs.", ("mode", "tenant"),
               recorded_by="JobRunner"),
    MetricSpec("tessera_s3_errors_total", "counter", "Object storage requests that failed, by operation and kind "
               "(unavailable, auth, not_found, precondition, other); not_found and precondition are often expected answers.",
               ("operation", "kind"), recorded_by="every process that uses storage"),
    MetricSpec("tessera_s3_retries_total", "counter", "Object storage retries: 'request' (botocore sent an attempt again; "
               "operation: the S3 API name) and 'outage' (a call retried while the store was unreachable; operation: the call).",
               ("operation", "layer"), recorded_by="every process that uses storage"),
    MetricSpec("tessera_requests_rejected_total", "counter", "API calls answered with an error, by reason (unauthenticated, "
               "invalid, quota, no_capacity, too_large, not_found, permission_denied, conflict, unavailable, internal).",
               ("api", "reason"), recorded_by="Gateway, gRPC proxy"),
    MetricSpec("tessera_lease_takeovers_total", "counter", "Jobs a JobRunner replica took over from a holder that stopped renewing.",
               recorded_by="JobRunner"),
    MetricSpec("tessera_deployment_replicas", "gauge", "Replicas per deployment and state, from Serve's controller (every "
               "Gateway replica reports it: take the max).", ("deployment", "state"), recorded_by="Gateway"),
)
BY_NAME: dict[str, MetricSpec] = {spec.name: spec for spec in SPECS}


def exported_name(name: str) -> str:
    """The name a scrape shows for metric ``name`` (Ray's exporter adds ``ray_``)."""
    return EXPORT_PREFIX + name


def scraped_names(spec: MetricSpec) -> set[str]:
    """Every sample name ``spec`` appears under in a scrape."""
    base = exported_name(spec.name)
    if spec.kind == "histogram":
        return {f"{base}_bucket", f"{base}_sum", f"{base}_count"}
    return {base}


# -- the metric objects, one set per process, made on first use ------------------------------------

_lock = threading.Lock()
_metrics: dict[str, object] = {}


def _metric(name: str):
    metric = _metrics.get(name)
    if metric is not None:
        return metric
    with _lock:
        if name not in _metrics:
            from ray.util import metrics as ray_metrics

            spec = BY_NAME[name]
            if spec.kind == "counter":
                _metrics[name] = ray_metrics.Counter(spec.name, description=spec.description, tag_keys=spec.labels)
            elif spec.kind == "gauge":
                _metrics[name] = ray_metrics.Gauge(spec.name, description=spec.description, tag_keys=spec.labels)
            else:
                _metrics[name] = ray_metrics.Histogram(spec.name, description=spec.description, tag_keys=spec.labels,
                                                       boundaries=list(spec.boundaries))
        return _metrics[name]


def _safely(record) -> None:
    """Metrics never fail a request or a job: a recording that raises is logged once per metric."""
    try:
        record()
    except Exception as error:  # noqa: BLE001 - see the docstring
        key = getattr(record, "__qualname__", "?")
        if key not in _failed:
            _failed.add(key)
            logger.warning("a metric could not be recorded (%s): %s", key, error)


_failed: set[str] = set()


def _inc(name: str, value: float = 1.0, **tags: str) -> None:
    if value > 0:  # Ray refuses increments of 0
        _safely(lambda: _metric(name).inc(value, tags=tags or None))


def _observe(name: str, value: float, **tags: str) -> None:
    _safely(lambda: _metric(name).observe(max(0.0, float(value)), tags=tags or None))


GAUGE_REFRESH_S = 1.0
"""How often a process sets its gauges again. Ray exports a gauge only while it is being set:
measured with Ray 2.60 (1 s report interval), a gauge set once in an actor was in the scrape for
20 s and gone at 30 s, as was a JobRunner's ``tessera_running_jobs`` once jobs stopped changing.
Setting every gauge again each second (Ray reports at most once a second) keeps an unchanged
value, 0 running jobs say, in the scrape for as long as its process lives."""
_gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
_gauges_lock = threading.Lock()
_refresher: threading.Thread | None = None


def _set(name: str, value: float, **tags: str) -> None:
    global _refresher
    with _gauges_lock:
        _gauges[(name, tuple(sorted(tags.items())))] = float(value)
        if _refresher is None:
            _refresher = threading.Thread(target=_refresh_gauges, name="tessera-gauges", daemon=True)
            _refresher.start()
    _safely(lambda: _metric(name).set(float(value), tags=tags or None))


def _refresh_gauges() -> None:
    while True:
        time.sleep(GAUGE_REFRESH_S)
        with _gauges_lock:
            values = list(_gauges.items())
        for (name, tags), value in values:
            _safely(lambda: _metric(name).set(value, tags=dict(tags) or None))  # noqa: B023 - called at once


# -- jobs (JobRunner, Gateway) ----------------------------------------------------------------------

Outcome = Literal["succeeded", "failed", "cancelled"]


def record_job_submitted(mode: str, tenant: str) -> None:
    _inc("tessera_jobs_submitted_total", mode=mode, tenant=tenant)


def record_job_ended(outcome: Outcome, mode: str, tenant: str, video_seconds: float = 0.0,
                     stage_seconds: Mapping[str, float] | None = None) -> None:
    """A job's end, recorded by whoever wrote it into the record (once per job). For a succeeded
    job, ``video_seconds`` it produced and its ``stage_seconds`` (stage name -> seconds)."""
    _inc("tessera_jobs_total", outcome=outcome, mode=mode, tenant=tenant)
    if outcome == "succeeded":
        _inc("tessera_video_seconds_total", video_seconds, mode=mode, tenant=tenant)
        for stage, seconds in (stage_seconds or {}).items():
            _observe("tessera_job_stage_seconds", seconds, stage=stage)


def record_job_load(queued_by_priority: Mapping[int, int], running: int, known_priorities: set[int]) -> None:
    """A JobRunner replica's jobs now: waiting per priority, and running. ``known_priorities``
    (updated here) are the priorities this replica reported before, set back to 0 when none wait."""
    known_priorities.update(queued_by_priority)
    for priority in known_priorities:
        _set("tessera_queued_jobs", queued_by_priority.get(priority, 0), priority=str(priority))
    _set("tessera_running_jobs", running)


def record_takeover() -> None:
    _inc("tessera_lease_takeovers_total")


def record_steps(steps: int, seconds: float) -> None:
    """``steps`` sampler steps of one job finished in ``seconds`` (each observed at the average)."""
    if steps <= 0:
        return
    _inc("tessera_steps_total", steps)
    for _ in range(steps):
        _observe("tessera_step_seconds", seconds / steps)


class StepMeter:
    """Turns a job's "steps done so far" reports into :func:`record_steps` calls. Starts at the
    steps a resumed attempt did not redo (those are not counted again)."""

    def __init__(self, done: int = 0):
        self.done = done
        self._at = time.monotonic()

    def update(self, done: int) -> None:
        if done <= self.done:
            return
        now = time.monotonic()
        record_steps(done - self.done, now - self._at)
        self.done, self._at = done, now


def record_denoiser_call(call: Literal["stream", "batch"], windows: int, seconds: float) -> None:
    """A JobRunner's Denoiser call of ``windows`` windows that took ``seconds``."""
    _observe("tessera_denoiser_call_windows", windows, call=call)
    for _ in range(windows):
        _observe("tessera_window_seconds", seconds, call=call)


# -- the Denoiser's step batcher (serving/denoiser.py calls these) ----------------------------------


def record_denoiser_batch(model: str, size: int, tokens: int, seconds: float, priority_counts: Mapping[int | str, int]) -> None:
    """One batched forward of a Denoiser replica: ``size`` windows (one sampler step each), ``tokens``
    latent tokens in all, ``seconds`` of wall time, and how many of its windows came from jobs of
    each priority (``{0: 3, -1: 1}``; the counts sum to ``size``). ``model``: the model's
    ``family/name`` (bounded: one per deployment)."""
    _observe("tessera_denoiser_batch_size", size, model=model)
    _observe("tessera_denoiser_batch_tokens", tokens, model=model)
    _observe("tessera_denoiser_forward_seconds", seconds, model=model)
    for priority, count in priority_counts.items():
        _inc("tessera_denoiser_window_steps_total", count, model=model, priority=str(priority))


def record_denoiser_queue(model: str, pending_by_priority: Mapping[int | str, int], known_priorities: set[str]) -> None:
    """Window steps waiting on this Denoiser replica, per priority. ``known_priorities`` (a set the
    caller keeps, updated here) lets a priority that no longer waits go back to 0."""
    pending = {str(priority): count for priority, count in pending_by_priority.items()}
    known_priorities.update(pending)
    for priority in known_priorities:
        _set("tessera_denoiser_pending_steps", pending.get(priority, 0), model=model, priority=priority)


# -- the Decoder --------------------------------------------------------------------------------------


def record_tile(seconds: float) -> None:
    _observe("tessera_tile_seconds", seconds)


# -- object storage ------------------------------------------------------------------------------------


def record_s3_error(operation: str, kind: str) -> None:
    _inc("tessera_s3_errors_total", operation=operation, kind=kind)


def record_s3_retry(operation: str, layer: Literal["request", "outage"]) -> None:
    _inc("tessera_s3_retries_total", operation=operation, layer=layer)


# -- API rejections -----------------------------------------------------------------------------------


def rejection_reason(error: BaseException) -> str:
    """The ``reason`` label of an error answer (see ``tessera_requests_rejected_total``)."""
    from tessera.serving.errors import InputTooLargeError, TesseraError
    from tessera.serving.jobs.quotas import QuotaExceededError
    from tessera.serving.jobs.submission import NoCapacityError

    if isinstance(error, QuotaExceededError):
        return "quota"
    if isinstance(error, NoCapacityError):
        return "no_capacity"
    if isinstance(error, InputTooLargeError):
        return "too_large"
    code = error.code_name if isinstance(error, TesseraError) else "INTERNAL"
    return _REASONS.get(code, "internal")


_REASONS = {
    "UNAUTHENTICATED": "unauthenticated", "INVALID_ARGUMENT": "invalid", "NOT_FOUND": "not_found",
    "PERMISSION_DENIED": "permission_denied", "FAILED_PRECONDITION": "conflict", "UNAVAILABLE": "unavailable",
    # Serve's own back-pressure and a saturated stage: the cluster had no room.
    "RESOURCE_EXHAUSTED": "no_capacity", "CANCELLED": "conflict", "INTERNAL": "internal",
}


def record_rejection(api: Literal["grpc", "http"], reason: str) -> None:
    _inc("tessera_requests_rejected_total", api=api, reason=reason)


# -- replicas per deployment (each Gateway replica polls Serve's controller) --------------------------


def record_replicas(counts: Mapping[str, Mapping[str, int]], known: set[tuple[str, str]]) -> None:
    """``counts``: deployment -> replica state -> replicas. ``known`` (kept by the caller) lets a
    state that has no replica any more go back to 0."""
    current = {(deployment, state): n for deployment, states in counts.items() for state, n in states.items()}
    known.update(current)
    for deployment, state in known:
        _set("tessera_deployment_replicas", current.get((deployment, state), 0), deployment=deployment, state=state)


def replica_counts(status, application: str) -> dict[str, dict[str, int]]:
    """deployment -> state -> replicas of ``application`` from a :class:`ray.serve.schema.ServeStatus`."""
    app = status.applications.get(application)
    if app is None:
        return {}
    return {name: {str(getattr(state, "value", state)): count for state, count in deployment.replica_states.items()}
            for name, deployment in app.deployments.items()}


class ReplicaReporter:
    """Polls Serve's controller every ``interval_s`` (a daemon thread: ``serve.status()`` blocks)
    and records ``tessera_deployment_replicas`` for this replica's application."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._known: set[tuple[str, str]] = set()
        self._thread = threading.Thread(target=self._run, name="tessera-replica-metrics", daemon=True)

    def start(self) -> ReplicaReporter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        from ray import serve

        application = serve.get_replica_context().app_name
        while not self._stop.is_set():
            try:
                record_replicas(replica_counts(serve.status(), application), self._known)
            except Exception as error:  # noqa: BLE001 - the controller may be restarting; try again later
                logger.debug("replica counts not read: %s", error)
            self._stop.wait(self.interval_s)


# -- Denoiser calls as a JobRunner makes them ------------------------------------------------------


class MeteredStages:
    """A JobRunner's stages (serving/stages.py), with its Denoiser calls timed for
    ``tessera_window_seconds`` and ``tessera_denoiser_call_windows``. Every other attribute is the
    wrapped object's, so the stages' interface may grow without this class knowing."""

    def __init__(self, stages):
        self._stages = stages

    def __getattr__(self, name: str):
        return getattr(self._stages, name)

    async def advance(self, work, *args, **kwargs):
        started = time.monotonic()
        async for update in self._stages.advance(work, *args, **kwargs):
            yield update
        record_denoiser_call("stream", 1, time.monotonic() - started)

    async def advance_batch(self, works, *args, **kwargs):
        started = time.monotonic()
        results = await self._stages.advance_batch(works, *args, **kwargs)
        record_denoiser_call("batch", len(works), time.monotonic() - started)
        return results
