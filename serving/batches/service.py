"""The gateway's side of batches: submit (parse, validate, store, start the driver), status,
list, cancel, retry and results. Stateless like the rest of the gateway: everything is in S3,
and the work is done by the batch's driver actor (:mod:`.driver`)."""

from __future__ import annotations

import asyncio
import hashlib
import time

from tessera.serving.batches import spec as batch_spec
from tessera.serving.batches.driver import ensure_driver
from tessera.serving.batches.report import REPORT_FILES
from tessera.serving.batches.state import BatchProgress, BatchSpec, BatchState, counts, initial_progress
from tessera.serving.batches.store import BatchStore
from tessera.serving.config import TesseraConfig
from tessera.serving.errors import FailedPreconditionError
from tessera.serving.jobs.spec import MediaInput
from tessera.serving.storage import ObjectStore

CANCEL_WAIT_S = 30.0


class BatchView:
    """A batch as the API shows it: its spec, its latest progress, and the report's keys."""

    def __init__(self, spec: BatchSpec, progress: BatchProgress, created: bool = False):
        self.spec = spec
        self.progress = progress
        self.created = created
        self.counts = counts(spec, progress)

    @property
    def report_keys(self) -> dict[str, str]:
        if not self.progress.report_written:
            return {}
        return {name: self.spec.output_prefix + name for name in REPORT_FILES}


class BatchService:
    def __init__(self, config: TesseraConfig, card, objects: ObjectStore, start_driver=ensure_driver):
        self.config = config
        self.card = card
        self.objects = objects
        self.batches = BatchStore(objects)
        self._start_driver = start_driver

    async def submit(
        self, tenant: str, name: str, data: bytes, *, filename: str = "", files: dict[str, bytes] | None = None,
        settings: batch_spec.BatchSettings, output_prefix_uri: str = "",
    ) -> BatchView:
        name = batch_spec.check_name(name or batch_spec.name_from_file(filename))
        files = files or {}
        if sum(len(v) for v in files.values()) > batch_spec.MAX_BATCH_FILE_BYTES:
            raise batch_spec.BatchFileError(
                f"the local media files of this batch are more than {batch_spec.MAX_BATCH_FILE_BYTES} bytes; "
                f"upload them to the bucket and give s3:// URIs in the file"
            )
        prefix = batch_spec.check_output_prefix(output_prefix_uri, self.objects.bucket, tenant, name)
        parsed = batch_spec.parse_batch(data, self.card, self.config.limits, filename=filename, priority=settings.priority,
                                        files=files.get)
        batch_spec.require_valid(parsed, settings.skip_invalid)
        items = await asyncio.to_thread(self._store_inline_media, tenant, name, parsed.items)
        digest = hashlib.sha256(parsed.file_sha256.encode() + settings.model_dump_json().encode() + prefix.encode()).hexdigest()
        spec = BatchSpec(name=name, tenant=tenant, created_at=time.time(), file_sha256=digest, source=filename,
                         settings=settings, items=items, invalid=parsed.invalid, output_prefix=prefix)
        stored, created = await asyncio.to_thread(self.batches.create, spec)
        if not created and stored.file_sha256 != spec.file_sha256:
            raise FailedPreconditionError(
                f"batch {name!r} already exists with another file or other settings; give a new --name "
                f"(resubmitting the same file with the same settings resumes it)"
            )
        progress = await asyncio.to_thread(self.batches.progress, tenant, name)
        if progress is None or not progress.state.terminal:
            await self._start_driver(self.config, tenant, name)
        return await self.get(tenant, name, created=created)

    def _store_inline_media(self, tenant: str, name: str, items: list) -> list:
        """Local files sent with the batch, stored under ``{tenant}/batches/{name}/inputs/`` (so the
        items' jobs read them like any s3:// input in the tenant's prefix)."""
        out = []
        for item in items:
            update = {}
            for field, media in item.request.media().items():
                if media.data is None:
                    continue
                key = f"{tenant}/batches/{name}/inputs/{media.sha256}"
                if not self.objects.exists(key):
                    self.objects.put_bytes(key, media.data)
                update[field] = MediaInput(uri=self.objects.uri(key))
            out.append(item.model_copy(update={"request": item.request.model_copy(update=update)}) if update else item)
        return out

    async def get(self, tenant: str, name: str, created: bool = False) -> BatchView:
        batch_spec.check_name(name)
        spec = await asyncio.to_thread(self.batches.spec, tenant, name)
        progress = await asyncio.to_thread(self.batches.progress, tenant, name) or initial_progress(spec)
        if progress.state.terminal and not progress.cancelled and \
                await asyncio.to_thread(self.batches.retry_generation, tenant, name) > progress.retry_generation:
            # A retry was asked for and the driver has not taken it up yet: the batch runs again and
            # its report no longer stands (else a caller waiting for the retry sees the old end).
            progress = progress.model_copy(update={"state": BatchState.RUNNING, "report_written": False, "ended_at": None})
        return BatchView(spec, progress, created)

    async def watch_get(self, tenant: str, name: str) -> BatchView:
        """The batch, with its driver started again if the batch has not ended (a driver that
        died is replaced, and resumes from the state in S3)."""
        view = await self.get(tenant, name)
        if not view.progress.state.terminal:
            await self._start_driver(self.config, tenant, name)
        return view

    async def list(self, tenant: str) -> list[BatchView]:
        names = await asyncio.to_thread(self.batches.names, tenant)
        return [await self.get(tenant, name) for name in names]

    async def cancel(self, tenant: str, name: str) -> BatchView:
        view = await self.get(tenant, name)
        if view.progress.state.terminal:
            if view.progress.state == BatchState.CANCELLED:
                return view
            raise FailedPreconditionError(f"batch {name!r} already ended as {view.progress.state.value}; nothing to cancel")
        await asyncio.to_thread(self.batches.request_cancel, tenant, name)
        await self._start_driver(self.config, tenant, name)
        deadline = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < deadline:
            view = await self.get(tenant, name)
            if view.progress.state.terminal and view.progress.report_written:
                break
            await asyncio.sleep(0.5)
        return view

    async def retry(self, tenant: str, name: str) -> BatchView:
        view = await self.get(tenant, name)
        if view.progress.cancelled:
            raise FailedPreconditionError(f"batch {name!r} was cancelled; submit it again under a new --name")
        if not view.counts.failed:
            raise FailedPreconditionError(f"batch {name!r} has no failed items to retry")
        await asyncio.to_thread(self.batches.request_retry, tenant, name)
        await self._start_driver(self.config, tenant, name)
        return await self.get(tenant, name)
