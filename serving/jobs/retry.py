"""Riding out storage outages: retry a blocking storage call with backoff, within a time budget.

botocore retries a request a few times within a second; an S3 endpoint that restarts or fails
over is away for longer. Writes a job cannot do without (its outputs, the end of its record)
are retried here for ``budget_s`` and then fail the job with UNAVAILABLE; best-effort writes
(progress, checkpoints) are not retried at all, the next one simply comes later.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from tessera.serving.errors import UnavailableError
from tessera.serving.metrics import record_s3_retry
from tessera.serving.storage import StorageAuthError, StorageUnavailableError

logger = logging.getLogger(__name__)

T = TypeVar("T")


async def retry_storage(call: Callable[..., T], *args, budget_s: float, what: str, first_backoff_s: float = 0.25) -> T:
    """``call(*args)`` in a worker thread, again after each StorageUnavailableError until
    ``budget_s`` has passed; then UnavailableError naming ``what``. Other errors are raised at once."""
    deadline = time.monotonic() + budget_s
    backoff = first_backoff_s
    while True:
        try:
            return await asyncio.to_thread(call, *args)
        except StorageUnavailableError as error:
            left = deadline - time.monotonic()
            if left <= 0:
                raise UnavailableError(
                    f"object storage stayed unreachable for more than {budget_s:g} s while {what}: {error}"[:500]
                ) from None
            logger.warning("storage unavailable while %s; retrying (%.0f s left): %s", what, left, error)
            record_s3_retry(getattr(call, "__name__", "call"), "outage")
            await asyncio.sleep(min(backoff, left))
            backoff = min(backoff * 2, 2.0)
        except StorageAuthError as error:
            raise UnavailableError(f"object storage refused the credentials while {what}: {error}"[:500]) from None
