"""ObjectStore and MultipartWriter against the real embedded S3 server (no mocks)."""

from __future__ import annotations

import urllib.request

import pytest
from pydantic import ValidationError

from tessera.cluster.s3_server import EmbeddedS3Config, EmbeddedS3Server
from tessera.serving.storage import (
    ObjectExistsError,
    ObjectNotFoundError,
    ObjectStore,
    StorageAuthError,
    StorageConfig,
    StorageError,
    StorageUnavailableError,
)
from tests.conftest import storage_config_for

MiB = 1024 * 1024
AWKWARD_NAMES = ["a file with spaces.txt", "c++/a+b.json", "ünïcödé/動画.mp4", "x/y/z/deep", "odd!'()*&$@=;:,?#.bin"]


def pending_uploads(store: ObjectStore, prefix: str) -> list[str]:
    """Multipart uploads still open under a prefix (asked of the server directly)."""
    response = store._client.list_multipart_uploads(Bucket=store.bucket, Prefix=prefix)
    return [upload["Key"] for upload in response.get("Uploads", [])]


# --- whole objects ----------------------------------------------------------------------------


def test_bytes_and_json_round_trip(object_store, key_prefix):
    object_store.put_bytes(key_prefix + "poster.png", b"\x89PNG...", "image/png", metadata={"job-id": "abc"})
    assert object_store.get_bytes(key_prefix + "poster.png") == b"\x89PNG..."
    info = object_store.head(key_prefix + "poster.png")
    assert (info.size, info.content_type, info.metadata) == (7, "image/png", {"job-id": "abc"})

    record = {"state": "RUNNING", "caption": "un cercle rouge → droite", "steps": [1, 2]}
    object_store.put_json(key_prefix + "record.json", record)
    assert object_store.get_json(key_prefix + "record.json") == record
    assert object_store.head(key_prefix + "record.json").content_type == "application/json"


def test_missing_objects(object_store, key_prefix):
    with pytest.raises(ObjectNotFoundError, match="NoSuchKey"):
        object_store.get_bytes(key_prefix + "absent")
    with pytest.raises(ObjectNotFoundError):
        object_store.head(key_prefix + "absent")
    assert not object_store.exists(key_prefix + "absent")
    object_store.delete(key_prefix + "absent")  # deleting nothing is fine, as in S3

    object_store.put_bytes(key_prefix + "present", b"1")
    assert object_store.exists(key_prefix + "present")
    object_store.delete(key_prefix + "present")
    assert not object_store.exists(key_prefix + "present")


def test_invalid_json_is_a_storage_error(object_store, key_prefix):
    object_store.put_bytes(key_prefix + "broken.json", b"{not json", "application/json")
    with pytest.raises(StorageError, match="not valid JSON"):
        object_store.get_json(key_prefix + "broken.json")


def test_put_if_absent(object_store, key_prefix):
    key = key_prefix + "idempotency/k1.json"
    object_store.put_json(key, {"job_id": "first"}, if_absent=True)
    with pytest.raises(ObjectExistsError):
        object_store.put_json(key, {"job_id": "second"}, if_absent=True)
    assert object_store.get_json(key) == {"job_id": "first"}
    object_store.put_json(key, {"job_id": "third"})  # a plain put still replaces
    assert object_store.get_json(key) == {"job_id": "third"}


@pytest.mark.parametrize("name", AWKWARD_NAMES)
def test_awkward_keys(object_store, key_prefix, name):
    key = key_prefix + name
    object_store.put_bytes(key, name.encode())
    assert object_store.get_bytes(key) == name.encode()
    assert object_store.list_keys(key_prefix) == [key]
    with urllib.request.urlopen(object_store.presign_get(key), timeout=10) as response:
        assert response.read() == name.encode()


def test_key_and_metadata_validation(object_store):
    with pytest.raises(ValueError, match="empty"):
        object_store.put_bytes("", b"")
    with pytest.raises(ValueError, match="1024"):
        object_store.get_bytes("k" * 1025)
    with pytest.raises(ValueError, match="ASCII"):
        object_store.put_bytes("k", b"", metadata={"caption": "vidéo"})


def test_uris(object_store):
    assert object_store.uri("acme/j1/video.mp4") == "s3://tessera-test/acme/j1/video.mp4"
    assert ObjectStore.parse_uri("s3://tessera-test/acme/j1/video.mp4") == ("tessera-test", "acme/j1/video.mp4")
    for bad in ("http://b/k", "s3://bucket-only", "s3:///key"):
        with pytest.raises(ValueError):
            ObjectStore.parse_uri(bad)


# --- listing ------------------------------------------------------------------------------------


def test_listing_pages_in_byte_order(object_store, key_prefix):
    names = ["jobs/b", "jobs/a", "jobs-x", "jobs/c/1", "jobs/é", "jobs/a-2", "jobs/a/1"]
    for name in names:
        object_store.put_bytes(key_prefix + name, b"")
    expected = sorted((key_prefix + name for name in names), key=lambda key: key.encode())

    assert list(object_store.iter_keys(key_prefix, page_size=2)) == expected  # continuation tokens
    assert object_store.list_keys(key_prefix, limit=3) == expected[:3]

    walked, after = [], None  # the way JobStore pages: start_after the last key seen
    while page := object_store.list_keys(key_prefix, start_after=after, limit=2):
        walked += page
        after = page[-1]
    assert walked == expected
    assert object_store.list_keys(key_prefix + "jobs/") == [key for key in expected if key.startswith(key_prefix + "jobs/")]
    assert object_store.list_keys(key_prefix + "nothing/") == []


# --- presigned URLs --------------------------------------------------------------------------------


def test_presigned_get(object_store, key_prefix):
    object_store.put_bytes(key_prefix + "video.mp4", b"\x00\x00\x00 ftyp", "video/mp4")
    url = object_store.presign_get(key_prefix + "video.mp4", expiry_s=60)
    assert url.startswith(object_store.config.endpoint_url + "/") and "X-Amz-Expires=60" in url
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"\x00\x00\x00 ftyp"
        assert response.headers["Content-Type"] == "video/mp4"
    with pytest.raises(ValueError):
        object_store.presign_get(key_prefix + "video.mp4", expiry_s=0)


def test_presigned_urls_can_name_a_public_endpoint(make_store, s3_server, key_prefix):
    public = s3_server.endpoint_url.replace("127.0.0.1", "localhost")
    store = make_store(presign_endpoint_url=public)
    store.put_bytes(key_prefix + "shared", b"via the public name")
    url = store.presign_get(key_prefix + "shared")
    assert url.startswith(public + "/")
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"via the public name"


# --- multipart -------------------------------------------------------------------------------------


def test_multipart_streams_parts_and_appears_only_on_close(make_store, key_prefix):
    store = make_store(multipart_part_size=5 * MiB)
    key = key_prefix + "video.mp4"
    chunk = bytes(range(256)) * 4099  # odd-sized writes (about 1 MiB) that straddle part boundaries
    total = 12 * MiB + 12345
    writer = store.open_multipart(key, "video/mp4")
    written = bytearray()
    while len(written) < total:
        piece = chunk[: total - len(written)]
        writer.write(piece)
        written += piece
        assert not store.exists(key)
    assert writer.parts_uploaded == 2  # two full parts went out while writing
    assert pending_uploads(store, key_prefix) == [key]
    writer.close()
    assert writer.parts_uploaded == 3 and writer.bytes_written == total
    info = store.head(key)
    assert info.size == total and info.content_type == "video/mp4" and info.etag.endswith("-3")
    assert store.get_bytes(key) == bytes(written)
    assert pending_uploads(store, key_prefix) == []
    writer.close()  # idempotent
    with pytest.raises(ValueError):
        writer.write(b"more")


def test_small_or_empty_multipart_is_a_single_put(object_store, key_prefix):
    with object_store.open_multipart(key_prefix + "small.mp4", "video/mp4") as writer:
        writer.write(b"tiny")
        assert not object_store.exists(key_prefix + "small.mp4")
    assert writer.parts_uploaded == 0
    assert object_store.get_bytes(key_prefix + "small.mp4") == b"tiny"
    with object_store.open_multipart(key_prefix + "empty.bin"):
        pass
    assert object_store.get_bytes(key_prefix + "empty.bin") == b""


def test_multipart_aborts_on_exception(make_store, key_prefix):
    store = make_store(multipart_part_size=5 * MiB)
    key = key_prefix + "failed.mp4"
    with pytest.raises(RuntimeError, match="decoder died"):
        with store.open_multipart(key, "video/mp4") as writer:
            writer.write(b"v" * (11 * MiB))
            assert writer.parts_uploaded == 2 and pending_uploads(store, key_prefix) == [key]
            raise RuntimeError("decoder died")
    assert not store.exists(key)
    assert pending_uploads(store, key_prefix) == []
    writer.abort()  # idempotent
    with pytest.raises(ValueError):
        writer.close()


# --- failures -----------------------------------------------------------------------------------


def test_bad_credentials_are_auth_errors(make_store, s3_server, key_prefix):
    wrong_secret = make_store(secret_access_key="not-the-secret")
    with pytest.raises(StorageAuthError, match="SignatureDoesNotMatch"):
        wrong_secret.put_bytes(key_prefix + "x", b"x")
    unknown_key = make_store(access_key_id="NOBODY", secret_access_key="nothing")
    with pytest.raises(StorageAuthError, match="InvalidAccessKeyId"):
        unknown_key.get_bytes(key_prefix + "x")
    with pytest.raises(StorageAuthError):
        unknown_key.exists(key_prefix + "x")  # HEAD: 403 without a body is still an auth error


def test_stopped_server_is_unavailable(tmp_path):
    with EmbeddedS3Server(EmbeddedS3Config(data_dir=tmp_path / "s3")) as server:
        store = ObjectStore(storage_config_for(server, max_attempts=2, connect_timeout_s=1.0))
        store.put_bytes("k", b"v")
    with pytest.raises(StorageUnavailableError, match="unreachable"):
        store.get_bytes("k")
    writer = store.open_multipart("video.mp4")
    with pytest.raises(StorageUnavailableError):
        writer.write(b"x" * store.config.multipart_part_size)


def test_ensure_bucket_creates_once(make_store):
    store = make_store(bucket="tessera-ensure-test")
    with pytest.raises(ObjectNotFoundError, match="NoSuchBucket"):
        store.put_bytes("k", b"v")
    store.ensure_bucket()
    store.ensure_bucket()
    store.put_bytes("k", b"v")
    assert store.get_bytes("k") == b"v"


def test_storage_config_is_strict():
    StorageConfig(bucket="outputs")  # AWS defaults: default credential chain, regional endpoint
    with pytest.raises(ValidationError, match="both"):
        StorageConfig(bucket="outputs", access_key_id="id-only")
    with pytest.raises(ValidationError):
        StorageConfig(bucket="outputs", multipart_part_size=MiB)
    with pytest.raises(ValidationError):
        StorageConfig(bucket="Bad_Bucket")
    with pytest.raises(ValidationError):
        StorageConfig(bucket="outputs", endpoint="http://x")
    config = StorageConfig(bucket="outputs", access_key_id="id", secret_access_key="shh")
    assert "shh" not in repr(config)
    with pytest.raises(ValidationError):
        config.bucket = "other"  # frozen
