"""The OpenAI videos API (``/v1/videos``) over Tessera's jobs: a FastAPI app the Gateway serves
through Ray Serve's HTTP proxy, beside its gRPC methods (one Serve application, one ingress).

Every route works through the Gateway's :class:`~tessera.serving.jobs.submission.JobFront`, so
a video created here is a job like any other: the same records, validation, engine, limits and
tenants (the same API keys, sent as ``Authorization: Bearer KEY``). Routes, as the ``openai``
SDK's ``client.videos`` calls them:

==============================================  ===============================================
``POST /v1/videos``                             create: text to video, or image to video with
                                                ``input_reference``
``GET /v1/videos/{id}``                         retrieve
``GET /v1/videos``                              list (``after``, ``limit``, ``order``)
``DELETE /v1/videos/{id}``                      delete (a job that runs is cancelled first)
``GET /v1/videos/{id}/content``                 download (``variant`` video, thumbnail, spritesheet)
``POST /v1/videos/extensions``                  extend a completed (or uploaded) video
``POST /v1/videos/edits``                       video to video (SDEdit) of a video
``POST /v1/videos/{id}/remix``                  video to video of a completed video, by id
``GET /v1/videos/{id}/events``                  Tessera's own: progress as server-sent events
``POST /v1/videos/characters``, ``GET ...``     answered: not supported (no reference identities)
``GET /v1/openapi.json``                        this API's OpenAPI document
==============================================  ===============================================

Request bodies are ``multipart/form-data`` (what the SDK sends, uploads included), or JSON.
Tessera's own request fields (seed, steps, fps, negative_prompt, guidance_scale...) are accepted
beside the API's (the SDK's ``extra_body``); an unknown field is refused, never ignored.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from tessera.serving.auth import API_KEY_METADATA, Authenticator
from tessera.serving.config import TesseraConfig
from tessera.serving.errors import (
    FailedPreconditionError,
    NotFoundError,
    TesseraError,
    UnauthenticatedError,
    describe_value,
)
from tessera.serving.http.errors import APIError, api_error, invalid
from tessera.serving.http.objects import (
    STATUS,
    ErrorResponse,
    Video,
    VideoDeleted,
    VideoList,
    VideoProgress,
    percent,
    video_object,
)
from tessera.serving.http.spritesheet import contact_sheet
from tessera.serving.jobs.records import JobRecord, JobState, Stage, is_job_id
from tessera.serving.jobs.spec import GenerationRequest, MediaInput
from tessera.serving.jobs.submission import JobEvent, JobFront
from tessera.serving.logs import bind as bind_log_fields
from tessera.serving.storage import ObjectNotFoundError, ObjectStore, StorageError

logger = logging.getLogger("tessera.http")

API_PREFIX = "/v1"
OPENAPI_URL = f"{API_PREFIX}/openapi.json"
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
STREAM_CHUNK = 1 << 20
POLL_AFTER_HEADER = "openai-poll-after-ms"
MAX_FORM_FIELDS = 64
BODY_SLACK = 1 << 20
"""Bytes a request body may hold beyond its media: the other fields, multipart framing."""


# --- request bodies ----------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageReference(_Body):
    """``input_reference`` given as a reference instead of an upload."""

    image_url: str | None = Field(None, description="A data: URL (base64), or an s3:// URI in this deployment's bucket.")
    file_id: str | None = Field(None, description="Not supported (Tessera has no Files API).")


class VideoReference(_Body):
    """``video`` given as the id of a completed video instead of an upload."""

    id: str = Field(..., description="The id of a completed video (a Tessera job id).")


class TesseraOptions(_Body):
    """Tessera's request fields beyond the API's (the SDK's ``extra_body``); each as in ``tessera.v1.GenerateRequest``."""

    negative_prompt: str | None = Field(None, description="What to steer away from.")
    seed: int | None = Field(None, description="Seed of the initial noise; same seed, same video.")
    steps: int | None = Field(None, description="Sampler steps (the model's default when unset).")
    fps: float | None = Field(None, description="Frames per second (the model's default when unset).")
    guidance_scale: float | None = Field(None, description="Classifier-free guidance scale.")
    idempotency_key: str | None = Field(None, description="Repeating the call returns the same video (also the Idempotency-Key header).")
    priority: int | None = Field(None, description="Higher runs first among queued jobs.")
    skip_prompt_expansion: bool | None = Field(None, description="Render the prompt as written.")
    aspect_ratio: str | None = Field(None, description="'W:H' with short_side, instead of size.")
    short_side: int | None = Field(None, description="Short side in pixels, with aspect_ratio.")
    image_is_last_frame: bool | None = Field(None, description="With input_reference: the image is the last frame, not the first.")
    loop: bool | None = Field(None, description="A video whose last frame flows into its first.")
    strength: float | None = Field(None, description="Edits and remixes: SDEdit strength in (0, 1] (default 0.6).")
    backward: bool | None = Field(None, description="Extensions: the new seconds come before the video's start.")


def _number_as_text(cls, value):
    """``seconds`` is a string in the API; a JSON number is taken as its text."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


class CreateVideoBody(TesseraOptions):
    """``POST /v1/videos``."""

    prompt: str = Field(..., description="What to render.")
    model: str | None = Field(None, description="The deployed model's name (e.g. native/tiny) or an alias; default: it.")
    seconds: str | None = Field(None, description="Length in seconds, as a string (default: limits.default_duration_s).")
    size: str | None = Field(None, description="WIDTHxHEIGHT; sizes the model cannot render are refused, never resized.")
    input_reference: bytes | str | ImageReference | None = Field(
        None, description="An image (upload, data: URL or s3:// URI): image to video, the image is the first frame."
    )

    _seconds_as_text = field_validator("seconds", mode="before")(_number_as_text)


class ExtendVideoBody(TesseraOptions):
    """``POST /v1/videos/extensions``."""

    prompt: str = Field(..., description="What happens in the new seconds.")
    seconds: str = Field(..., description="Seconds of new video (the result is the stitched whole).")
    video: bytes | str | VideoReference = Field(..., description="An upload, {id} of a completed video, or an s3:// URI.")

    _seconds_as_text = field_validator("seconds", mode="before")(_number_as_text)


class EditVideoBody(TesseraOptions):
    """``POST /v1/videos/edits``."""

    prompt: str = Field(..., description="What the edited video shows.")
    video: bytes | str | VideoReference = Field(..., description="An upload, {id} of a completed video, or an s3:// URI.")


class RemixVideoBody(TesseraOptions):
    """``POST /v1/videos/{id}/remix``."""

    prompt: str = Field(..., description="What the remixed video shows.")


BODY_MODELS = (CreateVideoBody, ExtendVideoBody, EditVideoBody, RemixVideoBody)

# Tessera field names at the start of validation messages -> each route's own parameter names.
CREATE_PARAMS = {"from_image": "input_reference", "duration_s": "seconds", "num_frames": "seconds"}
EXTEND_PARAMS = {"extend_video": "video", "extend_seconds": "seconds", "duration_s": "seconds"}
EDIT_PARAMS = {"edit_video": "video"}


# --- what the routes need from the gateway -------------------------------------------------------


class VideosAPI:
    """The Gateway's job front, keys and store, as the routes use them (one per replica)."""

    def __init__(self, config: TesseraConfig, jobs: JobFront, auth: Authenticator, store: ObjectStore):
        self.config = config
        self.jobs = jobs
        self.auth = auth
        self.store = store
        card = jobs.model.card
        self.model_name = f"{card.family}/{card.name}"
        self.accepted_models = {card.name, self.model_name, jobs.model_name, *config.http.model_aliases}
        self._sheets = asyncio.Semaphore(2)  # spritesheets decode a whole video: a few at a time per replica

    # -- who is calling -----------------------------------------------------------------------
    def tenant(self, request: Request) -> str:
        """The caller's tenant from ``Authorization: Bearer KEY`` (or an ``x-api-key`` header)."""
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        key = value.strip() if scheme.lower() == "bearer" else ""
        key = key or request.headers.get(API_KEY_METADATA, "")
        try:
            tenant = self.auth.tenant({API_KEY_METADATA: key} if key else {})
            bind_log_fields(tenant=tenant)  # every line this call logs from here on names its tenant
            return tenant
        except UnauthenticatedError:
            if key:
                raise
            if header:
                raise UnauthenticatedError("the Authorization header must be 'Bearer KEY'") from None
            raise UnauthenticatedError(
                "missing API key: send 'Authorization: Bearer KEY' (the same keys as gRPC's x-api-key)"
            ) from None

    # -- request pieces -----------------------------------------------------------------------
    def check_model(self, name: str | None) -> None:
        if not name or name in self.accepted_models:
            return
        also = sorted(self.accepted_models - {self.model_name})
        raise invalid(
            f"unknown model {describe_value(name)}: this deployment serves {self.model_name!r}"
            + (f" (also accepted: {', '.join(repr(a) for a in also)})" if also else ""),
            param="model", code="model_not_found",
        )

    def parse_size(self, text: str) -> tuple[int, int]:
        card = self.jobs.model.card
        multiple, low, high = card.geometry.size_multiple, card.limits.min_side, card.limits.max_side
        example = f"{card.limits.default_width}x{card.limits.default_height}"
        match = re.fullmatch(r"\s*(\d{1,6})\s*[xX]\s*(\d{1,6})\s*", text)
        if match is None:
            raise invalid(f"size {describe_value(text)} is not WIDTHxHEIGHT, e.g. '{example}'", param="size")
        width, height = int(match[1]), int(match[2])
        if any(side % multiple or not low <= side <= high for side in (width, height)):
            raise invalid(
                f"size {width}x{height} is not one that model {self.model_name} renders: width and height must be "
                f"multiples of {multiple} from {low} to {high} px (e.g. {example} or {high}x{high}); videos are never resized",
                param="size",
            )
        return width, height

    def parse_seconds(self, text: str, param: str = "seconds") -> float:
        try:
            seconds = float(text)
        except ValueError:
            seconds = math.nan
        if not math.isfinite(seconds) or seconds <= 0:
            raise invalid(f"{param} must be a positive number of seconds, e.g. '4'; got {describe_value(text)}", param=param)
        limit = self.config.limits.max_duration_s
        if seconds > limit:
            raise invalid(f"{param} {seconds:g} is above this deployment's maximum of {limit:g} s", param=param)
        return seconds

    async def source_video(self, tenant: str, video_id: str, param: str) -> str:
        """The s3:// URI of a completed video of this tenant."""
        record = await self.jobs.get(tenant, video_id)
        if record.state != JobState.SUCCEEDED or not record.video_key:
            raise not_ready(record, "used as a source")
        return self.store.uri(record.video_key)

    async def media(self, tenant: str, value: Any, param: str, kind: str) -> MediaInput:
        """An upload, a reference or a URI as a media input of the request."""
        if isinstance(value, bytes):
            return MediaInput(data=value)
        if isinstance(value, VideoReference):
            return MediaInput(uri=await self.source_video(tenant, value.id, param))
        if isinstance(value, ImageReference):
            if value.file_id:
                raise invalid(
                    f"{param}.file_id names an upload to OpenAI's Files API, which Tessera does not have: upload the "
                    f"{kind} itself (multipart) or send a data: URL", param=param, code="unsupported_value",
                )
            if not value.image_url:
                raise invalid(f"{param} needs image_url (a data: URL or an s3:// URI)", param=param)
            value = value.image_url
        text = str(value)
        if text.startswith("s3://"):
            return MediaInput(uri=text)
        if text.startswith("data:"):
            return MediaInput(data=decode_data_url(text, param))
        if kind == "video" and is_job_id(text):
            return MediaInput(uri=await self.source_video(tenant, text, param))
        raise invalid(
            f"{param} must be an uploaded file, a data: URL or an s3:// URI in this deployment's bucket"
            f"{' (or a completed video id)' if kind == 'video' else ''}; Tessera fetches no other URLs",
            param=param, code="unsupported_value",
        )

    async def submit(self, tenant: str, fields: dict[str, Any]) -> Video:
        try:
            request = GenerationRequest(**{k: v for k, v in fields.items() if v is not None})
        except ValidationError as error:
            problem = error.errors(include_input=False, include_url=False)[0]
            where = str(problem["loc"][0]) if problem.get("loc") else None
            raise invalid(f"{where or 'the request'}: {problem['msg']}", param=where) from None
        record = await self.jobs.submit(tenant, request)
        return video_object(record, self.store)

    # -- progress stream ----------------------------------------------------------------------
    async def events(self, tenant: str, job_id: str) -> AsyncIterator[str]:
        """Server-sent events: ``progress`` while the job runs, then one ``video`` (the final
        Video), then the end. A keep-alive comment goes out after every ``http.sse_keepalive_s``
        of silence, so proxies keep the stream open during long steps."""
        queue: asyncio.Queue = asyncio.Queue()

        async def pump() -> None:
            try:
                async for event in self.jobs.watch(tenant, job_id):
                    await queue.put(event)
            except Exception as error:  # ends the stream with an error event
                await queue.put(error)
            finally:
                await queue.put(None)

        task = asyncio.create_task(pump())
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), self.config.http.sse_keepalive_s)
                except asyncio.TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if item is None:
                    return
                if isinstance(item, Exception):
                    yield sse("error", api_error(item).body())
                    return
                if item.record is not None:
                    yield sse("video", video_object(item.record, self.store).model_dump(mode="json"))
                else:
                    yield sse("progress", self.progress_event(item).model_dump(mode="json"))
        finally:
            task.cancel()

    def progress_event(self, event: JobEvent) -> VideoProgress:
        progress = event.progress
        return VideoProgress(
            id=event.job_id, status="queued" if progress.stage == Stage.QUEUED else "in_progress",
            progress=percent(progress.fraction), fraction=progress.fraction, stage=progress.stage.value,
            step=progress.step, total_steps=progress.total_steps, segments_done=progress.segments_done,
            total_segments=progress.total_segments,
            segment_url=self.store.presign_get(progress.segment_key) if progress.segment_key else None,
        )

    # -- content ------------------------------------------------------------------------------
    async def open_object(self, key: str, what: str) -> tuple[int, AsyncIterator[bytes]]:
        """An object's length and its bytes as they arrive from the store, a chunk at a time."""

        def get():
            # ObjectStore has no streaming read: its boto3 client's get_object body is read in chunks.
            with self.store._errors("get", key):
                return self.store._client.get_object(Bucket=self.store.bucket, Key=key)

        try:
            response = await asyncio.to_thread(get)
        except ObjectNotFoundError:
            raise NotFoundError(f"the {what} is gone from the store") from None
        body = response["Body"]

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while chunk := await asyncio.to_thread(body.read, STREAM_CHUNK):
                    yield chunk
            finally:
                body.close()

        return int(response["ContentLength"]), chunks()

    async def read_object(self, key: str, what: str) -> bytes:
        try:
            return await asyncio.to_thread(self.store.get_bytes, key)
        except ObjectNotFoundError:
            raise NotFoundError(f"the {what} is gone from the store") from None

    async def spritesheet(self, record: JobRecord) -> tuple[bytes, dict]:
        video = await self.read_object(record.video_key, f"video of {record.job_id}")
        async with self._sheets:
            return await asyncio.to_thread(contact_sheet, video)


def not_ready(record: JobRecord, use: str) -> APIError:
    status = STATUS[record.state]
    if record.state == JobState.SUCCEEDED:  # an image-mode job (made over gRPC): no MP4
        message = f"video {record.job_id} is a single image (image mode): it has no MP4 to be {use}"
    else:
        message = f"video {record.job_id} is {status}, not completed: it can be {use} once it has completed"
    return APIError(409, message, type="invalid_request_error", code="video_not_ready")


def decode_data_url(text: str, param: str) -> bytes:
    header, comma, payload = text.partition(",")
    if not comma or not header.endswith(";base64"):
        raise invalid(f"{param} data: URL must be base64 ('data:image/png;base64,...')", param=param)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"{param} data: URL does not hold valid base64", param=param) from None


def sse(event: str, data: Mapping | BaseModel) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


# --- request bodies off the wire ----------------------------------------------------------------


async def read_fields(request: Request, max_media_bytes: int) -> dict[str, Any]:
    """The body's fields, from multipart/form-data, a urlencoded form or a JSON object.

    Form keys ``a[b]`` (how the SDK sends ``{"id": ...}`` references) become ``{"a": {"b": ...}}``;
    uploads become their bytes. The body is read up to what its media may hold (``max_media_bytes``,
    base64 included) plus :data:`BODY_SLACK`; past that: 413."""
    limit = max_media_bytes * 4 // 3 + 4 + BODY_SLACK
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(max_media_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(max_media_bytes)
        chunks.append(chunk)
    body = b"".join(chunks)
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return await _form_fields(request, body, max_media_bytes)
    if content_type in ("application/json", "") or content_type.endswith("+json"):
        if not body.strip():
            return {}
        try:
            data = json.loads(body)
        except ValueError as error:
            raise invalid(f"the request body is not valid JSON: {error}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise invalid("the request body must be a JSON object", code="invalid_json")
        return data
    raise invalid(
        f"unsupported Content-Type {describe_value(content_type)}: send multipart/form-data or application/json",
        code="unsupported_content_type",
    )


async def _form_fields(request: Request, body: bytes, max_media_bytes: int) -> dict[str, Any]:
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, receive=replay).form(max_files=4, max_fields=MAX_FORM_FIELDS)
    except StarletteHTTPException as error:
        raise invalid(f"the form is not valid: {error.detail}", code="invalid_form") from None
    fields: dict[str, Any] = {}
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read(max_media_bytes + 1)
                if len(data) > max_media_bytes:
                    raise too_large(max_media_bytes, key)
                value = data
            name, _, rest = key.partition("[")
            target = fields
            if rest:
                if not rest.endswith("]") or "[" in rest:
                    raise invalid(f"form field {describe_value(key)} is not 'name' or 'name[field]'", param=name)
                target = fields.setdefault(name, {})
                if not isinstance(target, dict):
                    raise invalid(f"form field {name} is given both as a value and as {describe_value(key)}", param=name)
                name = rest[:-1]
            if name in target:
                raise invalid(f"form field {describe_value(key)} is given more than once", param=name)
            target[name] = value
    finally:
        await form.close()
    return fields


def too_large(limit: int, param: str | None = None) -> APIError:
    return APIError(
        413, f"the request is larger than its media may be: inputs sent inline may be at most {limit} bytes "
        f"(limits.max_inline_input_bytes); upload larger ones to the bucket and give their s3:// URI",
        type="invalid_request_error", param=param, code="request_too_large",
    )


def parse_body(model: type[_Body], fields: dict[str, Any], route: str) -> _Body:
    try:
        return model.model_validate(fields)
    except ValidationError as error:
        problem = error.errors(include_input=False, include_url=False)[0]
        param = str(problem["loc"][0]) if problem.get("loc") else None
        if problem["type"] == "extra_forbidden":
            raise invalid(f"unknown parameter {param!r} for {route}", param=param, code="unknown_parameter") from None
        if problem["type"] == "missing":
            raise invalid(f"missing required parameter {param!r}", param=param, code="missing_required_parameter") from None
        raise invalid(f"invalid value for {param!r}: {problem['msg']}", param=param) from None


def options_of(body: TesseraOptions, request: Request) -> dict[str, Any]:
    fields = {name: getattr(body, name) for name in TesseraOptions.model_fields}
    if fields["idempotency_key"] is None and request.headers.get("idempotency-key"):
        fields["idempotency_key"] = request.headers["idempotency-key"]
    return fields


# --- the app -----------------------------------------------------------------------------------


def _body_doc(model: type[BaseModel]) -> dict:
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": ref}, "application/json": {"schema": ref}}}}


ERROR_RESPONSES = {status: {"model": ErrorResponse} for status in (400, 401, 404, 409, 413, 429, 500, 503)}


def create_app() -> FastAPI:
    """The API's FastAPI app. The Gateway sets ``app.state.videos`` to its :class:`VideosAPI`
    before serving; without one (e.g. to read the OpenAPI document) no route is backed."""
    app = FastAPI(
        title="Tessera: OpenAI-compatible videos API",
        version="1",
        description="The OpenAI videos API shape over Tessera's jobs; see the README's 'OpenAI-compatible HTTP API'.",
        openapi_url=OPENAPI_URL,
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
    )

    def api(request: Request) -> VideosAPI:
        return request.app.state.videos

    # -- errors in the API's shape --------------------------------------------------------------
    @app.exception_handler(APIError)
    async def _api_error(request: Request, error: APIError):
        return error.response()

    @app.exception_handler(TesseraError)
    async def _tessera_error(request: Request, error: TesseraError):
        return api_error(error, getattr(request.state, "params", None)).response()

    @app.exception_handler(StorageError)
    async def _storage_error(request: Request, error: StorageError):
        return api_error(error).response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError):
        problem = error.errors()[0] if error.errors() else {}
        location = [str(part) for part in problem.get("loc", ()) if part not in ("query", "path", "body")]
        param = location[0] if location else None
        return invalid(f"invalid value for {param!r}: {problem.get('msg', 'invalid')}", param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException):
        if error.status_code == 404:
            message = f"Invalid URL ({request.method} {request.url.path})"
        elif error.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(error.detail)
        return APIError(error.status_code, message, code=None).response()

    # -- Tessera's HTTP extras first: /videos/characters/... before /videos/{id}/... -------------
    @app.post(f"{API_PREFIX}/videos/characters", responses=ERROR_RESPONSES, summary="Not supported")
    async def create_character(request: Request):
        api(request).tenant(request)
        raise invalid(
            "characters (a reusable identity taken from an uploaded video) are not supported: Tessera's models take "
            "no reference identity; describe the character in the prompt instead", param="video", code="unsupported",
        )

    @app.get(f"{API_PREFIX}/videos/characters/{{character_id}}", responses=ERROR_RESPONSES, summary="Not supported")
    async def get_character(character_id: str, request: Request):
        api(request).tenant(request)
        raise APIError(404, f"no character {describe_value(character_id)}: characters are not supported", code="not_found")

    # -- create, extend, edit, remix --------------------------------------------------------------
    @app.post(f"{API_PREFIX}/videos", response_model=Video, responses=ERROR_RESPONSES, openapi_extra=_body_doc(CreateVideoBody))
    async def create_video(request: Request) -> Video:
        videos, request.state.params = api(request), CREATE_PARAMS
        tenant = videos.tenant(request)
        body = parse_body(CreateVideoBody, await read_fields(request, videos.config.limits.max_inline_input_bytes), "POST /v1/videos")
        videos.check_model(body.model)
        fields = options_of(body, request)
        fields["prompt"] = body.prompt
        if body.size is not None:
            fields["width"], fields["height"] = videos.parse_size(body.size)
        if body.seconds is not None:
            fields["duration_s"] = videos.parse_seconds(body.seconds)
        if body.input_reference is not None:
            fields["from_image"] = await videos.media(tenant, body.input_reference, "input_reference", "image")
        return await videos.submit(tenant, fields)

    @app.post(f"{API_PREFIX}/videos/extensions", response_model=Video, responses=ERROR_RESPONSES, openapi_extra=_body_doc(ExtendVideoBody))
    async def extend_video(request: Request) -> Video:
        videos, request.state.params = api(request), EXTEND_PARAMS
        tenant = videos.tenant(request)
        body = parse_body(ExtendVideoBody, await read_fields(request, videos.config.limits.max_inline_input_bytes),
                          "POST /v1/videos/extensions")
        fields = options_of(body, request)
        fields.update(prompt=body.prompt, extend_seconds=videos.parse_seconds(body.seconds),
                      extend_video=await videos.media(tenant, body.video, "video", "video"))
        return await videos.submit(tenant, fields)

    @app.post(f"{API_PREFIX}/videos/edits", response_model=Video, responses=ERROR_RESPONSES, openapi_extra=_body_doc(EditVideoBody))
    async def edit_video(request: Request) -> Video:
        videos, request.state.params = api(request), EDIT_PARAMS
        tenant = videos.tenant(request)
        body = parse_body(EditVideoBody, await read_fields(request, videos.config.limits.max_inline_input_bytes), "POST /v1/videos/edits")
        fields = options_of(body, request)
        fields.update(prompt=body.prompt, edit_video=await videos.media(tenant, body.video, "video", "video"))
        return await videos.submit(tenant, fields)

    @app.post(f"{API_PREFIX}/videos/{{video_id}}/remix", response_model=Video, responses=ERROR_RESPONSES,
              openapi_extra=_body_doc(RemixVideoBody))
    async def remix_video(video_id: str, request: Request) -> Video:
        videos, request.state.params = api(request), EDIT_PARAMS
        tenant = videos.tenant(request)
        body = parse_body(RemixVideoBody, await read_fields(request, 0), "POST /v1/videos/{id}/remix")
        fields = options_of(body, request)
        fields.update(prompt=body.prompt, edit_video=MediaInput(uri=await videos.source_video(tenant, video_id, "video_id")))
        return await videos.submit(tenant, fields)

    # -- read, list, delete ----------------------------------------------------------------------
    @app.get(f"{API_PREFIX}/videos/{{video_id}}", response_model=Video, responses=ERROR_RESPONSES)
    async def retrieve_video(video_id: str, request: Request, response: Response) -> Video:
        videos = api(request)
        record = await videos.jobs.get(videos.tenant(request), video_id)
        if not record.state.terminal and videos.config.http.poll_after_ms:
            response.headers[POLL_AFTER_HEADER] = str(videos.config.http.poll_after_ms)
        return video_object(record, videos.store)

    @app.get(f"{API_PREFIX}/videos", response_model=VideoList, responses=ERROR_RESPONSES)
    async def list_videos(
        request: Request,
        after: str | None = Query(None, description="The last id of the previous page."),
        limit: int = Query(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE, description=f"1 to {MAX_PAGE_SIZE}."),
        order: Literal["asc", "desc"] = Query("desc", description="By creation time: desc (newest first) or asc."),
    ) -> VideoList:
        videos = api(request)
        tenant = videos.tenant(request)
        if after and not is_job_id(after):
            raise invalid(f"after {describe_value(after)} is not a video id this API returned", param="after")
        records, has_more = await videos.jobs.page(tenant, limit, after or "", oldest_first=order == "asc")
        data = [video_object(record, videos.store) for record in records]
        return VideoList(data=data, first_id=data[0].id if data else None, last_id=data[-1].id if data else None,
                         has_more=has_more)

    @app.delete(f"{API_PREFIX}/videos/{{video_id}}", response_model=VideoDeleted, responses=ERROR_RESPONSES)
    async def delete_video(video_id: str, request: Request) -> VideoDeleted:
        videos = api(request)
        try:
            record = await videos.jobs.delete(videos.tenant(request), video_id)
        except FailedPreconditionError as error:  # still stopping: worth retrying, unlike other 409s
            raise APIError(409, error.message, code="video_still_stopping", headers={"x-should-retry": "true",
                                                                                   "Retry-After": "1"}) from None
        return VideoDeleted(id=record.job_id)

    # -- content and events -----------------------------------------------------------------------
    @app.get(
        f"{API_PREFIX}/videos/{{video_id}}/content", response_class=Response, responses={
            **ERROR_RESPONSES,
            200: {"description": "The MP4 (video), the poster PNG (thumbnail) or a JPEG contact sheet (spritesheet).",
                  "content": {"video/mp4": {}, "image/png": {}, "image/jpeg": {}}},
        },
    )
    async def download_content(
        video_id: str, request: Request,
        variant: Literal["video", "thumbnail", "spritesheet"] = Query("video", description="Which asset."),
    ):
        videos = api(request)
        record = await videos.jobs.get(videos.tenant(request), video_id)
        if record.state != JobState.SUCCEEDED:
            raise not_ready(record, "downloaded")
        if variant == "thumbnail":
            key = record.poster_key or record.image_key
            data = await videos.read_object(key, f"thumbnail of {video_id}")
            return Response(data, media_type="image/png", headers={"Content-Disposition": f'inline; filename="{video_id}.png"'})
        if not record.video_key:
            raise not_ready(record, "downloaded as video or spritesheet (variant=thumbnail gives the image)")
        if variant == "spritesheet":
            sheet, layout = await videos.spritesheet(record)
            return Response(sheet, media_type="image/jpeg", headers={
                "Content-Disposition": f'inline; filename="{video_id}-spritesheet.jpg"',
                "x-tessera-spritesheet": json.dumps(layout, separators=(",", ":")),
            })
        length, chunks = await videos.open_object(record.video_key, f"video of {video_id}")
        return StreamingResponse(chunks, media_type="video/mp4", headers={
            "Content-Length": str(length), "Content-Disposition": f'inline; filename="{video_id}.mp4"',
        })

    @app.get(
        f"{API_PREFIX}/videos/{{video_id}}/events", response_class=StreamingResponse, responses={
            **ERROR_RESPONSES,
            200: {"description": "Server-sent events: 'progress' (a video.progress object) while the job runs, then "
                  "one 'video' (the final Video); then the stream ends.", "content": {"text/event-stream": {}}},
        },
    )
    async def video_events(video_id: str, request: Request):
        videos = api(request)
        tenant = videos.tenant(request)
        await videos.jobs.get(tenant, video_id)  # an unknown id is a 404, before the stream starts
        return StreamingResponse(videos.events(tenant, video_id), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in BODY_MODELS:
                document = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(document.pop("$defs", {}))
                components[model.__name__] = document
            for operations in schema.get("paths", {}).values():  # bad input is a 400 in the API's shape, never a 422
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    return app
