"""Per-tenant quotas (``quotas`` in the config), enforced at submit by any gateway replica.

Gateways are stateless, so the counts come from the bucket, where the job records are the
source of truth:

* **max_concurrent_jobs**: the tenant's active markers, ``_tessera/active/{tenant}/{job_id}``
  (written with the record, deleted when the job ends; serving/jobs/records.py). One LIST per
  1000 active jobs, no reads.
* **max_queued_jobs**: those active jobs whose record is QUEUED. The records are read only when
  the tenant has more active jobs than the limit (with fewer it cannot be over): one GET per
  active job then.
* **max_video_seconds_per_hour**: one empty *usage marker* per accepted job,
  ``_tessera/usage/{tenant}/{job_id}.{video milliseconds}``: the key carries what the record's
  spec says the job renders. Job ids sort newest first and carry their creation time, so the
  listing stops at the first job older than an hour: one LIST per 1000 jobs of the last hour, no
  reads. A marker outlives its job (a failed, cancelled or deleted job was still work asked
  for); each submit deletes a few markers older than two hours, so they do not pile up.

**Races** (several gateways, one tenant, at once): each submit counts first, without writing
anything (a tenant already at its limit is refused cheaply), then writes its record, active
marker and usage marker, and counts again *with itself included*. Over a limit it withdraws its
own job (the record's conditional delete, as for a full queue: serving/jobs/records.py) and gets
RESOURCE_EXHAUSTED. S3 lists what was written before the LIST began (strong read-after-write
consistency, AWS S3 and the embedded server alike), so of several racing submits the last to
count sees them all: together they never pass a limit. At the limit, contention can refuse more
than the excess (each racer sees the others and backs off): a client retries. What is left: a
job that a JobRunner scan claims between the write and the withdraw stands (scans leave new
jobs alone for ``jobs.claim_grace_s`` and the gateway offers the job only after the check, so
this needs a gateway stalled for seconds in between), and a gateway whose clock is off by more
than a few seconds shifts its jobs in the hour window (job ids carry its clock).

**Cost** per submit of a tenant with quotas: two LISTs of its active markers, two LISTs of its
usage markers (one page each up to 1000 jobs), one PUT (the usage marker), the record GETs of the
queued count when it applies, and up to 10 DELETEs of stale markers. A tenant without quotas
costs nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from tessera.serving.config import QuotasConfig, TenantQuota
from tessera.serving.errors import NotFoundError, ResourceExhaustedError
from tessera.serving.jobs.records import _ALPHABET, _TIME_CHARS, PREFIX, JobRecord, JobState, JobStore, is_job_id
from tessera.serving.storage import ObjectStore

logger = logging.getLogger(__name__)

WINDOW_S = 3600.0
STALE_S = 2 * WINDOW_S
MAX_STALE_DELETES = 10


class QuotaExceededError(ResourceExhaustedError):
    """A submit over one of its tenant's quotas; ``quota`` names it (e.g. ``max_concurrent_jobs``)."""

    def __init__(self, quota: str, message: str):
        super().__init__(f"quota {quota} exceeded: {message}")
        self.quota = quota


def job_id_time(job_id: str) -> float:
    """The Unix time a job id was made (:func:`records.new_job_id` in reverse)."""
    countdown = 0
    for char in job_id[:_TIME_CHARS]:
        countdown = countdown * 32 + _ALPHABET.index(char)
    return ((1 << (5 * _TIME_CHARS)) - 1 - countdown) / 1000


def active_prefix(tenant: str) -> str:
    return f"{PREFIX}/active/{tenant}/"


def usage_prefix(tenant: str) -> str:
    return f"{PREFIX}/usage/{tenant}/"


def usage_key(record: JobRecord) -> str:
    return f"{usage_prefix(record.tenant)}{record.job_id}.{video_ms(record)}"


def video_ms(record: JobRecord) -> int:
    """What a job counts against ``max_video_seconds_per_hour``, in milliseconds (an image: one frame)."""
    return max(0, round(record.spec.duration_s * 1000))


@dataclasses.dataclass
class Usage:
    active: int = 0
    queued: int = 0
    video_ms: int = 0


class QuotaGuard:
    """Counts a tenant's use from the bucket and refuses what would pass its quota."""

    def __init__(self, config: QuotasConfig, store: ObjectStore):
        self.config = config
        self.store = store
        self.jobs = JobStore(store)

    def quota(self, tenant: str) -> TenantQuota:
        return self.config.of(tenant)

    # -- counting ---------------------------------------------------------------------------
    def _active_ids(self, tenant: str, stop_after: int) -> list[str]:
        ids = []
        prefix = active_prefix(tenant)
        for key in self.store.iter_keys(prefix):
            ids.append(key[len(prefix):])
            if len(ids) >= stop_after:
                break
        return ids

    def _queued(self, tenant: str, ids: list[str], stop_after: int) -> int:
        queued = 0
        for job_id in ids:
            try:
                if self.jobs.get(tenant, job_id).state == JobState.QUEUED:
                    queued += 1
            except NotFoundError:  # ended and deleted between the listing and the read
                continue
            if queued >= stop_after:
                break
        return queued

    def _video_ms(self, tenant: str, now: float) -> int:
        """Milliseconds of video the tenant submitted since ``now - WINDOW_S``; deletes a few stale markers."""
        prefix, since = usage_prefix(tenant), now - WINDOW_S
        total, start_after = 0, None
        while True:
            keys = self.store.list_keys(prefix, start_after=start_after, limit=1000)
            for index, key in enumerate(keys):
                job_id, _, millis = key[len(prefix):].partition(".")
                if not is_job_id(job_id) or not millis.isdigit():
                    continue
                if job_id_time(job_id) < since:  # newest first: everything after this is older
                    self._delete_stale(prefix, keys[index:], now)
                    return total
                total += int(millis)
            if len(keys) < 1000:
                return total
            start_after = keys[-1]

    def _delete_stale(self, prefix: str, keys: list[str], now: float) -> None:
        stale = [key for key in keys if is_job_id(job := key[len(prefix):].partition(".")[0]) and job_id_time(job) < now - STALE_S]
        for key in stale[:MAX_STALE_DELETES]:
            try:
                self.store.delete(key)
            except Exception as error:  # noqa: BLE001 - housekeeping only
                logger.warning("could not delete a stale usage marker: %s", type(error).__name__)
                return

    def usage(self, tenant: str, quota: TenantQuota, new_jobs: int) -> Usage:
        """The counts ``quota`` limits (only those), enough to judge a submit of ``new_jobs`` more."""
        usage = Usage()
        limits = [q for q in (quota.max_concurrent_jobs, quota.max_queued_jobs) if q is not None]
        if limits:
            ids = self._active_ids(tenant, stop_after=max(limits) + 1)
            usage.active = len(ids)
            if quota.max_queued_jobs is not None and usage.active + new_jobs > quota.max_queued_jobs:
                usage.queued = self._queued(tenant, ids, stop_after=quota.max_queued_jobs + 1)
        if quota.max_video_seconds_per_hour is not None:
            usage.video_ms = self._video_ms(tenant, time.time())
        return usage

    # -- the checks JobFront.submit makes ---------------------------------------------------
    def precheck_jobs(self, tenant: str) -> None:
        """Before any write or media probe: refuse a job its tenant has no room for (job counts only)."""
        quota = self.quota(tenant)
        if quota.max_concurrent_jobs is None and quota.max_queued_jobs is None:
            return
        plain = quota.model_copy(update={"max_video_seconds_per_hour": None})
        self._judge(tenant, plain, self.usage(tenant, plain, new_jobs=1), new_jobs=1, this_ms=0)

    def precheck_seconds(self, tenant: str, ms: int) -> None:
        """Once the request is resolved, still before any write: refuse seconds past the hour's quota."""
        quota = self.quota(tenant)
        if quota.max_video_seconds_per_hour is None:
            return
        seconds = TenantQuota(max_video_seconds_per_hour=quota.max_video_seconds_per_hour)
        self._judge(tenant, seconds, self.usage(tenant, seconds, new_jobs=1), new_jobs=1, this_ms=ms)

    def record(self, record: JobRecord) -> bool:
        """Write the job's usage marker (only for a tenant with a seconds quota); True if written."""
        if self.quota(record.tenant).max_video_seconds_per_hour is None:
            return False
        self.store.put_bytes(usage_key(record), b"", content_type="text/plain")
        return True

    def recheck(self, record: JobRecord) -> None:
        """After the job's record and markers are written: refuse if, counting it, its tenant is over."""
        quota = self.quota(record.tenant)
        if not quota.limited:
            return
        self._judge(record.tenant, quota, self.usage(record.tenant, quota, new_jobs=0), new_jobs=0, this_ms=video_ms(record))

    def release(self, record: JobRecord) -> None:
        """Take back the usage marker of a job that was withdrawn."""
        if self.quota(record.tenant).max_video_seconds_per_hour is not None:
            self.store.delete(usage_key(record))

    def _judge(self, tenant: str, quota: TenantQuota, usage: Usage, new_jobs: int, this_ms: int) -> None:
        """Raise for the first limit that the counts (``new_jobs`` more, ``this_ms`` of them this job's) pass."""
        where = f"quotas.tenants.{tenant}" if tenant in self.config.tenants else "quotas.default"
        if quota.max_concurrent_jobs is not None and usage.active + new_jobs > quota.max_concurrent_jobs:
            raise QuotaExceededError(
                "max_concurrent_jobs",
                f"tenant {tenant} may have {quota.max_concurrent_jobs} jobs queued or running at once and has "
                f"{usage.active + new_jobs - 1} besides this one; wait for one to end ({where}.max_concurrent_jobs)",
            )
        if quota.max_queued_jobs is not None and usage.queued + new_jobs > quota.max_queued_jobs:
            raise QuotaExceededError(
                "max_queued_jobs",
                f"tenant {tenant} may have {quota.max_queued_jobs} jobs waiting to start and has "
                f"{usage.queued + new_jobs - 1} besides this one; wait for one to start ({where}.max_queued_jobs)",
            )
        limit = quota.max_video_seconds_per_hour
        total = usage.video_ms + (this_ms if new_jobs else 0)
        if limit is not None and total > round(limit * 1000):
            raise QuotaExceededError(
                "max_video_seconds_per_hour",
                f"tenant {tenant} may submit {limit:g} s of video per hour and submitted {(total - this_ms) / 1000:g} s "
                f"in the last hour; this job's {this_ms / 1000:g} s would pass it; retry later or ask for less "
                f"({where}.max_video_seconds_per_hour)",
            )
