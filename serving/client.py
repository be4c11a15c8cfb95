"""Python client for Tessera's gRPC API (synchronous).

    from tessera.serving.client import TesseraClient

    with TesseraClient("127.0.0.1:9000") as client:   # the embedded stack's key is found by itself
        job = client.generate("a red circle moving right", duration_s=2,
                              on_progress=lambda p: print(p.fraction))
        print(job.video_uri, job.video_url)
        client.download(job, "out.mp4")

        # Every generation mode is a keyword argument (see tessera.v1.GenerateRequest); images
        # and videos are paths, bytes or s3:// URIs of the deployment's bucket.
        still = client.generate("a blue square", image=True, width=128, height=128)
        animated = client.generate("a red circle moving left", from_image="frame.png", duration_s=3)
        longer = client.generate("the circle keeps moving", extend_video=animated.video_uri, extend_seconds=2)
        edited = client.generate("a green circle moving left", edit_video="clip.mp4", strength=0.5)
        bridged = client.generate("", transition_from="a.mp4", transition_to="b.mp4", transition_seconds=2)
        looped = client.generate("a yellow square moving down", loop=True, duration_s=4)
        shots = client.generate("", character="a red circle", shots=[
            {"prompt": "moving left", "duration_s": 2},
            {"prompt": "moving right", "duration_s": 2, "transition": "blend"},
        ])
"""

from __future__ import annotations

import collections
import ipaddress
import os
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

from tessera.serving.api import tessera_pb2 as pb
from tessera.serving.api import tessera_pb2_grpc as pb_grpc
from tessera.serving.api.convert import request_to_proto
from tessera.serving.auth import AUTHORIZATION_METADATA, read_key_file
from tessera.serving.jobs.spec import GenerationRequest, MediaInput, ShotRequest

JobState = pb.JobState


class TesseraError(Exception):
    """A call failed; ``code`` is the gRPC status, ``job`` the job when the server sent one."""

    def __init__(self, code: grpc.StatusCode, message: str, job: pb.Job | None = None):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.job = job


MEDIA_FIELDS = ("from_image", "extend_video", "edit_video", "transition_from", "transition_to")


def media_input(value: str | Path | bytes | MediaInput) -> MediaInput:
    """An input image or video: ``s3://`` URIs are passed on, paths are read and sent inline."""
    if isinstance(value, MediaInput):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return MediaInput(data=bytes(value))
    text = str(value)
    if text.startswith("s3://"):
        return MediaInput(uri=text)
    return MediaInput(data=Path(text).expanduser().read_bytes())


def shot_request(value: dict | ShotRequest) -> ShotRequest:
    if isinstance(value, ShotRequest):
        return value
    fields = dict(value)
    if "transition" in fields:
        fields["transition"] = str(fields["transition"]).upper()
    return ShotRequest(**fields)


def is_loopback_address(address: str) -> bool:
    """Whether a ``host:port`` gRPC address names this machine's loopback interface."""
    host = address.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:").rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_api_key(address: str, api_key: str | None = None, home: str | Path | None = None) -> str | None:
    """The key a client sends: ``api_key`` if given ('' sends none), else ``$TESSERA_API_KEY``, else,
    for a loopback address only, the embedded stack's key file (``home``/api_key, ``home``
    defaulting to ``$TESSERA_HOME`` or ``~/.tessera``). The local stack's key is never sent to
    another machine."""
    if api_key is not None:
        return api_key or None
    if os.environ.get("TESSERA_API_KEY"):
        return os.environ["TESSERA_API_KEY"]
    return read_key_file(home) if is_loopback_address(address) else None


class _CallDetails(
    collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
    grpc.ClientCallDetails,
):
    pass


class _BearerKey(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds ``authorization: Bearer KEY`` to every call on the channel (one that sets its own keeps it)."""

    def __init__(self, key: str):
        self._pair = (AUTHORIZATION_METADATA, f"Bearer {key}")

    def _details(self, details):
        metadata = list(details.metadata or ())
        if not any(name == AUTHORIZATION_METADATA for name, _ in metadata):
            metadata.append(self._pair)
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)


class TesseraClient:
    def __init__(
        self,
        address: str = "127.0.0.1:9000",
        api_key: str | None = None,
        timeout_s: float | None = None,
        home: str | Path | None = None,
    ):
        """``timeout_s`` bounds each unary call; streams (generate, watch) take their own ``timeout_s``.

        ``api_key``: the key every call sends (as ``authorization: Bearer KEY``); None finds one
        (:func:`resolve_api_key`: ``$TESSERA_API_KEY``, or the embedded stack's key file under
        ``home`` for a loopback address); '' sends none."""
        self.address = address
        channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
        key = resolve_api_key(address, api_key, home)
        self._channel = grpc.intercept_channel(channel, _BearerKey(key)) if key else channel
        self._stub = pb_grpc.VideoGenerationStub(self._channel)
        self._metadata: list[tuple[str, str]] = []
        self._timeout_s = timeout_s
        self.has_key = key is not None

    def __enter__(self) -> TesseraClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    # -- requests ------------------------------------------------------------------------
    @staticmethod
    def request(prompt: str, **fields) -> pb.GenerateRequest:
        """Build a request; keyword names are those of ``tessera.v1.GenerateRequest``.

        Media fields (``from_image``, ``extend_video``, ``edit_video``, ``transition_from``,
        ``transition_to``) take a local path, bytes, or an ``s3://`` URI; ``shots`` takes dicts
        ``{"prompt", "duration_s", "transition": "cut"|"blend"}``."""
        for name in MEDIA_FIELDS:
            if fields.get(name) is not None:
                fields[name] = media_input(fields[name])
        if "shots" in fields:
            fields["shots"] = tuple(shot_request(shot) for shot in fields["shots"])
        return request_to_proto(GenerationRequest(prompt=prompt, **fields))

    def _unary(self, method, message):
        try:
            return method(message, metadata=self._metadata, timeout=self._timeout_s)
        except grpc.RpcError as error:
            raise TesseraError(error.code(), error.details() or "") from None

    def generate(
        self,
        prompt: str,
        *,
        on_progress: Callable[[pb.Progress], None] | None = None,
        timeout_s: float | None = None,
        **fields,
    ) -> pb.Job:
        """Render and wait; returns the finished job. Raises :class:`TesseraError` (with
        ``job`` set when the job was created but failed or was cancelled)."""
        return self._follow(self._stub.Generate, self.request(prompt, **fields), on_progress, timeout_s)

    def submit(self, prompt: str, **fields) -> pb.Job:
        return self._unary(self._stub.SubmitJob, self.request(prompt, **fields))

    def get(self, job_id: str) -> pb.Job:
        return self._unary(self._stub.GetJob, pb.GetJobRequest(job_id=job_id))

    def wait(
        self, job_id: str, on_progress: Callable[[pb.Progress], None] | None = None, timeout_s: float | None = None
    ) -> pb.Job:
        """Follow a job until it ends; returns it (raises like :meth:`generate` if it did not succeed)."""
        return self._follow(self._stub.WatchJob, pb.WatchJobRequest(job_id=job_id), on_progress, timeout_s)

    def cancel(self, job_id: str) -> pb.Job:
        return self._unary(self._stub.CancelJob, pb.CancelJobRequest(job_id=job_id))

    def list(self, page_size: int = 20, page_token: str = "", state: int = pb.JOB_STATE_UNSPECIFIED) -> pb.ListJobsResponse:
        return self._unary(self._stub.ListJobs, pb.ListJobsRequest(page_size=page_size, page_token=page_token, state=state))

    def iter_jobs(self, state: int = pb.JOB_STATE_UNSPECIFIED, page_size: int = 50) -> Iterator[pb.Job]:
        """Every job of the tenant, newest first, across pages."""
        token = ""
        while True:
            page = self.list(page_size=page_size, page_token=token, state=state)
            yield from page.jobs
            token = page.next_page_token
            if not token:
                return

    def _follow(self, method, message, on_progress, timeout_s) -> pb.Job:
        job = None
        try:
            for event in method(message, metadata=self._metadata, timeout=timeout_s):
                if event.HasField("job"):
                    job = event.job
                elif on_progress is not None:
                    on_progress(event.progress)
        except grpc.RpcError as error:
            raise TesseraError(error.code(), error.details() or "", job) from None
        if job is None:
            raise TesseraError(grpc.StatusCode.UNKNOWN, "the stream ended without a final job event")
        return job

    # -- batches -------------------------------------------------------------------------
    def submit_batch(
        self, source: str | Path | bytes, *, name: str = "", filename: str = "", concurrency: int = 0,
        priority: int | None = None, output_prefix: str = "", skip_invalid: bool = False, max_attempts: int = 0,
        base_dir: str | Path | None = None,
    ) -> pb.Batch:
        """Submit a batch file: a local path (media paths in it are read relative to its folder and
        sent along), bytes, or an ``s3://`` URI the cluster reads. Resubmitting resumes it."""
        from tessera.serving.batches.spec import referenced_paths

        message = pb.SubmitBatchRequest(name=name, concurrency=concurrency, output_prefix=output_prefix,
                                        skip_invalid=skip_invalid, max_attempts=max_attempts)
        if priority is not None:
            message.priority = priority
        if isinstance(source, (bytes, bytearray)):
            message.content, message.filename = bytes(source), filename
        elif str(source).startswith("s3://"):
            message.file_uri, message.filename = str(source), filename or str(source)
        else:
            path = Path(source).expanduser()
            message.content, message.filename = path.read_bytes(), filename or path.name
            base_dir = base_dir or path.parent
        if message.content and base_dir is not None:
            for ref in referenced_paths(message.content, message.filename):
                local = Path(base_dir) / ref if not Path(ref).is_absolute() else Path(ref)
                if local.is_file():
                    message.files[ref] = local.read_bytes()
        return self._unary(self._stub.SubmitBatch, message)

    def get_batch(self, name: str) -> pb.Batch:
        return self._unary(self._stub.GetBatch, pb.GetBatchRequest(name=name))

    def list_batches(self) -> list[pb.Batch]:
        return list(self._unary(self._stub.ListBatches, pb.ListBatchesRequest()).batches)

    def cancel_batch(self, name: str) -> pb.Batch:
        return self._unary(self._stub.CancelBatch, pb.CancelBatchRequest(name=name))

    def retry_batch(self, name: str) -> pb.Batch:
        return self._unary(self._stub.RetryBatch, pb.RetryBatchRequest(name=name))

    def wait_batch(self, name: str, on_progress: Callable[[pb.Batch], None] | None = None, poll_s: float = 1.0,
                   timeout_s: float | None = None) -> pb.Batch:
        """Poll the batch until it ended and its report is written; returns it."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            batch = self.get_batch(name)
            if on_progress is not None:
                on_progress(batch)
            if batch.state != "RUNNING" and batch.report.html_uri:
                return batch
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"batch {name} still {batch.state} after {timeout_s:.0f} s")
            time.sleep(poll_s)

    @staticmethod
    def download_batch_results(batch: pb.Batch, folder: str | Path, videos: bool = False, timeout_s: float = 60.0) -> list[Path]:
        """The report files (and with ``videos`` every item's video) into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        wanted = [(batch.report.report_jsonl_url, "report.jsonl"), (batch.report.summary_url, "summary.json"),
                  (batch.report.contact_sheet_url, "contact_sheet.png"), (batch.report.html_url, "report.html")]
        if videos:
            wanted += [(item.video_url, f"{item.id}/video.mp4") for item in batch.items if item.video_url]
        paths = []
        for url, name in wanted:
            if not url:
                continue
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            with urllib.request.urlopen(url, timeout=timeout_s) as response, open(path, "wb") as out:
                shutil.copyfileobj(response, out)
            paths.append(path)
        return paths

    # -- outputs -------------------------------------------------------------------------
    @staticmethod
    def download(job: pb.Job, path: str | Path, timeout_s: float = 60.0) -> Path:
        """Fetch the job's video (or, in image mode, its image) through its presigned URL into ``path``."""
        url = job.video_url or job.image_url
        if not url:
            raise ValueError(f"job {job.job_id} has no video or image URL (state {pb.JobState.Name(job.state)})")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        with urllib.request.urlopen(url, timeout=timeout_s) as response, open(partial, "wb") as out:
            shutil.copyfileobj(response, out)
        partial.replace(path)
        return path

    def health(self, service: str = "", timeout_s: float = 10.0) -> str:
        """``grpc.health.v1.Health/Check``: 'SERVING' when every stage has a running replica, else
        'NOT_SERVING' (or 'SERVICE_UNKNOWN'); needs no key."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            answer = health_pb2_grpc.HealthStub(self._channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as error:
            raise TesseraError(error.code(), error.details() or "") from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)

    def wait_until_ready(self, timeout_s: float = 120.0) -> None:
        """Block until the Tessera application answers (the proxy may be up before it)."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                self._stub.ListJobs(pb.ListJobsRequest(page_size=1), metadata=self._metadata, timeout=5)
                return
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                    return  # the application itself answered
                last = f"{error.code().name}: {error.details()}"
            time.sleep(0.5)
        raise TimeoutError(f"Tessera at {self.address} not ready after {timeout_s:.0f} s ({last})")
