"""Python client for Tessera's gRPC API (synchronous).

    from tessera.serving.client import TesseraClient

    with TesseraClient("127.0.0.1:9000") as client:
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

import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

from tessera.serving.api import tessera_pb2 as pb
from tessera.serving.api import tessera_pb2_grpc as pb_grpc
from tessera.serving.api.convert import request_to_proto
from tessera.serving.auth import API_KEY_METADATA
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


class TesseraClient:
    def __init__(self, address: str = "127.0.0.1:9000", api_key: str | None = None, timeout_s: float | None = None):
        """``timeout_s`` bounds each unary call; streams (generate, watch) take their own ``timeout_s``."""
        self.address = address
        self._channel = grpc.insecure_channel(
            address, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        )
        self._stub = pb_grpc.VideoGenerationStub(self._channel)
        self._metadata = [(API_KEY_METADATA, api_key)] if api_key else []
        self._timeout_s = timeout_s

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
