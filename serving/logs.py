"""Structured logs: one JSON line per event, carrying the job, the request and the tenant.

Ray Serve writes each replica's log to ``<Ray session>/logs/serve/replica_<app>_<deployment>_<id>.log``;
with ``LoggingConfig(encoding="JSON")`` (set per deployment from ``logs`` in the config,
:func:`serve_logging_config`) every line is a JSON object with Ray's and Serve's context
(``deployment``, ``replica``, ``request_id``, ``worker_id``, ...) and any ``extra`` attribute of the
record. That formatter is installed on Serve's own logger, ``ray.serve``, which does not
propagate; Tessera logs under ``tessera.*``, so :func:`configure_replica_logging` (called first in
every deployment's constructor) hands the ``tessera`` logger the very same handlers: Tessera's
lines land in the same file, in the same shape, beside Serve's access lines.

The fields Tessera adds come from context variables, so call sites do not pass them:

* ``tessera_job_id``: the job (not ``job_id``: that key is Ray's job id, which Ray's context filter
  writes into every record, and Serve deletes it from replica records);
* ``tenant``: who the call or job is for (a name, never a key: keys are never logged);
* ``request_id``: Serve's request id (a client may send its own, ``x-request-id`` over HTTP,
  ``request_id`` metadata over gRPC). The gateway stores it in the job's record, and the job
  runner adopts it as the Serve request id of the job's attempt (:func:`job_context`), so Serve
  stamps it on every stage call the job makes: the PromptExpander's, Denoiser's and Decoder's
  lines of a job share the request id of the call that submitted it.

The batch driver is a plain Ray actor, not a Serve replica: :func:`configure_process_logging`
gives it the same JSON formatter on stderr (its Ray worker log, ``worker-*.err``).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Iterator

from tessera.serving.config import LogsConfig

JOB_FIELD = "tessera_job_id"
TENANT_FIELD = "tenant"
REQUEST_FIELD = "request_id"
FIELDS = (JOB_FIELD, TENANT_FIELD, REQUEST_FIELD)

_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("tessera_log_context", default={})


class ContextFilter(logging.Filter):
    """Adds the context's fields to every record that does not carry them already."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if value and not getattr(record, key, None):
                setattr(record, key, value)
        return True


def bind(**fields: str | None) -> None:
    """Set fields (``tessera_job_id``, ``tenant``, ``request_id``) for the rest of this task's work
    (asyncio tasks copy the context they start in: what a request binds stays with it)."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown log fields {sorted(unknown)}; expected {FIELDS}")
    _context.set({**_context.get(), **{k: v for k, v in fields.items() if v}})


@contextlib.contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """:func:`bind` for a block only."""
    token = _context.set(dict(_context.get()))
    try:
        bind(**fields)
        yield
    finally:
        _context.reset(token)


def current_request_id() -> str:
    """The request id of the call being served: one bound here, else Serve's ('' outside Serve)."""
    bound = _context.get().get(REQUEST_FIELD)
    if bound:
        return bound
    try:
        from ray.serve.context import _get_serve_request_context

        return _get_serve_request_context().request_id or ""
    except Exception:  # noqa: BLE001 - outside Ray (unit tests, benches)
        return ""


def job_context(job_id: str, tenant: str, request_id: str) -> None:
    """Bind a job's fields for the rest of this task (a job's attempt) and make ``request_id``
    Serve's request id of the task, so the stage calls it makes carry it (see the module doc).

    ``ray.serve.context._set_request_context`` is private, but it is the function Serve itself
    uses to set the context that its handles read (``default_impl.get_request_metadata``); Ray is
    pinned. Without Serve (benches) only the log fields are bound."""
    bind(tessera_job_id=job_id, tenant=tenant, request_id=request_id or None)
    if not request_id:
        return
    try:
        from ray.serve.context import _set_request_context

        _set_request_context(request_id=request_id)
    except Exception:  # noqa: BLE001 - outside Ray
        pass


def serve_logging_config(logs: LogsConfig) -> dict:
    """Serve's ``logging_config`` for every deployment (a dict of ``ray.serve.schema.LoggingConfig``)."""
    return {"encoding": logs.encoding, "log_level": logs.level, "enable_access_log": logs.access_log}


_CONFIGURED = False


def configure_replica_logging() -> None:
    """In a Serve replica: ``tessera.*`` records go to Serve's replica log handlers, with the context
    fields, at the level of the deployment's ``logging_config`` (Serve sets it on its logger before
    the constructor runs). Once per process: a replica is one process."""
    global _CONFIGURED
    serve_logger = logging.getLogger("ray.serve")
    tessera = logging.getLogger("tessera")
    tessera.setLevel(serve_logger.level or logging.INFO)
    if _CONFIGURED:
        return
    context = ContextFilter()
    for handler in serve_logger.handlers:
        # On Serve's handlers, so Serve's own lines (access lines, warnings) carry the fields too.
        handler.addFilter(context)
        tessera.addHandler(handler)
    if serve_logger.handlers:
        tessera.propagate = False  # else each line would also go to the root logger's stderr handler, as text
    _CONFIGURED = True


def configure_process_logging(logs: LogsConfig) -> None:
    """In a Ray actor that is not a Serve replica (the batch driver): ``tessera.*`` as JSON lines on
    stderr (Ray's own formatter and context filter: worker, node, actor ids), or as text."""
    global _CONFIGURED
    tessera = logging.getLogger("tessera")
    tessera.setLevel(logs.level)
    if _CONFIGURED:
        return
    handler = logging.StreamHandler(sys.stderr)
    if logs.encoding == "JSON":
        from ray._common.filters import CoreContextFilter
        from ray._common.formatters import JSONFormatter

        handler.setFormatter(JSONFormatter())
        handler.addFilter(CoreContextFilter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s -- %(message)s"))
    handler.addFilter(ContextFilter())
    tessera.addHandler(handler)
    tessera.propagate = False
    _CONFIGURED = True
