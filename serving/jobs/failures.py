"""Any exception from a render, turned into the caller-facing error its job record keeps."""

from __future__ import annotations

from tessera.serving.errors import InternalError, ResourceExhaustedError, TesseraError, UnavailableError
from tessera.serving.storage import StorageError


def describe_failure(error: Exception) -> TesseraError:
    """The error for the job's record: specific where the cause is known, never a traceback."""
    if isinstance(error, TesseraError):
        return error
    if isinstance(error, StorageError):
        return UnavailableError(f"object storage failed: {error}"[:500])
    try:
        import ray.exceptions
        from ray.serve.exceptions import BackPressureError

        if isinstance(error, BackPressureError):
            return ResourceExhaustedError("a model stage is saturated; retry later")
        if isinstance(error, (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)):
            return UnavailableError(f"a model replica died while rendering and none came back in time: {type(error).__name__}")
        if isinstance(error, ray.exceptions.RayTaskError):
            cause = error.as_instanceof_cause()
            if isinstance(cause, TesseraError):
                return cause
            first_line = str(error.cause).strip().splitlines()[0] if str(error.cause).strip() else ""
            return InternalError(f"a model stage failed: {type(error.cause).__name__}: {first_line}"[:500])
    except ImportError:  # the engine also runs outside Ray (benchmarks)
        pass
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return InternalError(f"render failed: {type(error).__name__}: {first_line}"[:500])
