"""A batch's durable objects in S3, so a restarted (or new) driver resumes where one stopped.

* ``_tessera/batches/{tenant}/{name}/batch.json``     what was submitted (create-only, never changed)
* ``_tessera/batches/{tenant}/{name}/progress.json``  per item: state, attempt, job id, errors (the driver writes it)
* ``_tessera/batches/{tenant}/{name}/cancel``          present once a cancel was asked for
* ``_tessera/batches/{tenant}/{name}/retry.json``      ``{"generation": N}``: retry failed items (N-th request)

Only the batch's driver writes ``progress.json`` (one named actor per batch); callers write only
the control objects, which the driver reads on every round.
"""

from __future__ import annotations

from tessera.serving.batches.state import BatchProgress, BatchSpec
from tessera.serving.errors import NotFoundError
from tessera.serving.jobs.records import PREFIX
from tessera.serving.storage import ObjectExistsError, ObjectNotFoundError, ObjectStore


def batch_root(tenant: str, name: str) -> str:
    return f"{PREFIX}/batches/{tenant}/{name}/"


class BatchStore:
    def __init__(self, store: ObjectStore):
        self.store = store

    def create(self, spec: BatchSpec) -> tuple[BatchSpec, bool]:
        """Write the spec create-only; returns (the stored spec, whether it was new)."""
        key = batch_root(spec.tenant, spec.name) + "batch.json"
        try:
            self.store.put_bytes(key, spec.model_dump_json().encode(), "application/json", if_absent=True)
            return spec, True
        except ObjectExistsError:
            return self.spec(spec.tenant, spec.name), False

    def spec(self, tenant: str, name: str) -> BatchSpec:
        try:
            return BatchSpec.model_validate_json(self.store.get_bytes(batch_root(tenant, name) + "batch.json"))
        except ObjectNotFoundError:
            raise NotFoundError(f"no batch {name!r} for this tenant") from None

    def progress(self, tenant: str, name: str) -> BatchProgress | None:
        try:
            return BatchProgress.model_validate_json(self.store.get_bytes(batch_root(tenant, name) + "progress.json"))
        except ObjectNotFoundError:
            return None

    def write_progress(self, tenant: str, name: str, progress: BatchProgress) -> None:
        self.store.put_bytes(batch_root(tenant, name) + "progress.json", progress.model_dump_json().encode(), "application/json")

    def request_cancel(self, tenant: str, name: str) -> None:
        self.store.put_bytes(batch_root(tenant, name) + "cancel", b"", "text/plain")

    def cancel_requested(self, tenant: str, name: str) -> bool:
        return self.store.exists(batch_root(tenant, name) + "cancel")

    def request_retry(self, tenant: str, name: str) -> int:
        key = batch_root(tenant, name) + "retry.json"
        generation = self.retry_generation(tenant, name) + 1
        self.store.put_json(key, {"generation": generation})
        return generation

    def retry_generation(self, tenant: str, name: str) -> int:
        try:
            return int(self.store.get_json(batch_root(tenant, name) + "retry.json")["generation"])
        except ObjectNotFoundError:
            return 0

    def names(self, tenant: str) -> list[str]:
        prefix = f"{PREFIX}/batches/{tenant}/"
        return sorted({key[len(prefix):].split("/", 1)[0] for key in self.store.iter_keys(prefix) if key.endswith("/batch.json")})
