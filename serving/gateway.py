"""Gateway: the ingress deployment, for gRPC (``tessera.v1.VideoGeneration`` behind Ray Serve's
gRPC proxy) and HTTP (the OpenAI-compatible ``/v1/videos`` API behind Serve's HTTP proxy).

Thin and stateless, so any number of replicas can run: authenticate, convert messages, and
submit, get, watch, list or cancel jobs through their records in S3 (:class:`JobFront`). It
runs no job and holds no tensor. Every failure is mapped to a gRPC status with a specific
message: Ray Serve would report an unhandled exception as INTERNAL with a Ray traceback.

One deployment serves both protocols, so the Serve application stays single (with several,
gRPC callers would have to send an ``application`` metadata): ``@serve.ingress()`` makes it the
FastAPI ingress of the HTTP proxy, built per replica by ``__serve_build_asgi_app__`` over the
same JobFront (:mod:`tessera.serving.http.openai_videos`), while the gRPC proxy keeps calling
its methods by name.
"""

from __future__ import annotations

import logging

import grpc
from ray import serve

from tessera.models.registry import load_model
from tessera.serving.api import tessera_pb2 as pb
from tessera.serving.api.convert import job_to_proto, progress_to_proto, request_from_proto, state_from_proto
from tessera.serving.auth import Authenticator
from tessera.serving.batches.grpc_api import BatchRPCs
from tessera.serving.config import TesseraConfig
from tessera.serving.errors import InvalidRequestError, TesseraError
from tessera.serving.health import add_healthz_route, check as health_check, watch as health_watch
from tessera.serving.http.openai_videos import VideosAPI, create_app
from tessera.serving.jobs.failures import describe_failure
from tessera.serving.jobs.records import JobState, is_job_id
from tessera.serving.jobs.submission import JobFront, NoCapacityError
from tessera.serving.logs import bind as bind_log_fields, configure_replica_logging
from tessera.serving.metrics import ReplicaReporter, record_rejection, rejection_reason
from tessera.serving.storage import ObjectStore

logger = logging.getLogger("tessera.gateway")

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20


def _set_error(grpc_context, error: Exception) -> None:
    failure = describe_failure(error)
    if not isinstance(error, TesseraError):
        logger.exception("unexpected error in the gateway", exc_info=error)
    reason = rejection_reason(failure)
    record_rejection("grpc", reason)
    logger.info("call refused: %s %s", failure.code_name, reason, extra={"reason": reason})
    grpc_context.set_code(failure.code)
    grpc_context.set_details(failure.message)
    if isinstance(error, NoCapacityError):
        grpc_context.set_trailing_metadata([("grpc-retry-pushback-ms", str(error.retry_after_ms))])


class _StreamFailed(Exception):
    """Ends a streaming RPC whose status is already set on the context.

    Ray Serve 2.60 drops the status of a stream that ends *normally* before its first message
    (the client sees OK and no events); ending it with an exception delivers the status and
    details we set, without a traceback."""


@serve.deployment
@serve.ingress()  # the HTTP app is built on each replica, after __init__: see __serve_build_asgi_app__
class Gateway(BatchRPCs):  # SubmitBatch, GetBatch, ListBatches, CancelBatch, RetryBatch: serving/batches/
    def __init__(self, config: TesseraConfig, job_runner):
        logging.basicConfig(level=logging.INFO)
        configure_replica_logging()
        self.config = config
        self.store = ObjectStore(config.storage)
        self.auth = Authenticator(config.auth)
        model = load_model(config.model, parts=())  # card and schedule only: no weights here
        attempts = 2 * config.deployments.job_runner.most_replicas + 1
        self.jobs = JobFront(config, model, self.store, offer=lambda tenant, job_id: job_runner.offer.remote(tenant, job_id),
                             offer_attempts=attempts)
        self._replicas = ReplicaReporter(config.metrics.replicas_poll_s).start()  # tessera_deployment_replicas

    def __serve_build_asgi_app__(self):
        """The OpenAI-compatible HTTP API over this replica's job front, keys and store."""
        app = create_app()
        app.state.videos = VideosAPI(self.config, self.jobs, self.auth, self.store)
        add_healthz_route(app)  # GET /healthz: the same meaning as grpc.health.v1.Health (serving/health.py)
        return app

    def _tenant(self, grpc_context) -> str:
        tenant = self.auth.tenant(dict(grpc_context.invocation_metadata()))
        bind_log_fields(tenant=tenant)  # every line this call logs from here on names its tenant
        return tenant

    # grpc.health.v1.Health: Serve's proxy routes /grpc.health.v1.Health/Check and /Watch here by
    # method name. No API key: a health check says only whether every stage has a running replica.
    async def Check(self, request, grpc_context):
        return await health_check(request, grpc_context)

    async def Watch(self, request, grpc_context):
        async for answer in health_watch(request):
            yield answer

    async def SubmitJob(self, request: pb.GenerateRequest, grpc_context) -> pb.Job:
        try:
            record = await self.jobs.submit(self._tenant(grpc_context), request_from_proto(request))
            bind_log_fields(tessera_job_id=record.job_id)
            return job_to_proto(record, self.store)
        except Exception as error:
            _set_error(grpc_context, error)
            return pb.Job()

    async def Generate(self, request: pb.GenerateRequest, grpc_context):
        """Submit, then stream the job's progress. A client that goes away ends only the stream:
        the job is durable and goes on (GetJob/WatchJob find it)."""
        try:
            tenant = self._tenant(grpc_context)
            record = await self.jobs.submit(tenant, request_from_proto(request))
            bind_log_fields(tessera_job_id=record.job_id)
            async for event in self._events(tenant, record.job_id, grpc_context):
                yield event
        except Exception as error:
            _set_error(grpc_context, error)
            raise _StreamFailed() from None

    async def WatchJob(self, request: pb.WatchJobRequest, grpc_context):
        bind_log_fields(tessera_job_id=request.job_id if is_job_id(request.job_id) else None)
        try:
            async for event in self._events(self._tenant(grpc_context), request.job_id, grpc_context):
                yield event
        except Exception as error:
            _set_error(grpc_context, error)
            raise _StreamFailed() from None

    async def _events(self, tenant: str, job_id: str, grpc_context):
        """Progress events, then the final job; a failed or cancelled job also ends with its status."""
        async for event in self.jobs.watch(tenant, job_id):
            if event.record is None:
                yield pb.GenerateEvent(job_id=job_id, progress=progress_to_proto(event.progress, self.store))
                continue
            yield pb.GenerateEvent(job_id=job_id, job=job_to_proto(event.record, self.store))
            if event.record.state == JobState.FAILED:
                grpc_context.set_code(getattr(grpc.StatusCode, event.record.error_code, grpc.StatusCode.INTERNAL))
                grpc_context.set_details(event.record.error_message)
            elif event.record.state == JobState.CANCELLED:
                grpc_context.set_code(grpc.StatusCode.CANCELLED)
                grpc_context.set_details(f"job {job_id} was cancelled")

    async def GetJob(self, request: pb.GetJobRequest, grpc_context) -> pb.Job:
        bind_log_fields(tessera_job_id=request.job_id if is_job_id(request.job_id) else None)
        try:
            record = await self.jobs.get(self._tenant(grpc_context), request.job_id)
            return job_to_proto(record, self.store)
        except Exception as error:
            _set_error(grpc_context, error)
            return pb.Job()

    async def CancelJob(self, request: pb.CancelJobRequest, grpc_context) -> pb.Job:
        bind_log_fields(tessera_job_id=request.job_id if is_job_id(request.job_id) else None)
        try:
            record = await self.jobs.cancel(self._tenant(grpc_context), request.job_id)
            return job_to_proto(record, self.store)
        except Exception as error:
            _set_error(grpc_context, error)
            return pb.Job()

    async def ListJobs(self, request: pb.ListJobsRequest, grpc_context) -> pb.ListJobsResponse:
        try:
            tenant = self._tenant(grpc_context)
            if not 0 <= request.page_size <= MAX_PAGE_SIZE:
                raise InvalidRequestError(f"page_size must be between 1 and {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})")
            if request.page_token and not is_job_id(request.page_token):
                raise InvalidRequestError("page_token is not one this API returned")
            if request.state not in pb.JobState.values():
                raise InvalidRequestError(f"unknown job state {request.state}")
            records, token = await self.jobs.list(
                tenant, request.page_size or DEFAULT_PAGE_SIZE, request.page_token, state_from_proto(request.state)
            )
            return pb.ListJobsResponse(jobs=[job_to_proto(r, self.store) for r in records], next_page_token=token)
        except Exception as error:
            _set_error(grpc_context, error)
            return pb.ListJobsResponse()
