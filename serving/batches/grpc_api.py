"""The batch RPCs of ``tessera.v1.VideoGeneration``, mixed into the Gateway deployment: messages
converted here, the work done by :class:`BatchService` (and the batch's driver actor)."""

from __future__ import annotations

import asyncio

from tessera.serving.api import tessera_pb2 as pb
from tessera.serving.batches.service import BatchService, BatchView
from tessera.serving.batches.spec import BatchFileError, BatchSettings, DEFAULT_CONCURRENCY, DEFAULT_MAX_ATTEMPTS, DEFAULT_PRIORITY
from tessera.serving.batches.state import ItemState
from tessera.serving.errors import InvalidRequestError, NotFoundError
from tessera.serving.jobs.inputs import input_key
from tessera.serving.storage import ObjectNotFoundError, ObjectStore


def batch_to_proto(view: BatchView, store: ObjectStore, items: bool = True) -> pb.Batch:
    spec, progress, c = view.spec, view.progress, view.counts
    message = pb.Batch(
        name=spec.name, state=progress.state.value, concurrency=spec.settings.concurrency, priority=spec.settings.priority,
        max_attempts=spec.settings.max_attempts, output_prefix_uri=store.uri(spec.output_prefix.rstrip("/")) + "/",
        created=view.created, source=spec.source,
        wall_time_s=max(0.0, (progress.ended_at or progress.updated_at) - progress.started_at),
        counts=pb.BatchCounts(
            total=c.total, pending=c.pending, queued=c.queued, running=c.running, succeeded=c.succeeded, failed=c.failed,
            cancelled=c.cancelled, invalid=c.invalid, video_seconds=c.video_seconds,
        ),
    )
    if c.eta_s is not None:
        message.counts.eta_s = c.eta_s
    message.created_at.FromNanoseconds(int(spec.created_at * 1e9))
    for line in spec.invalid:
        message.invalid_lines.add(line=line.line, id=line.id, error=line.error)
    if items:
        for item in progress.items:
            entry = message.items.add(line=item.line, id=item.id, state=item.state.value, attempt=item.attempt,
                                      job_id=item.job_id, error=item.error, fraction=item.fraction,
                                      video_seconds=item.video_seconds, seed=item.seed or 0)
            if item.state == ItemState.SUCCEEDED:
                for kind in ("video", "poster", "image"):
                    key = item.outputs.get(kind)
                    if key:
                        setattr(entry, f"{kind}_uri", store.uri(key))
                        if kind != "image":
                            setattr(entry, f"{kind}_url", store.presign_get(key))
    keys = view.report_keys
    if keys:
        for field, name in (("report_jsonl", "report.jsonl"), ("summary", "summary.json"),
                            ("contact_sheet", "contact_sheet.png"), ("html", "report.html")):
            setattr(message.report, f"{field}_uri", store.uri(keys[name]))
            setattr(message.report, f"{field}_url", store.presign_get(keys[name]))
    return message


class BatchRPCs:
    """Gateway methods; expects ``self.config``, ``self.jobs`` (JobFront), ``self.store``,
    ``self._tenant(grpc_context)`` and the module's ``_set_error`` passed as ``_batch_error``."""

    @property
    def _batch_service(self) -> BatchService:
        service = getattr(self, "_batches_service", None)
        if service is None:
            service = self._batches_service = BatchService(self.config, self.jobs.model.card, self.store)
        return service

    def _batch_fail(self, grpc_context, error: Exception) -> None:
        from tessera.serving.gateway import _set_error

        _set_error(grpc_context, error)

    async def SubmitBatch(self, request: pb.SubmitBatchRequest, grpc_context) -> pb.Batch:
        try:
            tenant = self._tenant(grpc_context)
            if bool(request.content) == bool(request.file_uri):
                raise InvalidRequestError("give the batch file as content or as file_uri (one of them)")
            data = request.content
            filename = request.filename
            if request.file_uri:
                data = await asyncio.to_thread(self._read_batch_file, tenant, request.file_uri)
                filename = filename or request.file_uri
            settings = BatchSettings(
                concurrency=request.concurrency or DEFAULT_CONCURRENCY,
                priority=request.priority if request.HasField("priority") else DEFAULT_PRIORITY,
                max_attempts=request.max_attempts or DEFAULT_MAX_ATTEMPTS, skip_invalid=request.skip_invalid,
            ) if _settings_ok(request) else None
            view = await self._batch_service.submit(
                tenant, request.name, data, filename=filename, files=dict(request.files), settings=settings,
                output_prefix_uri=request.output_prefix,
            )
            return batch_to_proto(view, self.store)
        except Exception as error:
            self._batch_fail(grpc_context, error)
            return pb.Batch()

    def _read_batch_file(self, tenant: str, uri: str) -> bytes:
        from tessera.serving.batches.spec import MAX_BATCH_BYTES

        key = input_key("file_uri", uri, bucket=self.store.bucket, tenant=tenant,
                        shared_prefixes=self.config.limits.shared_input_prefixes)
        try:
            size = self.store.head(key).size
            if size > MAX_BATCH_BYTES:
                raise BatchFileError(f"the batch file is {size} bytes; the limit is {MAX_BATCH_BYTES} bytes: split it into several batches")
            return self.store.get_bytes(key)
        except ObjectNotFoundError:
            raise NotFoundError(f"batch file {uri[:80]}: no such object") from None

    async def GetBatch(self, request: pb.GetBatchRequest, grpc_context) -> pb.Batch:
        try:
            view = await self._batch_service.watch_get(self._tenant(grpc_context), request.name)
            return batch_to_proto(view, self.store)
        except Exception as error:
            self._batch_fail(grpc_context, error)
            return pb.Batch()

    async def ListBatches(self, request: pb.ListBatchesRequest, grpc_context) -> pb.ListBatchesResponse:
        try:
            views = await self._batch_service.list(self._tenant(grpc_context))
            return pb.ListBatchesResponse(batches=[batch_to_proto(v, self.store, items=False) for v in views])
        except Exception as error:
            self._batch_fail(grpc_context, error)
            return pb.ListBatchesResponse()

    async def CancelBatch(self, request: pb.CancelBatchRequest, grpc_context) -> pb.Batch:
        try:
            return batch_to_proto(await self._batch_service.cancel(self._tenant(grpc_context), request.name), self.store)
        except Exception as error:
            self._batch_fail(grpc_context, error)
            return pb.Batch()

    async def RetryBatch(self, request: pb.RetryBatchRequest, grpc_context) -> pb.Batch:
        try:
            return batch_to_proto(await self._batch_service.retry(self._tenant(grpc_context), request.name), self.store)
        except Exception as error:
            self._batch_fail(grpc_context, error)
            return pb.Batch()


def _settings_ok(request: pb.SubmitBatchRequest) -> bool:
    from tessera.serving.batches.spec import MAX_ATTEMPTS, MAX_CONCURRENCY
    from tessera.serving.jobs.validation import PRIORITY_RANGE

    if not 0 <= request.concurrency <= MAX_CONCURRENCY:
        raise InvalidRequestError(f"concurrency must be between 1 and {MAX_CONCURRENCY}, got {request.concurrency}")
    if request.HasField("priority") and not PRIORITY_RANGE[0] <= request.priority <= PRIORITY_RANGE[1]:
        raise InvalidRequestError(f"priority must be between {PRIORITY_RANGE[0]} and {PRIORITY_RANGE[1]}, got {request.priority}")
    if not 0 <= request.max_attempts <= MAX_ATTEMPTS:
        raise InvalidRequestError(f"max_attempts must be between 1 and {MAX_ATTEMPTS}, got {request.max_attempts}")
    return True
