"""Object storage for Tessera: outputs and durable job records in any S3-compatible store.

This is the only module that talks to boto3. It speaks plain S3 (path-style by default, SigV4,
no flexible checksums) so that AWS S3, MinIO, Ceph and the embedded server all work, and turns
botocore's errors into a few specific exceptions that the gateway maps to gRPC codes:

    StorageError                  anything else that went wrong
    ├── ObjectNotFoundError       the key (or its bucket) does not exist; also If-Match on a missing key
    ├── ConditionFailedError      a conditional write's precondition did not hold (If-Match: 412,
    │   │                         or 409 ConditionalRequestConflict: a concurrent write won)
    │   └── ObjectExistsError     a create-only write (If-None-Match: *) found the key taken
    ├── StorageAuthError          403, bad or missing credentials (an operator's problem)
    └── StorageUnavailableError   connection refused, timeouts, 5xx, after the configured retries

    InvalidKeyError (ValueError)  a key or s3:// URI refused before any request is sent

Conditional writes (S3's ``If-None-Match: *`` to create, ``If-Match: <etag>`` to replace exactly
the object one read) are how job records are owned: every write method returns the new ETag, the
``*_with_etag`` reads return the current one, and ``delete`` and ``copy`` take conditions too.

Thread safety: an :class:`ObjectStore` may be shared by threads (boto3 clients are thread-safe).
A :class:`MultipartWriter` is not: one writer belongs to one thread at a time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import boto3
from botocore.config import Config as BotocoreConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotocoreConnectionError
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from tessera.serving.metrics import record_s3_error, record_s3_retry

logger = logging.getLogger(__name__)

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every part but the last
MAX_PART_SIZE = 5 * 1024 * 1024 * 1024
MAX_PRESIGN_EXPIRY_S = 7 * 24 * 3600
MAX_KEY_BYTES = 1024
MAX_COPY_OBJECT_SIZE = 5 * 1024 * 1024 * 1024  # S3's limit for a single CopyObject (and each UploadPartCopy)
MAX_PARTS = 10_000

_AUTH_CODES = {
    "AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId", "RequestTimeTooSkewed",
    "ExpiredToken", "InvalidToken", "AuthorizationHeaderMalformed", "403",
}
_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchBucket", "NotFound", "404"}
_UNAVAILABLE_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "503", "500"}
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SHOWN_KEY_CHARS = 60

_Condition = Literal["if-none-match", "if-match"]  # which precondition a request carried


class StorageError(Exception):
    """A storage operation failed."""


class ObjectNotFoundError(StorageError):
    """The object (or its bucket) does not exist."""


class ConditionFailedError(StorageError):
    """A conditional write's precondition did not hold, and nothing was written.

    Raised when the object under the key is not the one named by ``if_match`` (S3 answers 412
    PreconditionFailed), and when S3 reports a concurrent write to the same key that won the race
    (409 ConditionalRequestConflict; for a multipart upload: the key was written after the upload
    started). The caller re-reads the object and decides again.

    A write whose response was lost and that botocore then retried may report this although the
    first attempt did write: a lease holder that gets it must treat the lease as lost (the safe
    reading), never as held."""


class ObjectExistsError(ConditionFailedError):
    """A create-only write (``if_absent``, ``If-None-Match: *``) found the key already taken."""


class InvalidKeyError(ValueError):
    """An object key or ``s3://`` URI that Tessera refuses before any request is sent (see
    :func:`check_key`). The message says what is wrong and shows at most the first 60 characters."""


class StorageAuthError(StorageError):
    """The store refused the credentials or the signature (HTTP 403), or none were found."""


class StorageUnavailableError(StorageError):
    """The store could not be reached or kept failing (connection, timeout, 5xx) after retries."""


class StorageConfig(BaseModel):
    """Where and how Tessera reaches its S3-compatible object store."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint_url: str | None = Field(
        None, description="S3 endpoint, e.g. 'http://127.0.0.1:9000' for MinIO or the embedded server. "
        "None: AWS S3's regional endpoint."
    )
    presign_endpoint_url: str | None = Field(
        None, description="Endpoint written into presigned URLs, when clients reach the store under another "
        "name than the cluster does (e.g. a public host name). None: endpoint_url."
    )
    region: str = Field("us-east-1", min_length=1, description="Region used in signatures (any value for non-AWS stores).")
    bucket: str = Field(
        ..., min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$",
        description="Bucket holding outputs and job records.",
    )
    access_key_id: SecretStr | None = Field(
        None, description="Access key id. None (with secret_access_key None): boto3's default credential chain "
        "(environment, ~/.aws, instance or pod role)."
    )
    secret_access_key: SecretStr | None = Field(None, description="Secret access key; given together with access_key_id.")
    addressing_style: Literal["path", "virtual", "auto"] = Field(
        "path", description="'path' (http://host/bucket/key) works everywhere; AWS also takes 'virtual'."
    )
    presign_expiry_s: int = Field(
        3600, ge=1, le=MAX_PRESIGN_EXPIRY_S, description="Default lifetime of presigned GET URLs, in seconds."
    )
    multipart_part_size: int = Field(
        8 * 1024 * 1024, ge=MIN_PART_SIZE, le=MAX_PART_SIZE,
        description="Bytes per multipart part; a MultipartWriter holds at most this much in memory.",
    )
    connect_timeout_s: float = Field(5.0, gt=0, description="TCP connect timeout per attempt, in seconds.")
    read_timeout_s: float = Field(60.0, gt=0, description="Socket read timeout per attempt, in seconds.")
    max_attempts: int = Field(
        3, ge=1, le=20, description="Attempts per request including the first (botocore 'standard' retry mode)."
    )
    max_pool_connections: int = Field(
        16, ge=1, description="HTTP connections kept per client; raise it when many threads upload at once."
    )

    @model_validator(mode="after")
    def _credentials_come_in_pairs(self) -> StorageConfig:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("give both access_key_id and secret_access_key, or neither (boto3's default chain)")
        return self


@dataclass(frozen=True)
class ObjectInfo:
    """What HEAD tells about an object."""

    key: str
    size: int
    etag: str
    content_type: str
    last_modified: dt.datetime
    metadata: dict[str, str] = field(default_factory=dict)


def _shown(text: str) -> str:
    """``text`` for an error message: repr'd (control characters escaped) and cut to 60 characters,
    saying the whole length when cut, so that unbounded input is never echoed."""
    if len(text) <= _SHOWN_KEY_CHARS:
        return repr(text)
    return f"{text[:_SHOWN_KEY_CHARS]!r}... ({len(text)} characters)"


def check_key(key: str) -> None:
    """Raise :class:`InvalidKeyError` unless ``key`` is an object key Tessera accepts.

    S3 itself takes almost any string, but stores that map keys to paths (MinIO, the embedded
    server, file gateways) normalise them, so that ``a/../b`` or ``a//b`` may name another key than
    the one a prefix check looked at. Refused: an empty key, more than 1024 UTF-8 bytes (S3's
    limit), a ``.`` or ``..`` segment, an empty segment (a leading ``/``, ``a//b``, a trailing
    ``/``), and control characters (U+0000-U+001F, U+007F-U+009F, NUL included). Call it on
    caller-given keys and ``s3://`` URIs before any request is sent; every ObjectStore method
    that takes a key calls it too."""
    if not isinstance(key, str):
        raise InvalidKeyError(f"an object key must be a string, got {type(key).__name__}")
    if not key:
        raise InvalidKeyError("object key must not be empty")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidKeyError(f"object key is not valid Unicode (a lone surrogate): {_shown(key)}") from None
    if size > MAX_KEY_BYTES:
        raise InvalidKeyError(
            f"object key is {size} bytes long, more than {MAX_KEY_BYTES} bytes (UTF-8): {_shown(key)}"
        )
    if control := _CONTROL_CHARACTER.search(key):
        raise InvalidKeyError(
            f"object key has a control character (U+{ord(control.group()):04X}) at position {control.start()}: "
            f"{_shown(key)}"
        )
    segments = key.split("/")
    if segments[0] == "":
        raise InvalidKeyError(f"object key must not start with '/': {_shown(key)}")
    if "" in segments:
        where = "end with '/'" if segments[-1] == "" and "" not in segments[:-1] else "contain an empty segment ('//')"
        raise InvalidKeyError(f"object key must not {where}: {_shown(key)}")
    if dots := next((segment for segment in segments if segment in (".", "..")), None):
        raise InvalidKeyError(f"object key must not have a {dots!r} segment: {_shown(key)}")


def _unquoted(etag: str) -> str:
    return etag.strip('"')


def _quoted(etag: str) -> str:
    """An ETag as HTTP spells it (in quotes); S3 compares ETags with or without them."""
    return f'"{_unquoted(etag)}"'


def _condition_headers(if_absent: bool, if_match: str | None) -> tuple[dict[str, str], _Condition | None]:
    """The boto3 parameters and kind of a write condition; ValueError for ones S3 refuses (501)."""
    if if_absent and if_match is not None:
        raise ValueError("give if_absent or if_match, not both (S3 refuses a write with both conditions)")
    if if_match is not None:
        if not isinstance(if_match, str) or not _unquoted(if_match).strip():
            raise ValueError(f"if_match must be an ETag, got {if_match!r}")
        if _unquoted(if_match) == "*":
            raise ValueError("if_match must be an ETag: S3 does not accept If-Match: * on writes")
        return {"IfMatch": _quoted(if_match)}, "if-match"
    if if_absent:
        return {"IfNoneMatch": "*"}, "if-none-match"
    return {}, None


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    checked = dict(metadata or {})
    for name, value in checked.items():
        if not (name.isascii() and str(value).isascii()):
            raise ValueError(f"S3 user metadata must be ASCII (it travels in HTTP headers): {name!r}={value!r}")
    return checked


def _translate(error: Exception, action: str, where: str, condition: _Condition | None = None) -> StorageError:
    """The Tessera exception for a botocore one; `action` and `where` make the message. `condition`
    is the precondition the request carried, which tells what a 412 means."""
    if isinstance(error, ClientError):
        info = error.response.get("Error", {})
        code = str(info.get("Code", ""))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        message = f"{action} {where}: {code or status} {info.get('Message', '')}".rstrip()
        if code == "NoSuchUpload":  # a multipart upload vanished: not the caller's missing object
            return StorageError(message)
        if code in _NOT_FOUND_CODES or status == 404:
            return ObjectNotFoundError(message)
        if code == "PreconditionFailed" or status == 412:
            if condition == "if-none-match" or (condition is None and info.get("Condition") == "If-None-Match"):
                return ObjectExistsError(message)
            return ConditionFailedError(message)
        if code == "ConditionalRequestConflict":
            return ConditionFailedError(f"{message} (a concurrent write to the key won; re-read and retry)")
        if code in _AUTH_CODES or status == 403:
            return StorageAuthError(message)
        if code in _UNAVAILABLE_CODES or status >= 500:
            return StorageUnavailableError(message)
        return StorageError(message)
    if isinstance(error, (NoCredentialsError, PartialCredentialsError)):
        return StorageAuthError(f"{action} {where}: no usable credentials: {error}")
    if isinstance(error, (BotocoreConnectionError, HTTPClientError)):
        return StorageUnavailableError(f"{action} {where}: store unreachable: {error}")
    return StorageError(f"{action} {where}: {error}")


def _make_client(config: StorageConfig, endpoint_url: str | None) -> Any:
    credentials = {}
    if config.access_key_id is not None and config.secret_access_key is not None:
        credentials = {
            "aws_access_key_id": config.access_key_id.get_secret_value(),
            "aws_secret_access_key": config.secret_access_key.get_secret_value(),
        }
    botocore_config = BotocoreConfig(
        region_name=config.region,
        signature_version="s3v4",
        s3={"addressing_style": config.addressing_style},
        retries={"mode": "standard", "max_attempts": config.max_attempts},
        connect_timeout=config.connect_timeout_s,
        read_timeout=config.read_timeout_s,
        max_pool_connections=config.max_pool_connections,
        # botocore's default CRC32 request checksums (aws-chunked trailers) break several
        # S3-compatible stores; only send checksums where an operation requires one.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    # A session per client: boto3's shared default session is not safe to use from threads.
    session = boto3.session.Session(**credentials)
    client = session.client("s3", endpoint_url=endpoint_url, config=botocore_config)
    # botocore retries inside one call; each attempt after the first is counted (tessera_s3_retries_total).
    client.meta.events.register("request-created.s3", _count_retry)
    return client


def _count_retry(request, operation_name: str, **_) -> None:
    if request.context.get("retries", {}).get("attempt", 1) > 1:
        record_s3_retry(operation_name, "request")


def _error_kind(error: StorageError) -> str:
    if isinstance(error, StorageUnavailableError):
        return "unavailable"
    if isinstance(error, StorageAuthError):
        return "auth"
    if isinstance(error, ObjectNotFoundError):
        return "not_found"
    if isinstance(error, ConditionFailedError):
        return "precondition"
    return "other"


def _operation(action: str) -> str:
    """A bounded label for an ``_errors`` action ("upload part 3 of" -> "upload_part"; "copy s3://b/k to" -> "copy")."""
    head = action.split(" s3://", 1)[0]  # what follows names a key: never part of a label
    words = [word for word in re.sub(r"\(.*?\)|\d+", " ", head).split() if word not in ("of", "to")]
    return "_".join(words) or "request"


class ObjectStore:
    """Keys in one bucket of an S3-compatible store."""

    def __init__(self, config: StorageConfig):
        self.config = config
        self.bucket = config.bucket
        self._client = _make_client(config, config.endpoint_url)
        # Presigning is offline, but the URL must name the host the client will reach.
        self._presign_client = (
            self._client if config.presign_endpoint_url is None else _make_client(config, config.presign_endpoint_url)
        )

    def __repr__(self) -> str:
        return f"ObjectStore(endpoint={self.config.endpoint_url or 'aws'}, bucket={self.bucket})"

    @contextlib.contextmanager
    def _errors(self, action: str, key: str | None = None, condition: _Condition | None = None) -> Iterator[None]:
        where = f"s3://{self.bucket}/{key}" if key is not None else f"s3://{self.bucket}"
        try:
            yield
        except (ClientError, BotoCoreError) as error:
            translated = _translate(error, action, where, condition)
            record_s3_error(_operation(action), _error_kind(translated))
            raise translated from error

    # --- names -----------------------------------------------------------------------------

    def uri(self, key: str) -> str:
        """``s3://bucket/key`` of a key in this store."""
        check_key(key)
        return f"s3://{self.bucket}/{key}"

    @staticmethod
    def parse_uri(uri: str) -> tuple[str, str]:
        """``("bucket", "key")`` of ``s3://bucket/key``.

        Raises InvalidKeyError (a ValueError) for anything else: not a string, another scheme, no
        bucket or no key, a bucket name S3 would refuse, a key :func:`check_key` refuses. Messages
        show at most 60 characters of the URI."""
        if not isinstance(uri, str):
            raise InvalidKeyError(f"an s3:// URI must be a string, got {type(uri).__name__}")
        if not uri.startswith("s3://"):
            raise InvalidKeyError(f"not an s3:// URI: {_shown(uri)}")
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not bucket or not key:
            raise InvalidKeyError(f"an s3:// URI needs a bucket and a key (s3://bucket/key): {_shown(uri)}")
        if not _BUCKET_NAME.fullmatch(bucket) or ".." in bucket:
            raise InvalidKeyError(f"not a valid bucket name in s3:// URI: {_shown(bucket)}")
        check_key(key)
        return bucket, key

    # --- whole objects -----------------------------------------------------------------------

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (the embedded stack calls this at start)."""
        try:
            with self._errors("head bucket"):
                self._client.head_bucket(Bucket=self.bucket)
            return
        except ObjectNotFoundError:
            pass
        request: dict[str, Any] = {"Bucket": self.bucket}
        if self.config.region != "us-east-1":  # S3 wants the region spelled out everywhere else
            request["CreateBucketConfiguration"] = {"LocationConstraint": self.config.region}
        with self._errors("create bucket"):
            try:
                self._client.create_bucket(**request)
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":  # made meanwhile
                    raise

    def put_bytes(
        self,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
        *,
        if_absent: bool = False,
        if_match: str | None = None,
    ) -> str:
        """Store ``data`` under ``key``, replacing any object there; returns the new ETag (unquoted,
        as :attr:`ObjectInfo.etag`).

        Conditional writes (AWS S3, MinIO, the embedded server), evaluated by the store when the
        write commits, so two racing writers cannot both pass:

        - ``if_absent``: only if the key is free (``If-None-Match: *``); ObjectExistsError otherwise.
        - ``if_match=etag`` (quoted or not): only if the key holds the object with that ETag
          (``If-Match``); ConditionFailedError if it holds another, ObjectNotFoundError if none.

        Not both at once (ValueError: S3 refuses that)."""
        check_key(key)
        extra, condition = _condition_headers(if_absent, if_match)
        with self._errors("put", key, condition):
            response = self._client.put_object(
                Bucket=self.bucket, Key=key, Body=bytes(data), ContentType=content_type,
                Metadata=_check_metadata(metadata), **extra,
            )
        return _unquoted(response["ETag"])

    def put_json(
        self,
        key: str,
        value: Any,
        metadata: Mapping[str, str] | None = None,
        *,
        if_absent: bool = False,
        if_match: str | None = None,
    ) -> str:
        """Store ``value`` as UTF-8 JSON; conditions and result as :meth:`put_bytes`."""
        data = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return self.put_bytes(key, data, "application/json", metadata, if_absent=if_absent, if_match=if_match)

    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; ObjectNotFoundError if there is none."""
        return self.get_bytes_with_etag(key)[0]

    def get_bytes_with_etag(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and its ETag (unquoted), read in one request: the ETag is the one of
        these bytes, ready for a later ``if_match`` write. ObjectNotFoundError if there is none."""
        check_key(key)
        with self._errors("get", key):
            response = self._client.get_object(Bucket=self.bucket, Key=key)
            with contextlib.closing(response["Body"]) as body:
                return body.read(), _unquoted(response["ETag"])

    def get_json(self, key: str) -> Any:
        """The object parsed as JSON."""
        return self.get_json_with_etag(key)[0]

    def get_json_with_etag(self, key: str) -> tuple[Any, str]:
        """The object parsed as JSON, and its ETag (see :meth:`get_bytes_with_etag`)."""
        data, etag = self.get_bytes_with_etag(key)
        try:
            return json.loads(data), etag
        except ValueError as error:
            raise StorageError(f"s3://{self.bucket}/{key} is not valid JSON: {error}") from error

    def head(self, key: str) -> ObjectInfo:
        """Size, ETag, type and user metadata of an object; ObjectNotFoundError if there is none."""
        check_key(key)
        with self._errors("head", key):
            response = self._client.head_object(Bucket=self.bucket, Key=key)
        return ObjectInfo(
            key=key,
            size=response["ContentLength"],
            etag=_unquoted(response["ETag"]),
            content_type=response.get("ContentType", ""),
            last_modified=response["LastModified"],
            metadata=dict(response.get("Metadata", {})),
        )

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except ObjectNotFoundError:
            return False
        return True

    def delete(self, key: str, if_match: str | None = None) -> None:
        """Remove the object; removing a missing key is not an error (as in S3).

        With ``if_match`` (an ETag, quoted or not, or ``"*"`` for any object) the delete is
        conditional, as S3's conditional deletes are: it removes the object only if the key holds
        that one, else raises ConditionFailedError, and a missing key raises ObjectNotFoundError
        (S3 answers 404 there, not 204)."""
        check_key(key)
        extra: dict[str, str] = {}
        if if_match is not None:
            if not isinstance(if_match, str) or not _unquoted(if_match).strip():
                raise ValueError(f"if_match must be an ETag or '*', got {if_match!r}")
            extra["IfMatch"] = "*" if _unquoted(if_match) == "*" else _quoted(if_match)
        with self._errors("delete", key, "if-match" if extra else None):
            self._client.delete_object(Bucket=self.bucket, Key=key, **extra)

    def copy(self, source_key: str, dest_key: str, *, if_absent: bool = False, if_match: str | None = None) -> str:
        """Copy an object to another key of this bucket inside the store (no bytes pass through
        here); returns the new object's ETag. Content type and user metadata come along.

        Up to 5 GiB (:data:`MAX_COPY_OBJECT_SIZE`) this is one CopyObject, atomic like a PUT. A
        larger source is copied as a multipart upload of UploadPartCopy ranges, each conditional
        on the source's ETag (a source replaced meanwhile fails the copy with StorageError), that
        appears whole or not at all and is aborted on any failure; its ETag is then a multipart
        one ("...-N") and only the content type and user metadata are carried over.

        Destination conditions as :meth:`put_bytes` (``if_absent``: ObjectExistsError,
        ``if_match``: ConditionFailedError, or ObjectNotFoundError for a missing destination). A
        missing source raises ObjectNotFoundError. Copying a key onto itself is refused by S3
        unless something changes, so it raises StorageError."""
        check_key(source_key)
        check_key(dest_key)
        extra, condition = _condition_headers(if_absent, if_match)
        source = self.head(source_key)
        if source.size > MAX_COPY_OBJECT_SIZE:
            return self._copy_in_parts(source, dest_key, extra, condition)
        with self._errors(f"copy s3://{self.bucket}/{source_key} to", dest_key, condition):
            response = self._client.copy_object(
                Bucket=self.bucket, Key=dest_key, CopySource={"Bucket": self.bucket, "Key": source_key}, **extra,
            )
        return _unquoted(response["CopyObjectResult"]["ETag"])

    def _copy_in_parts(
        self, source: ObjectInfo, dest_key: str, extra: dict[str, str], condition: _Condition | None
    ) -> str:
        """Multipart copy of an object too large for CopyObject (see :meth:`copy`)."""
        part_size = max(self.config.multipart_part_size, math.ceil(source.size / MAX_PARTS))
        if part_size > MAX_PART_SIZE:
            raise StorageError(f"s3://{self.bucket}/{source.key} is too large to copy ({source.size} bytes)")
        what = f"copy s3://{self.bucket}/{source.key} to"
        with self._errors(f"{what} (start)", dest_key):
            upload_id = self._client.create_multipart_upload(
                Bucket=self.bucket, Key=dest_key, ContentType=source.content_type or "application/octet-stream",
                Metadata=source.metadata,
            )["UploadId"]
        try:
            parts = []
            for number, start in enumerate(range(0, source.size, part_size), start=1):
                end = min(start + part_size, source.size) - 1
                try:
                    with self._errors(f"{what} (part {number})", dest_key):
                        response = self._client.upload_part_copy(
                            Bucket=self.bucket, Key=dest_key, UploadId=upload_id, PartNumber=number,
                            CopySource={"Bucket": self.bucket, "Key": source.key},
                            CopySourceRange=f"bytes={start}-{end}", CopySourceIfMatch=_quoted(source.etag),
                        )
                except ConditionFailedError as error:  # the source's ETag moved on
                    raise StorageError(f"{error} (s3://{self.bucket}/{source.key} changed during the copy)") from error
                parts.append({"PartNumber": number, "ETag": response["CopyPartResult"]["ETag"]})
            with self._errors(f"{what} (complete)", dest_key, condition):
                response = self._client.complete_multipart_upload(
                    Bucket=self.bucket, Key=dest_key, UploadId=upload_id, MultipartUpload={"Parts": parts}, **extra,
                )
        except Exception:  # aborted, then re-raised
            try:
                with self._errors("abort multipart copy to", dest_key):
                    self._client.abort_multipart_upload(Bucket=self.bucket, Key=dest_key, UploadId=upload_id)
            except StorageError as abort_error:  # the original error matters more
                logger.warning("could not abort the multipart copy to %s: %s", dest_key, abort_error)
            raise
        return _unquoted(response["ETag"])

    # --- listing -----------------------------------------------------------------------------

    def iter_keys(self, prefix: str = "", start_after: str | None = None, page_size: int = 1000) -> Iterator[str]:
        """Every key that starts with ``prefix`` and sorts after ``start_after``, in S3's order
        (UTF-8 bytes), fetched ``page_size`` keys per request."""
        if not 1 <= page_size <= 1000:
            raise ValueError(f"page_size must be 1..1000, got {page_size}")
        request: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": page_size}
        if start_after:
            request["StartAfter"] = start_after
        while True:
            with self._errors("list", prefix + "*"):
                response = self._client.list_objects_v2(**request)
            for entry in response.get("Contents", []):
                yield entry["Key"]
            token = response.get("NextContinuationToken")
            if not response.get("IsTruncated") or not token:
                return
            request["ContinuationToken"] = token

    def list_keys(self, prefix: str = "", start_after: str | None = None, limit: int = 1000) -> list[str]:
        """Up to ``limit`` keys of :meth:`iter_keys`; page on with ``start_after=keys[-1]``."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        keys = []
        for key in self.iter_keys(prefix, start_after, page_size=min(limit, 1000)):
            keys.append(key)
            if len(keys) == limit:
                break
        return keys

    # --- URLs ----------------------------------------------------------------------------------

    def presign_get(self, key: str, expiry_s: int | None = None) -> str:
        """An HTTP(S) URL that GETs the object without credentials until it expires.

        Signing is local: the URL is made even if the object does not exist (the GET then 404s)."""
        check_key(key)
        expiry = self.config.presign_expiry_s if expiry_s is None else expiry_s
        if not 1 <= expiry <= MAX_PRESIGN_EXPIRY_S:
            raise ValueError(f"expiry_s must be 1..{MAX_PRESIGN_EXPIRY_S}, got {expiry}")
        with self._errors("presign", key):
            return self._presign_client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expiry
            )

    # --- streaming writes ----------------------------------------------------------------------

    def open_multipart(
        self,
        key: str,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, str] | None = None,
        *,
        if_absent: bool = False,
        if_match: str | None = None,
    ) -> MultipartWriter:
        """A writer that streams an object of unknown size to ``key`` in parts; see MultipartWriter.

        ``if_absent`` / ``if_match`` make the final write conditional, as in :meth:`put_bytes`: S3
        evaluates them when the upload completes (``close()``)."""
        check_key(key)
        _condition_headers(if_absent, if_match)  # refuse bad conditions now, not at close()
        return MultipartWriter(
            self, key, content_type, _check_metadata(metadata), if_absent=if_absent, if_match=if_match
        )

    def abort_uploads(self, prefix: str) -> int:
        """Abort every unfinished multipart upload whose key starts with ``prefix`` (what a writer
        killed before close() or abort() leaves behind); returns how many were aborted."""
        request: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        aborted = 0
        while True:
            with self._errors("list multipart uploads", prefix + "*"):
                response = self._client.list_multipart_uploads(**request)
            for upload in response.get("Uploads", []):
                with self._errors("abort multipart upload of", upload["Key"]):
                    try:
                        self._client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                    except ClientError as error:
                        if error.response.get("Error", {}).get("Code") != "NoSuchUpload":
                            raise
                        continue  # completed or aborted meanwhile
                aborted += 1
            if not response.get("IsTruncated"):
                return aborted
            request["KeyMarker"] = response.get("NextKeyMarker", "")
            request["UploadIdMarker"] = response.get("NextUploadIdMarker", "")


class MultipartWriter:
    """Streams an object to S3 as it grows: whole or not at all.

    ``write()`` buffers up to ``multipart_part_size`` bytes and uploads each full part at once, so
    memory stays at one part however long the video is. ``close()`` uploads the tail and completes
    the upload; an object smaller than one part is sent with a single PUT instead. ``abort()``
    discards everything. As a context manager it closes on success and aborts on an exception.
    Any failure inside write() or close() aborts the multipart upload before raising, so no
    orphaned upload (and no partial object) is ever left behind. Not thread-safe.

    A condition given to :meth:`ObjectStore.open_multipart` (``if_absent`` / ``if_match``) applies
    to the final write: when it does not hold, close() aborts the upload and raises
    ObjectExistsError / ConditionFailedError (or ObjectNotFoundError for ``if_match`` on a missing
    key); S3 also refuses (ConditionFailedError) an ``if_match`` completion when the key was written
    after the first part went up, even back to the same ETag.
    """

    def __init__(
        self,
        store: ObjectStore,
        key: str,
        content_type: str,
        metadata: dict[str, str],
        *,
        if_absent: bool = False,
        if_match: str | None = None,
    ):
        self._store = store
        self._client = store._client
        self.key = key
        self._content_type = content_type
        self._metadata = metadata
        self._if_absent = if_absent
        self._if_match = if_match
        self.etag: str | None = None  # the new object's ETag once closed
        self._part_size = store.config.multipart_part_size
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._state: Literal["open", "closed", "aborted"] = "open"
        self.bytes_written = 0

    @property
    def parts_uploaded(self) -> int:
        return len(self._parts)

    @property
    def closed(self) -> bool:
        return self._state != "open"

    def __enter__(self) -> MultipartWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append bytes; uploads a part each time ``multipart_part_size`` bytes have gathered."""
        if self._state != "open":
            raise ValueError(f"write to a {self._state} MultipartWriter for {self.key!r}")
        view = memoryview(data).cast("B")
        size = len(view)
        with self._aborting_on_error():
            while view:
                room = self._part_size - len(self._buffer)
                self._buffer += view[:room]
                view = view[room:]
                if len(self._buffer) == self._part_size:
                    self._upload_part()
        self.bytes_written += size
        return size

    def close(self) -> str:
        """Upload what is buffered and make the object appear; returns its ETag (unquoted).
        Closing twice is a no-op (the same ETag again)."""
        if self._state == "closed":
            assert self.etag is not None
            return self.etag
        if self._state == "aborted":
            raise ValueError(f"close of an aborted MultipartWriter for {self.key!r}")
        with self._aborting_on_error():
            if self._upload_id is None:
                etag = self._store.put_bytes(
                    self.key, bytes(self._buffer), self._content_type, self._metadata,
                    if_absent=self._if_absent, if_match=self._if_match,
                )
            else:
                if self._buffer:
                    self._upload_part()
                extra, condition = _condition_headers(self._if_absent, self._if_match)
                with self._store._errors("complete multipart upload of", self.key, condition):
                    response = self._client.complete_multipart_upload(
                        Bucket=self._store.bucket, Key=self.key, UploadId=self._upload_id,
                        MultipartUpload={"Parts": self._parts}, **extra,
                    )
                etag = _unquoted(response["ETag"])
        self._buffer = bytearray()
        self._state = "closed"
        self.etag = etag
        return etag

    def abort(self) -> None:
        """Discard the upload; nothing appears under the key. Safe to call more than once."""
        if self._state != "open":
            return
        self._state = "aborted"
        self._buffer = bytearray()
        if self._upload_id is not None:
            with self._store._errors("abort multipart upload of", self.key):
                self._client.abort_multipart_upload(Bucket=self._store.bucket, Key=self.key, UploadId=self._upload_id)

    @contextlib.contextmanager
    def _aborting_on_error(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            try:
                self.abort()
            except StorageError as abort_error:  # the original error matters more
                logger.warning("could not abort the multipart upload of %s: %s", self.key, abort_error)
            raise

    def _upload_part(self) -> None:
        store = self._store
        if self._upload_id is None:
            with store._errors("start multipart upload of", self.key):
                response = self._client.create_multipart_upload(
                    Bucket=store.bucket, Key=self.key, ContentType=self._content_type, Metadata=self._metadata
                )
            self._upload_id = response["UploadId"]
        number = len(self._parts) + 1
        with store._errors(f"upload part {number} of", self.key):
            response = self._client.upload_part(
                Bucket=store.bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number, Body=bytes(self._buffer)
            )
        self._parts.append({"PartNumber": number, "ETag": response["ETag"]})
        self._buffer = bytearray()
