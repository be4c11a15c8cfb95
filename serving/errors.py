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
