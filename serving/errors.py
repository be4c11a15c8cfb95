"""Errors with a gRPC status: raised anywhere in serving, mapped once at the gateway.

Every failure a caller can see is one of these, with a message written for the caller.
Anything else reaching the gateway is reported as INTERNAL with a short, traceback-free
message, and logged in full on the server.
"""

from __future__ import annotations

import grpc


class TesseraError(Exception):
    """Base class: a failure with the gRPC status it maps to."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    @property
    def code_name(self) -> str:
        return self.code.name


class InvalidRequestError(TesseraError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(TesseraError):
    code = grpc.StatusCode.NOT_FOUND


class UnauthenticatedError(TesseraError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhaustedError(TesseraError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class InputTooLargeError(ResourceExhaustedError):
    """An input above a size limit: RESOURCE_EXHAUSTED over gRPC, 413 over HTTP (retrying cannot help)."""


class PermissionDeniedError(TesseraError):
    code = grpc.StatusCode.PERMISSION_DENIED


class FailedPreconditionError(TesseraError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class UnavailableError(TesseraError):
    code = grpc.StatusCode.UNAVAILABLE


class CancelledError(TesseraError):
    code = grpc.StatusCode.CANCELLED


class InternalError(TesseraError):
    code = grpc.StatusCode.INTERNAL


def error_from_code(code_name: str, message: str) -> TesseraError:
    """Rebuild an error from a stored status name (job records keep failures as plain data)."""
    for cls in (
        InvalidRequestError,
        NotFoundError,
        UnauthenticatedError,
        ResourceExhaustedError,
        PermissionDeniedError,
        FailedPreconditionError,
        UnavailableError,
        CancelledError,
    ):
        if cls.code.name == code_name:
            return cls(message)
    return InternalError(message)


DESCRIBE_LIMIT = 60
"""Characters of a caller's value that an error message quotes at most."""


def describe_value(value: object, limit: int = DESCRIBE_LIMIT) -> str:
    """A caller's value for an error message, never unbounded: ``'abc'``, or ``'abc…' (1048576 characters)``.

    Strings and bytes are quoted as ``repr`` does (control characters escaped, so a message stays
    one printable line) and cut to about ``limit`` characters as shown, saying how long they
    were. Error details travel in gRPC trailing metadata (a few KiB at most): a message that
    echoes a whole input can be larger than the input allows (RESOURCE_EXHAUSTED on the client)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        cut, width = 0, 0
        for byte in data[: limit + 1]:
            width += len(repr(bytes([byte]))) - 3
            if width > limit:
                break
            cut += 1
        if cut >= len(data):
            return repr(data)
        quoted = repr(data[:cut])
        return f"{quoted[:-1]}…{quoted[-1]} ({len(data)} bytes)"
    if isinstance(value, str):
        cut, width = 0, 0
        for char in value[: limit + 1]:
            width += len(repr(char)) - 2
            if width > limit:
                break
            cut += 1
        if cut >= len(value):
            return repr(value)
        return f"{value[:cut] + '…'!r} ({len(value)} characters)"
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"


def validation_message(error: Exception, what: str) -> str:
    """A short caller-facing summary of a pydantic ``ValidationError``, without the input values."""
    try:
        problems = error.errors(include_input=False, include_url=False, include_context=False)  # type: ignore[attr-defined]
    except Exception:  # not a ValidationError, or an older pydantic: say only what failed
        return f"{what} is not valid"
    parts = []
    for problem in problems[:5]:
        location = ".".join(str(part) for part in problem.get("loc", ())) or what
        parts.append(f"{location}: {str(problem.get('msg', 'invalid'))[:120]}")
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    return f"{what} is not valid: " + "; ".join(parts) + more
