"""Leases: how engine replicas own the jobs they run, through the job's record in S3.

A replica *acquires* a job by a conditional update of its record (``If-Match`` on the etag it
read) that writes a :class:`~tessera.serving.jobs.records.Lease` with the next fencing token.
Of several replicas racing for one job exactly one write succeeds. The holder then *renews*
by writing the record (progress, heartbeat) at least every ``heartbeat_s``, always with
``If-Match`` on the etag of its own last write, so:

* a write that fails its precondition means somebody else wrote the record: the holder
  re-reads it; if the lease still carries its token, the other writer was a gateway asking to
  cancel (the only field a non-holder may set), which is merged and written again; otherwise
  the lease was taken over and the holder has lost the job (:class:`LeaseLost`);
* a replica that is paused or partitioned past its TTL can never overwrite the new owner's
  record, whatever its clock says: its next write fails.

A lease *expires* when the record has not changed for ``ttl_s`` as seen by the observing
replica's own monotonic clock (:class:`ExpiryWatch`), so no two clocks are ever compared.
Everything else a holder writes (checkpoints, staged outputs) goes under keys named by its
token and only becomes part of the job through a fenced record write: see ``engine.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from tessera.serving.jobs.records import JobRecord, JobStore, Lease
from tessera.serving.jobs.retry import retry_storage
from tessera.serving.storage import ConditionFailedError, ObjectNotFoundError, StorageError

logger = logging.getLogger(__name__)


class LeaseLost(Exception):
    """Another replica holds this job's lease now (or the record is gone): stop, write nothing."""


def acquire(store: JobStore, record: JobRecord, etag: str, owner: str, ttl_s: float) -> tuple[JobRecord, str] | None:
    """Write a lease for ``owner`` into ``record`` if it is still at ``etag`` (blocking).

    Returns the leased record and its new etag, or None when another writer got there first."""
    leased = record.model_copy(deep=True)
    token = record.last_lease_token + 1
    leased.lease = Lease(owner=owner, token=token, acquired_at=time.time(), ttl_s=ttl_s)
    leased.last_lease_token = token
    if record.lease is not None:
        leased.takeovers += 1
    try:
        return leased, store.write(leased, etag)
    except (ConditionFailedError, ObjectNotFoundError):
        return None


class LeasedJob:
    """A job this replica holds: the record as this replica sees it and the etag of its last write.

    Change ``record`` freely in memory; :meth:`write` makes it durable, fenced by the lease."""

    def __init__(self, store: JobStore, record: JobRecord, etag: str, storage_budget_s: float):
        if record.lease is None:
            raise ValueError("a LeasedJob needs a record with a lease")
        self.store = store
        self.record = record
        self.etag = etag
        self.token = record.lease.token
        self.storage_budget_s = storage_budget_s
        self.lost = False
        self.last_write = time.monotonic()
        self._lock = asyncio.Lock()

    @property
    def job_id(self) -> str:
        return self.record.job_id

    @property
    def tenant(self) -> str:
        return self.record.tenant

    async def write(self, essential: bool = True) -> bool:
        """Write the record (renewing the lease). Raises LeaseLost if the lease is gone.

        ``essential``: ride out a storage outage for the budget, then raise UnavailableError;
        otherwise (progress, heartbeats) give up at once and return False."""
        async with self._lock:
            if self.lost:
                raise LeaseLost(self.job_id)
            while True:
                try:
                    if essential:
                        self.etag = await retry_storage(
                            self.store.write, self.record, self.etag, budget_s=self.storage_budget_s,
                            what=f"recording job {self.job_id}",
                        )
                    else:
                        self.etag = await asyncio.to_thread(self.store.write, self.record, self.etag)
                    self.last_write = time.monotonic()
                    return True
                except ConditionFailedError:
                    await self._merge_or_lose()
                except ObjectNotFoundError:
                    self.lost = True
                    raise LeaseLost(self.job_id) from None
                except StorageError as error:
                    if essential:
                        raise
                    logger.warning("job %s: record not written, the next heartbeat retries: %s", self.job_id, error)
                    return False

    async def _merge_or_lose(self) -> None:
        """Someone else wrote the record: keep going if it was only a cancel request."""
        remote, remote_etag = await asyncio.to_thread(self.store.read, self.tenant, self.job_id)
        if remote.lease is None or remote.lease.token != self.token:
            self.lost = True
            logger.warning("job %s: lease %d lost (now %s)", self.job_id, self.token,
                           f"token {remote.lease.token} of {remote.lease.owner}" if remote.lease else "released")
            raise LeaseLost(self.job_id)
        self.record.cancel_requested = self.record.cancel_requested or remote.cancel_requested
        self.etag = remote_etag


@dataclasses.dataclass
class ExpiryWatch:
    """Tells when another replica's lease has expired, by this replica's own clock: the record's
    etag must stay the same for the whole TTL while this replica keeps reading it successfully."""

    seen: dict[str, tuple[str, float]] = dataclasses.field(default_factory=dict)
    """job id -> (etag, monotonic time it was first seen unchanged)."""

    def expired(self, job_id: str, etag: str, ttl_s: float, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        first = self.seen.get(job_id)
        if first is None or first[0] != etag:
            self.seen[job_id] = (etag, now)
            return False
        return now - first[1] >= ttl_s

    def forget(self, job_id: str) -> None:
        self.seen.pop(job_id, None)

    def reset(self) -> None:
        """Storage could not be read: what was seen before says nothing about the time since."""
        self.seen.clear()
