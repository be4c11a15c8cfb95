"""Tessera's errors as the OpenAI API's HTTP statuses and error bodies.

Every error answer is ``{"error": {"message", "type", "param", "code"}}``, as the OpenAI API
sends it, so the SDK raises its own exception class for the status (BadRequestError for 400,
AuthenticationError for 401, NotFoundError for 404, ConflictError for 409, RateLimitError for
429, InternalServerError for 5xx...). The message is Tessera's own, specific one.

Errors that retrying cannot fix carry ``x-should-retry: false``, which the SDK obeys (it would
otherwise retry 409s); capacity errors carry ``Retry-After`` (seconds) and ``retry-after-ms``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi.responses import JSONResponse

from tessera.serving.errors import InputTooLargeError, TesseraError
from tessera.serving.jobs.failures import describe_failure
from tessera.serving.jobs.submission import NoCapacityError
from tessera.serving.metrics import record_rejection, rejection_reason

logger = logging.getLogger("tessera.http")

# gRPC status name -> (HTTP status, error type, error code)
STATUS_MAP: dict[str, tuple[int, str, str]] = {
    "INVALID_ARGUMENT": (400, "invalid_request_error", "invalid_value"),
    "NOT_FOUND": (404, "invalid_request_error", "not_found"),
    "UNAUTHENTICATED": (401, "invalid_request_error", "invalid_api_key"),
    "PERMISSION_DENIED": (403, "permission_error", "permission_denied"),
    "FAILED_PRECONDITION": (409, "invalid_request_error", "conflict"),
    "RESOURCE_EXHAUSTED": (429, "rate_limit_error", "rate_limit_exceeded"),
    "UNAVAILABLE": (503, "server_error", "service_unavailable"),
    "CANCELLED": (409, "invalid_request_error", "cancelled"),
    "INTERNAL": (500, "server_error", "internal_error"),
}
INPUT_TOO_LARGE = (413, "invalid_request_error", "request_too_large")
# HTTP status -> the reason label of tessera_requests_rejected_total, for errors made here (not from a TesseraError)
STATUS_REASONS = {400: "invalid", 401: "unauthenticated", 403: "permission_denied", 404: "not_found", 405: "not_found",
                  409: "conflict", 413: "too_large", 429: "no_capacity", 503: "unavailable"}

# Tessera request fields named at the start of validation messages -> the API parameter they came from.
DEFAULT_PARAMS: dict[str, str] = {
    "prompt": "prompt", "width": "size", "height": "size", "aspect_ratio": "aspect_ratio", "short_side": "short_side",
    "duration_s": "seconds", "num_frames": "seconds", "from_image": "input_reference", "extend_video": "video",
    "edit_video": "video", "extend_seconds": "seconds", "negative_prompt": "negative_prompt", "seed": "seed",
    "steps": "steps", "fps": "fps", "guidance_scale": "guidance_scale", "strength": "strength",
    "idempotency_key": "idempotency_key", "priority": "priority",
}


class APIError(Exception):
    """An answer in the API's error shape."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: Mapping[str, str] | None = None, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or STATUS_REASONS.get(status, "internal")
        """Why the call was refused, for the metrics (see serving/metrics.py)."""
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        """The error answer; every one is counted here (errors inside an event stream are not answers)."""
        record_rejection("http", self.reason)
        headers = dict(self.headers)
        if 400 <= self.status < 500 and self.status != 429:
            headers.setdefault("x-should-retry", "false")
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def invalid(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, type="invalid_request_error", param=param, code=code)


def _param_of(message: str, params: Mapping[str, str]) -> str | None:
    head = message.split(" ", 1)[0].split(".", 1)[0].split("[", 1)[0].rstrip(":,")
    return params.get(head)


def api_error(error: BaseException, params: Mapping[str, str] | None = None) -> APIError:
    """Any exception as the API's error; ``params`` maps Tessera field names to the route's parameters."""
    if isinstance(error, APIError):
        return error
    failure = describe_failure(error) if isinstance(error, Exception) else describe_failure(RuntimeError(str(error)))
    if not isinstance(error, TesseraError):
        logger.exception("unexpected error in the HTTP API", exc_info=error)
    status, kind, code = INPUT_TOO_LARGE if isinstance(failure, InputTooLargeError) else STATUS_MAP.get(
        failure.code_name, STATUS_MAP["INTERNAL"])
    headers: dict[str, str] = {}
    if isinstance(failure, NoCapacityError):
        headers = {"Retry-After": str(max(1, round(failure.retry_after_ms / 1000))), "retry-after-ms": str(failure.retry_after_ms)}
    elif status == 503:
        headers = {"Retry-After": "1"}
    param = _param_of(failure.message, {**DEFAULT_PARAMS, **(params or {})}) if status == 400 else None
    return APIError(status, failure.message, type=kind, param=param, code=code, headers=headers,
                    reason=rejection_reason(failure))


def failure_code(code_name: str) -> tuple[str, str]:
    """(error type, error code) for a failed job's stored status name, for the Video's ``error``."""
    _, kind, code = STATUS_MAP.get(code_name, STATUS_MAP["INTERNAL"])
    return kind, code
