"""Health of the Serve application, for load balancers, orchestrators and ``tessera status``.

**SERVING** only when every deployment (stage) of the application has at least one replica in
Serve's ``RUNNING`` state (Serve's own view, from its controller through :func:`ray.serve.status`,
which counts only replicas that started and pass Serve's health checks); otherwise
**NOT_SERVING**, naming the stages that have none. A stage scaled to zero, or whose only replica
died and is being replaced, is NOT_SERVING until a replica runs again.

Two doors, one meaning, neither needing an API key (they tell only whether the service can take
work):

* gRPC, on the API's port: the standard ``grpc.health.v1.Health`` service (``Check`` and
  ``Watch``, package ``grpcio-health-checking``). Serve's gRPC proxy imports
  :func:`add_HealthServicer_to_server` from ``grpc_servicer_functions`` (serving/app.py) and routes
  a call to the ingress deployment's method of the same *name* (``/grpc.health.v1.Health/Check``
  calls ``Gateway.Check``), so the Gateway implements ``Check`` and ``Watch`` with
  :func:`check` and :func:`watch`.
* HTTP: ``GET /healthz`` on the HTTP port (:func:`add_healthz_route`): 200 when SERVING, 503
  when not, with the :class:`HealthReport` as JSON.

Each Gateway replica asks the controller at most once per :data:`CACHE_S` however many probes
arrive (:func:`health_report`), so frequent probes cost the controller nothing more.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable

import grpc

HEALTH_SERVICE = "grpc.health.v1.Health"
HEALTH_SERVICER = "tessera.serving.health.add_HealthServicer_to_server"
SERVICES = ("", "tessera.v1.VideoGeneration")
"""Service names a health check may ask about: '' (the whole server) and the API."""
CACHE_S = 0.5
WATCH_POLL_S = 1.0


@dataclasses.dataclass(frozen=True)
class HealthReport:
    serving: bool
    application: str
    running: dict[str, int]
    """Running replicas per deployment."""
    problem: str = ""

    @property
    def status(self) -> str:
        return "SERVING" if self.serving else "NOT_SERVING"

    def as_dict(self) -> dict:
        return {"status": self.status, "application": self.application,
                "deployments": {name: {"running_replicas": n} for name, n in sorted(self.running.items())},
                **({"problem": self.problem} if self.problem else {})}


def _state_name(state) -> str:
    return str(getattr(state, "value", state))


def report_from_status(status, application: str) -> HealthReport:
    """The report for ``application`` from a :class:`ray.serve.schema.ServeStatus` (pure)."""
    app = status.applications.get(application)
    if app is None:
        return HealthReport(False, application, {}, f"application {application!r} is not deployed")
    running = {
        name: sum(count for state, count in deployment.replica_states.items() if _state_name(state) == "RUNNING")
        for name, deployment in app.deployments.items()
    }
    if not running:
        return HealthReport(False, application, running, "the application has no deployments yet")
    missing = sorted(name for name, count in running.items() if count == 0)
    problem = f"no running replica of {', '.join(missing)}" if missing else ""
    return HealthReport(not missing, application, running, problem)


def _serve_report() -> HealthReport:
    """Serve's status of this replica's application (a blocking call to the controller)."""
    from ray import serve

    application = serve.get_replica_context().app_name
    try:
        return report_from_status(serve.status(), application)
    except Exception as error:  # noqa: BLE001 - a controller that cannot answer means not serving
        return HealthReport(False, application, {}, f"Serve's status is unavailable ({type(error).__name__})")


class HealthMonitor:
    """The latest report, refreshed at most every ``cache_s`` (one read in flight at a time)."""

    def __init__(self, read: Callable[[], HealthReport] = _serve_report, cache_s: float = CACHE_S):
        self._read = read
        self._cache_s = cache_s
        self._report: HealthReport | None = None
        self._at = 0.0
        self._lock: asyncio.Lock | None = None

    async def report(self) -> HealthReport:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._report is None or time.monotonic() - self._at >= self._cache_s:
                self._report = await asyncio.to_thread(self._read)
                self._at = time.monotonic()
            return self._report


_monitor = HealthMonitor()


async def health_report() -> HealthReport:
    """This process's (cached) report: what ``Health/Check``, ``Health/Watch`` and ``/healthz`` answer."""
    return await _monitor.report()


# -- gRPC: grpc.health.v1.Health ---------------------------------------------------------------


def _pb():
    from grpc_health.v1 import health_pb2

    return health_pb2


def add_HealthServicer_to_server(servicer, server) -> None:  # noqa: N802 - the generated function's name
    """Register ``grpc.health.v1.Health`` (Check, Watch) the way serving/api/servicer.py registers
    the API: undecodable requests get INVALID_ARGUMENT in the proxy."""
    from tessera.serving.api.servicer import add_guarded_service, method_handlers

    pb = _pb()
    methods = {"Check": (pb.HealthCheckRequest, pb.HealthCheckResponse, False),
               "Watch": (pb.HealthCheckRequest, pb.HealthCheckResponse, True)}
    add_guarded_service(server, HEALTH_SERVICE, method_handlers(servicer, methods))


def _answer(report: HealthReport):
    pb = _pb()
    status = pb.HealthCheckResponse.SERVING if report.serving else pb.HealthCheckResponse.NOT_SERVING
    return pb.HealthCheckResponse(status=status)


async def check(request, grpc_context, monitor: Callable | None = None):
    """``Health/Check``: the status now; NOT_FOUND for a service this server does not have."""
    if request.service not in SERVICES:
        grpc_context.set_code(grpc.StatusCode.NOT_FOUND)
        grpc_context.set_details(f"unknown service {request.service[:100]!r}; ask about '' or {SERVICES[1]!r}")
        return _pb().HealthCheckResponse()
    return _answer(await (monitor or health_report)())


async def watch(request, monitor: Callable | None = None, poll_s: float = WATCH_POLL_S) -> AsyncIterator:
    """``Health/Watch``: the status now, then every change, until the client goes away
    (SERVICE_UNKNOWN once for an unknown service, as the protocol says, then silence)."""
    pb = _pb()
    if request.service not in SERVICES:
        yield pb.HealthCheckResponse(status=pb.HealthCheckResponse.SERVICE_UNKNOWN)
        while True:
            await asyncio.sleep(3600)
    last = None
    while True:
        answer = _answer(await (monitor or health_report)())
        if answer.status != last:
            last = answer.status
            yield answer
        await asyncio.sleep(poll_s)


# -- HTTP: /healthz ------------------------------------------------------------------------------

HEALTHZ_PATH = "/healthz"


def add_healthz_route(app, monitor: Callable | None = None) -> None:
    """``GET /healthz`` on a FastAPI app: 200 and the report when SERVING, 503 and the report when not."""
    from fastapi.responses import JSONResponse

    @app.get(HEALTHZ_PATH, summary="Health: 200 when every stage has a running replica, else 503", tags=["health"])
    async def healthz():
        report = await (monitor or health_report)()
        return JSONResponse(report.as_dict(), status_code=200 if report.serving else 503)
