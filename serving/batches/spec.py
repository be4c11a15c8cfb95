"""A batch file: parsed, bounded and validated line by line before anything renders. Pure.

A batch file is JSONL (one JSON object per line) or CSV (a header row, then one request per
row). Each request has the fields of ``tessera.v1.GenerateRequest`` (``prompt``, ``duration_s``,
``width``, ``seed``, ``from_image``, ``shots``... every mode), and optionally ``id``: the item's
name in the batch (default ``line-N``). Media fields are ``s3://`` URIs, ``{"uri": ...}``, or
paths relative to the batch file (read by the submitting client and stored in the bucket).

Every line is checked with the same validation as a submit (:func:`check_request`, and
:func:`resolve_request` for requests without media inputs, whose probing happens at submit);
errors name the line: ``line 3: prompt is empty: describe the video to render``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tessera.models.interface import ModelCard
from tessera.serving.config import LimitsConfig
from tessera.serving.errors import FailedPreconditionError, InvalidRequestError, describe_value, validation_message
from tessera.serving.jobs import modes
from tessera.serving.jobs.spec import GenerationRequest, MediaInput
from tessera.serving.jobs.validation import PRIORITY_RANGE, check_request, resolve_request

MAX_BATCH_LINES = 1000
"""Most requests in one batch file (blank lines and comments not counted)."""
MAX_BATCH_BYTES = 2 * 1024 * 1024
"""Largest batch file (it travels in one gRPC message)."""
MAX_BATCH_FILE_BYTES = 3 * 1024 * 1024
"""Most bytes of local media files sent with one batch (use s3:// URIs for more)."""
MAX_CONCURRENCY = 64
DEFAULT_CONCURRENCY = 2
DEFAULT_PRIORITY = -1
"""Batch items run below interactive jobs (priority 0) unless told otherwise."""
DEFAULT_MAX_ATTEMPTS = 2
MAX_ATTEMPTS = 5
MEDIA_FIELDS = ("from_image", "extend_video", "edit_video", "transition_from", "transition_to")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_ITEM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_INT_FIELDS = {"num_frames", "width", "height", "seed", "steps", "priority", "short_side"}
_FLOAT_FIELDS = {"duration_s", "fps", "guidance_scale", "extend_seconds", "strength", "transition_seconds"}
_BOOL_FIELDS = {"skip_prompt_expansion", "image", "image_is_last_frame", "backward", "loop"}


class BatchFileError(InvalidRequestError):
    """The file as a whole is refused (too big, too many lines, not JSONL/CSV, bad lines)."""

    def __init__(self, message: str, invalid: list[InvalidLine] | None = None):
        super().__init__(message)
        self.invalid = invalid or []


class InvalidLine(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    line: int
    id: str = ""
    error: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.error}"


class BatchItem(BaseModel):
    """One valid request of the batch; ``request`` holds no inline bytes (only s3:// URIs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    line: int = Field(..., description="1-based line of the file (CSV: the row's line, header = 1).")
    id: str = Field(..., description="The item's name in the batch: given, or line-N.")
    request: GenerationRequest


class BatchSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    concurrency: int = Field(DEFAULT_CONCURRENCY, ge=1, le=MAX_CONCURRENCY)
    priority: int = Field(DEFAULT_PRIORITY, ge=PRIORITY_RANGE[0], le=PRIORITY_RANGE[1])
    max_attempts: int = Field(DEFAULT_MAX_ATTEMPTS, ge=1, le=MAX_ATTEMPTS)
    output_prefix: str = Field("", description="Key prefix (ending in /) of the items' outputs and the report.")
    skip_invalid: bool = False


class ParsedBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[BatchItem]
    invalid: list[InvalidLine]
    file_sha256: str


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidRequestError(
            f"batch name {describe_value(name)} is not valid: 1 to 63 characters of [a-z0-9._-], starting with a letter or digit"
        )
    return name


def name_from_file(path: str) -> str:
    """A default batch name from a file name: ``prompts/Night Run.jsonl`` -> ``night-run``."""
    stem = path.rstrip("/").rsplit("/", 1)[-1]
    stem = stem.rsplit(".", 1)[0] if "." in stem else stem
    name = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._")[:63]
    return name or "batch"


def item_key(tenant: str, batch: str, item_id: str) -> str:
    """The item's identity: the same (tenant, batch, item) always gives the same key."""
    return hashlib.sha256(f"{tenant}\x00{batch}\x00{item_id}".encode()).hexdigest()[:40]


def idempotency_key(tenant: str, batch: str, item_id: str, attempt: int) -> str:
    """The job's idempotency key for one attempt at an item: resubmits of that attempt return
    the existing job; a retry is a new attempt, so a new key."""
    return f"batch-{item_key(tenant, batch, item_id)}-a{attempt}"


def file_format(text: str, hint: str = "") -> str:
    hint = hint.lower()
    if hint.endswith(".csv"):
        return "csv"
    if hint.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    first = next((line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")), "")
    return "jsonl" if first.startswith("{") else "csv"


def _rows(text: str, fmt: str) -> list[tuple[int, dict | None, str]]:
    """(line, fields, error) per request line; blank lines and ``#`` comments are skipped."""
    rows: list[tuple[int, dict | None, str]] = []
    if fmt == "jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            try:
                value = json.loads(stripped)
            except ValueError as error:
                rows.append((number, None, f"not valid JSON ({error.msg} at column {error.colno})"))
                continue
            if not isinstance(value, dict):
                rows.append((number, None, f"expected a JSON object, got {type(value).__name__}"))
                continue
            rows.append((number, value, ""))
        return rows
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        return rows
    for row in reader:
        number = reader.line_num
        if None in row:
            rows.append((number, None, f"has more cells than the header's {len(reader.fieldnames)} columns"))
            continue
        fields = {k.strip(): v for k, v in row.items() if k is not None and v is not None and v.strip() != ""}
        if not fields:
            continue
        rows.append((number, _csv_types(fields), ""))
    return rows


def _csv_types(fields: dict[str, str]) -> dict:
    out: dict[str, Any] = {}
    for name, value in fields.items():
        value = value.strip() if name not in ("prompt", "negative_prompt", "character") else value
        if name == "shots":
            try:
                out[name] = json.loads(value)
            except ValueError:
                out[name] = value
        elif name in _BOOL_FIELDS:
            out[name] = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(value.lower(), value)
        else:
            out[name] = value  # numbers are parsed by the request model (lax mode)
    return out


def _media(value: Any, name: str, files: Callable[[str], bytes | None] | None) -> MediaInput:
    if isinstance(value, dict):
        value = value.get("uri") or value.get("path") or ""
    if not isinstance(value, str) or not value:
        raise InvalidRequestError(f"{name} must be an s3:// URI or a path, got {describe_value(value)}")
    if value.startswith("s3://"):
        return MediaInput(uri=value)
    data = files(value) if files is not None else None
    if data is None:
        raise InvalidRequestError(f"{name} {describe_value(value)}: no such local file (paths are relative to the batch file)")
    return MediaInput(data=data)


def request_from_fields(fields: dict, files: Callable[[str], bytes | None] | None = None) -> tuple[str, GenerationRequest]:
    """``(id, request)`` from one line's fields; raises InvalidRequestError."""
    fields = dict(fields)
    item_id = fields.pop("id", "")
    if item_id is None:
        item_id = ""
    item_id = str(item_id) if isinstance(item_id, (int, str)) and not isinstance(item_id, bool) else item_id
    if item_id and (not isinstance(item_id, str) or not _ITEM_ID.match(item_id)):
        raise InvalidRequestError(f"id {describe_value(item_id)} is not valid: 1 to 64 characters of [A-Za-z0-9._-]")
    if "idempotency_key" in fields:
        raise InvalidRequestError("idempotency_key is set by the batch (from its name and the item's id); leave it out")
    for name in MEDIA_FIELDS:
        if fields.get(name) not in (None, ""):
            fields[name] = _media(fields[name], name, files)
        else:
            fields.pop(name, None)
    if isinstance(fields.get("shots"), list):
        fields["shots"] = [
            {**shot, "transition": str(shot["transition"]).upper()} if isinstance(shot, dict) and "transition" in shot else shot
            for shot in fields["shots"]
        ]
    try:
        request = GenerationRequest.model_validate(fields)
    except ValidationError as error:
        raise InvalidRequestError(validation_message(error, "the request")) from None
    return item_id, request


def validate_request(request: GenerationRequest, card: ModelCard, limits: LimitsConfig) -> None:
    """The submit path's validation, as far as it goes without reading media inputs."""
    check_request(request, card, limits)
    if request.media():
        modes.select_mode(request, card)  # the inputs themselves are probed when the item is submitted
        if not request.prompt.strip() and not request.shots and not request.transition_from:
            raise InvalidRequestError("prompt is empty: describe the video to render")
        return
    resolve_request(request, card, limits)


def parse_batch(
    data: bytes,
    card: ModelCard,
    limits: LimitsConfig,
    *,
    filename: str = "",
    priority: int = DEFAULT_PRIORITY,
    files: Callable[[str], bytes | None] | None = None,
    max_lines: int = MAX_BATCH_LINES,
    max_bytes: int = MAX_BATCH_BYTES,
) -> ParsedBatch:
    """Every line parsed and validated; bad lines are collected, not raised (see :func:`require_valid`).

    Raises :class:`BatchFileError` for what no line can fix: too big, too many lines, not UTF-8,
    no requests. ``priority`` is the batch's, given to items that set none."""
    if len(data) > max_bytes:
        raise BatchFileError(f"the batch file is {len(data)} bytes; the limit is {max_bytes} bytes ({max_bytes // 1024 // 1024} MiB): split it into several batches")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise BatchFileError(f"the batch file is not UTF-8 text (byte {error.start})") from None
    rows = _rows(text, file_format(text, filename))
    if len(rows) > max_lines:
        raise BatchFileError(f"the batch file has {len(rows)} requests; the limit is {max_lines}: split it into several batches")
    if not rows:
        raise BatchFileError("the batch file holds no requests (one JSON object per line, or CSV with a header row)")
    items: list[BatchItem] = []
    invalid: list[InvalidLine] = []
    seen: dict[str, int] = {}
    for number, fields, error in rows:
        raw_id = str(fields.get("id", "")) if isinstance(fields, dict) else ""
        if fields is None:
            invalid.append(InvalidLine(line=number, error=error))
            continue
        try:
            item_id, request = request_from_fields(fields, files)
            item_id = item_id or f"line-{number}"
            if item_id in seen:
                raise InvalidRequestError(f"id {item_id!r} is used twice (first on line {seen[item_id]})")
            if "priority" not in fields:
                request = request.model_copy(update={"priority": priority})
            validate_request(request, card, limits)
        except (InvalidRequestError, FailedPreconditionError) as failure:  # the line, not the batch, is bad
            invalid.append(InvalidLine(line=number, id=raw_id[:64], error=str(failure)))
            continue
        seen[item_id] = number
        items.append(BatchItem(line=number, id=item_id, request=request))
    return ParsedBatch(items=items, invalid=invalid, file_sha256=hashlib.sha256(data).hexdigest())


def require_valid(parsed: ParsedBatch, skip_invalid: bool, most_shown: int = 20) -> None:
    """Refuse a batch with bad lines (unless ``skip_invalid``) or with no good one."""
    if parsed.invalid and not skip_invalid:
        shown = "; ".join(str(line) for line in parsed.invalid[:most_shown])
        more = f"; and {len(parsed.invalid) - most_shown} more" if len(parsed.invalid) > most_shown else ""
        raise BatchFileError(
            f"{len(parsed.invalid)} of {len(parsed.invalid) + len(parsed.items)} lines are invalid (nothing was rendered; "
            f"fix them, or pass --skip-invalid to render the rest): {shown}{more}", parsed.invalid,
        )
    if not parsed.items:
        raise BatchFileError("no line of the batch file is valid: " + "; ".join(str(line) for line in parsed.invalid[:most_shown]),
                             parsed.invalid)


def check_output_prefix(uri: str, bucket: str, tenant: str, batch: str) -> str:
    """The key prefix (ending in ``/``) for a batch's outputs: ``{tenant}/batches/{batch}/`` by
    default, or an ``s3://`` prefix inside the tenant's part of the deployment's bucket."""
    if not uri:
        return f"{tenant}/batches/{batch}/"
    if not uri.startswith("s3://"):
        raise InvalidRequestError(f"output prefix {describe_value(uri)} must be an s3:// URI")
    target_bucket, _, key = uri[len("s3://"):].partition("/")
    if target_bucket != bucket:
        raise InvalidRequestError(f"output prefix must be in the deployment's bucket s3://{bucket}/, got {describe_value(uri)}")
    key = key.strip("/")
    if not (key == tenant or key.startswith(tenant + "/")) or ".." in key.split("/"):
        raise InvalidRequestError(f"output prefix must be under s3://{bucket}/{tenant}/, got {describe_value(uri)}")
    return key + "/"


def referenced_paths(data: bytes, filename: str = "") -> list[str]:
    """The local media paths a batch file names (what a client reads and sends with it)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return []
    paths = []
    for _, fields, _ in _rows(text, file_format(text, filename)):
        for name in MEDIA_FIELDS:
            value = (fields or {}).get(name)
            if isinstance(value, dict):
                value = value.get("path") or value.get("uri")
            if isinstance(value, str) and value and not value.startswith("s3://") and value not in paths:
                paths.append(value)
    return paths
