"""Media inputs of a request: read (inline or from the bucket), checked, probed, kept with the job.

At submit the gateway reads every image or video a request names, checks where it comes from
(a tenant reads only its own ``{tenant}/`` prefix or a prefix the deployment shares) and how
big it is, and probes it (kind, size, frames, rate) so that validation can resolve the request
before any model work. The bytes are then stored beside the job record, at
``_tessera/inputs/{tenant}/{job_id}/{field}``: the render, and a re-run after a restart, read
that one copy however the caller's object changes later. They are deleted when the job ends.
"""

from __future__ import annotations

import dataclasses
import hashlib

from tessera.serving.config import LimitsConfig
from tessera.serving.errors import (
    InputTooLargeError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    describe_value,
)
from tessera.serving.jobs.records import PREFIX
from tessera.serving.jobs.spec import GenerationRequest, MediaInfo
from tessera.serving.media import probe_media
from tessera.serving.storage import (
    InvalidKeyError,
    ObjectNotFoundError,
    ObjectStore,
    StorageAuthError,
    StorageError,
    StorageUnavailableError,
    check_key,
)


def input_prefix(tenant: str, job_id: str) -> str:
    """Where a job's inputs are kept."""
    return f"{PREFIX}/inputs/{tenant}/{job_id}/"


def read_input(store: ObjectStore, tenant: str, job_id: str, name: str) -> bytes:
    """The stored copy of a job's input (blocking I/O)."""
    try:
        return store.get_bytes(input_prefix(tenant, job_id) + name)
    except ObjectNotFoundError:
        raise NotFoundError(f"the stored copy of input {name} of job {job_id} is gone") from None


def input_key(name: str, uri: str, *, bucket: str, tenant: str, shared_prefixes: tuple[str, ...] = ()) -> str:
    """The object key of a caller's ``s3://`` input, checked before any request reaches S3.

    The URI must name this deployment's bucket and a well-formed key (``check_key``: no empty,
    ``.`` or ``..`` segments, no NUL or control characters, at most 1024 UTF-8 bytes), so the
    tenant check below sees the key S3 will serve: ``bob/../alice/x`` never passes as ``bob/``'s.
    Raises InvalidRequestError for a malformed URI, PermissionDeniedError outside the tenant."""
    shown = describe_value(uri)
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise InvalidRequestError(f"{name}.uri {shown} is not an s3:// URI (s3://bucket/key)")
    try:
        uri_bucket, key = ObjectStore.parse_uri(uri)
        check_key(key)
    except InvalidKeyError as error:
        reason = (str(error).strip().splitlines() or ["malformed key"])[0][:200]  # it quotes the URI, cut short
        raise InvalidRequestError(f"{name}.uri is not a valid s3:// URI: {reason}") from None
    except ValueError:
        raise InvalidRequestError(f"{name}.uri {shown} is not a valid s3:// URI: it needs a bucket and a key (s3://bucket/key)") from None
    if uri_bucket != bucket:
        raise InvalidRequestError(
            f"{name}.uri {shown}: inputs are read from this deployment's bucket, {describe_value(bucket)}"
        )
    if not key.startswith(f"{tenant}/") and not any(key.startswith(prefix) for prefix in shared_prefixes):
        raise PermissionDeniedError(
            f"{name}.uri {shown} is outside this tenant's prefix {tenant}/ (and no shared input prefix holds it)"
        )
    return key


def delete_inputs(store: ObjectStore, tenant: str, job_id: str) -> None:
    for key in store.list_keys(input_prefix(tenant, job_id)):
        store.delete(key)


@dataclasses.dataclass
class CollectedInput:
    name: str
    data: bytes
    info: MediaInfo


class InputCollector:
    """Reads, checks, probes and stores the media inputs of new jobs."""

    def __init__(self, store: ObjectStore, limits: LimitsConfig):
        self.store = store
        self.limits = limits

    def collect(self, tenant: str, request: GenerationRequest) -> dict[str, CollectedInput]:
        """Every media input of ``request``, read and probed (blocking I/O: run it in a thread)."""
        collected = {}
        for name, media in request.media().items():
            if media.uri:
                data = self._read_uri(tenant, name, media.uri)
                source = media.uri
            elif media.data is not None:
                data = media.data
                if len(data) > self.limits.max_inline_input_bytes:
                    raise InputTooLargeError(
                        f"{name} is {len(data)} bytes inline; the limit is {self.limits.max_inline_input_bytes} bytes: "
                        f"upload it to the bucket under your prefix and give its s3:// URI instead"
                    )
                source = "inline"
            else:
                raise InvalidRequestError(f"{name} has neither data nor uri")
            info = probe_media(
                data, name, max_side=self.limits.max_input_side, source=source, sha256=hashlib.sha256(data).hexdigest()
            )
            collected[name] = CollectedInput(name, data, info)
        return collected

    def _read_uri(self, tenant: str, name: str, uri: str) -> bytes:
        key = input_key(name, uri, bucket=self.store.bucket, tenant=tenant, shared_prefixes=self.limits.shared_input_prefixes)
        shown = describe_value(uri)
        try:
            size = self.store.head(key).size
            if size > self.limits.max_input_bytes:
                raise InputTooLargeError(f"{name}.uri {shown} is {size} bytes; inputs may be at most {self.limits.max_input_bytes} bytes")
            return self.store.get_bytes(key)
        except ObjectNotFoundError:
            raise NotFoundError(f"{name}.uri {shown}: no such object") from None
        except (StorageUnavailableError, StorageAuthError):
            raise  # the store's fault, not the caller's: UNAVAILABLE at the gateway
        except StorageError:
            # Any other 4xx (400 InvalidArgument, KeyTooLong...): the store refused this key.
            raise InvalidRequestError(f"{name}.uri {shown}: the object store refused this key") from None

    def save(self, tenant: str, job_id: str, collected: dict[str, CollectedInput]) -> None:
        for item in collected.values():
            self.store.put_bytes(input_prefix(tenant, job_id) + item.name, item.data, "application/octet-stream")
