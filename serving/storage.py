"""Object storage for Tessera: outputs and durable job records in any S3-compatible store.

This is the only module that talks to boto3. It speaks plain S3 (path-style by default, SigV4,
no flexible checksums) so that AWS S3, MinIO, Ceph and the embedded server all work, and turns
botocore's errors into a few specific exceptions that the gateway maps to gRPC codes:

    StorageError                  anything else that went wrong
    ├── ObjectNotFoundError       the key (or its bucket) does not exist
    ├── ObjectExistsError         put_bytes(..., if_absent=True) found the key taken
    ├── StorageAuthError          403, bad or missing credentials (an operator's problem)
    └── StorageUnavailableError   connection refused, timeouts, 5xx, after the configured retries

Thread safety: an :class:`ObjectStore` may be shared by threads (boto3 clients are thread-safe).
A :class:`MultipartWriter` is not: one writer belongs to one thread at a time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
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

logger = logging.getLogger(__name__)

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every part but the last
MAX_PART_SIZE = 5 * 1024 * 1024 * 1024
MAX_PRESIGN_EXPIRY_S = 7 * 24 * 3600
MAX_KEY_BYTES = 1024

_AUTH_CODES = {
    "AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId", "RequestTimeTooSkewed",
    "ExpiredToken", "InvalidToken", "AuthorizationHeaderMalformed", "403",
}
_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchBucket", "NotFound", "404"}
_UNAVAILABLE_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "503", "500"}


class StorageError(Exception):
    """A storage operation failed."""


class ObjectNotFoundError(StorageError):
    """The object (or its bucket) does not exist."""


class ObjectExistsError(StorageError):
    """A create-only write found the key already taken."""


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


def _check_key(key: str) -> None:
    if not key:
        raise ValueError("object key must not be empty")
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise ValueError(f"object key is longer than {MAX_KEY_BYTES} bytes (UTF-8): {key[:60]!r}...")


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    checked = dict(metadata or {})
    for name, value in checked.items():
        if not (name.isascii() and str(value).isascii()):
            raise ValueError(f"S3 user metadata must be ASCII (it travels in HTTP headers): {name!r}={value!r}")
    return checked


def _translate(error: Exception, action: str, where: str) -> StorageError:
    """The Tessera exception for a botocore one; `action` and `where` make the message."""
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
            return ObjectExistsError(message)
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
    return session.client("s3", endpoint_url=endpoint_url, config=botocore_config)


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
    def _errors(self, action: str, key: str | None = None) -> Iterator[None]:
        where = f"s3://{self.bucket}/{key}" if key is not None else f"s3://{self.bucket}"
        try:
            yield
        except (ClientError, BotoCoreError) as error:
            raise _translate(error, action, where) from error

    # --- names -----------------------------------------------------------------------------

    def uri(self, key: str) -> str:
        """``s3://bucket/key`` of a key in this store."""
        _check_key(key)
        return f"s3://{self.bucket}/{key}"

    @staticmethod
    def parse_uri(uri: str) -> tuple[str, str]:
        """``("bucket", "key")`` of ``s3://bucket/key``."""
        if not uri.startswith("s3://"):
            raise ValueError(f"not an s3:// URI: {uri!r}")
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not bucket or not key:
            raise ValueError(f"an s3:// URI needs a bucket and a key: {uri!r}")
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
    ) -> None:
        """Store ``data`` under ``key``, replacing any object there.

        With ``if_absent`` the write succeeds only if the key is free (``If-None-Match: *``,
        supported by AWS S3, MinIO and the embedded server) and raises ObjectExistsError otherwise.
        """
        _check_key(key)
        extra = {"IfNoneMatch": "*"} if if_absent else {}
        with self._errors("put", key):
            self._client.put_object(
                Bucket=self.bucket, Key=key, Body=bytes(data), ContentType=content_type,
                Metadata=_check_metadata(metadata), **extra,
            )

    def put_json(self, key: str, value: Any, metadata: Mapping[str, str] | None = None, *, if_absent: bool = False) -> None:
        """Store ``value`` as UTF-8 JSON."""
        data = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        self.put_bytes(key, data, "application/json", metadata, if_absent=if_absent)

    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; ObjectNotFoundError if there is none."""
        _check_key(key)
        with self._errors("get", key):
            response = self._client.get_object(Bucket=self.bucket, Key=key)
            with contextlib.closing(response["Body"]) as body:
                return body.read()

    def get_json(self, key: str) -> Any:
        """The object parsed as JSON."""
        data = self.get_bytes(key)
        try:
            return json.loads(data)
        except ValueError as error:
            raise StorageError(f"s3://{self.bucket}/{key} is not valid JSON: {error}") from error

    def head(self, key: str) -> ObjectInfo:
        """Size, ETag, type and user metadata of an object; ObjectNotFoundError if there is none."""
        _check_key(key)
        with self._errors("head", key):
            response = self._client.head_object(Bucket=self.bucket, Key=key)
        return ObjectInfo(
            key=key,
            size=response["ContentLength"],
            etag=response["ETag"].strip('"'),
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

    def delete(self, key: str) -> None:
        """Remove the object; removing a missing key is not an error (as in S3)."""
        _check_key(key)
        with self._errors("delete", key):
            self._client.delete_object(Bucket=self.bucket, Key=key)

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
        _check_key(key)
        expiry = self.config.presign_expiry_s if expiry_s is None else expiry_s
        if not 1 <= expiry <= MAX_PRESIGN_EXPIRY_S:
            raise ValueError(f"expiry_s must be 1..{MAX_PRESIGN_EXPIRY_S}, got {expiry}")
        with self._errors("presign", key):
            return self._presign_client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expiry
            )

    # --- streaming writes ----------------------------------------------------------------------

    def open_multipart(
        self, key: str, content_type: str = "application/octet-stream", metadata: Mapping[str, str] | None = None
    ) -> MultipartWriter:
        """A writer that streams an object of unknown size to ``key`` in parts; see MultipartWriter."""
        _check_key(key)
        return MultipartWriter(self, key, content_type, _check_metadata(metadata))


class MultipartWriter:
    """Streams an object to S3 as it grows: whole or not at all.

    ``write()`` buffers up to ``multipart_part_size`` bytes and uploads each full part at once, so
    memory stays at one part however long the video is. ``close()`` uploads the tail and completes
    the upload; an object smaller than one part is sent with a single PUT instead. ``abort()``
    discards everything. As a context manager it closes on success and aborts on an exception.
    Any failure inside write() or close() aborts the multipart upload before raising, so no
    orphaned upload (and no partial object) is ever left behind. Not thread-safe.
    """

    def __init__(self, store: ObjectStore, key: str, content_type: str, metadata: dict[str, str]):
        self._store = store
        self._client = store._client
        self.key = key
        self._content_type = content_type
        self._metadata = metadata
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

    def close(self) -> None:
        """Upload what is buffered and make the object appear. Closing twice is a no-op."""
        if self._state == "closed":
            return
        if self._state == "aborted":
            raise ValueError(f"close of an aborted MultipartWriter for {self.key!r}")
        with self._aborting_on_error():
            if self._upload_id is None:
                self._store.put_bytes(self.key, bytes(self._buffer), self._content_type, self._metadata)
            else:
                if self._buffer:
                    self._upload_part()
                with self._store._errors("complete multipart upload of", self.key):
                    self._client.complete_multipart_upload(
                        Bucket=self._store.bucket, Key=self.key, UploadId=self._upload_id,
                        MultipartUpload={"Parts": self._parts},
                    )
        self._buffer = bytearray()
        self._state = "closed"

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
