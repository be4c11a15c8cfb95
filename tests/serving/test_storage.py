"""ObjectStore and MultipartWriter against the real embedded S3 server (no mocks)."""

from __future__ import annotations

import hashlib
import re
import threading
import urllib.request

import pytest
from pydantic import ValidationError

from tessera.cluster.s3_server import EmbeddedS3Config, EmbeddedS3Server
from tessera.serving import storage
from tessera.serving.storage import (
    ConditionFailedError,
    InvalidKeyError,
    ObjectExistsError,
    ObjectNotFoundError,
    ObjectStore,
    StorageAuthError,
    StorageConfig,
    StorageError,
    StorageUnavailableError,
    check_key,
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


# --- conditional writes and ETags ----------------------------------------------------------------


def test_writes_return_the_new_etag_and_reads_the_current_one(object_store, key_prefix):
    key = key_prefix + "jobs/j1.json"
    etag = object_store.put_bytes(key, b"payload")
    assert etag == hashlib.md5(b"payload").hexdigest() == object_store.head(key).etag  # unquoted
    assert object_store.get_bytes_with_etag(key) == (b"payload", etag)
    json_etag = object_store.put_json(key, {"state": "QUEUED"})
    assert json_etag != etag and object_store.get_json_with_etag(key) == ({"state": "QUEUED"}, json_etag)
    with pytest.raises(ObjectNotFoundError):
        object_store.get_bytes_with_etag(key_prefix + "absent")
    object_store.put_bytes(key_prefix + "broken.json", b"{")
    with pytest.raises(StorageError, match="not valid JSON"):
        object_store.get_json_with_etag(key_prefix + "broken.json")


def test_put_if_match(object_store, key_prefix):
    key = key_prefix + "jobs/j1.json"
    with pytest.raises(ObjectNotFoundError, match="NoSuchKey"):  # what S3 answers for If-Match on no object
        object_store.put_json(key, {"v": 0}, if_match="0" * 32)
    first = object_store.put_json(key, {"v": 1}, if_absent=True)
    second = object_store.put_json(key, {"v": 2}, if_match=first)
    third = object_store.put_json(key, {"v": 3}, if_match=f'"{second}"')  # quoted works too
    with pytest.raises(ConditionFailedError, match="PreconditionFailed") as stale:
        object_store.put_json(key, {"v": "stale"}, if_match=second)
    assert not isinstance(stale.value, ObjectExistsError)  # it is not an If-None-Match failure
    assert object_store.get_json_with_etag(key) == ({"v": 3}, third)
    with pytest.raises(ValueError, match="not both"):
        object_store.put_bytes(key, b"x", if_absent=True, if_match=third)
    with pytest.raises(ValueError, match=r"If-Match: \*"):
        object_store.put_bytes(key, b"x", if_match="*")
    with pytest.raises(ValueError):
        object_store.put_bytes(key, b"x", if_match="")
    assert object_store.get_json(key) == {"v": 3}


def test_object_exists_is_a_failed_condition(object_store, key_prefix):
    key = key_prefix + "claim"
    object_store.put_bytes(key, b"mine", if_absent=True)
    with pytest.raises(ObjectExistsError):
        object_store.put_bytes(key, b"theirs", if_absent=True)
    with pytest.raises(ConditionFailedError):  # callers that handle every failed condition catch it too
        object_store.put_bytes(key, b"theirs", if_absent=True)
    assert issubclass(ObjectExistsError, ConditionFailedError) and issubclass(ConditionFailedError, StorageError)


def test_racing_lease_renewals_exactly_one_wins(object_store, key_prefix):
    key = key_prefix + "jobs/lease.json"
    etag = object_store.put_json(key, {"owner": None, "generation": 0}, if_absent=True)
    barrier = threading.Barrier(8)
    outcomes: dict[int, object] = {}

    def take(replica: int) -> None:
        barrier.wait()
        try:
            outcomes[replica] = object_store.put_json(key, {"owner": replica, "generation": 1}, if_match=etag)
        except StorageError as error:
            outcomes[replica] = error

    threads = [threading.Thread(target=take, args=(replica,)) for replica in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    winners = [replica for replica, outcome in outcomes.items() if isinstance(outcome, str)]
    assert len(winners) == 1, outcomes
    assert all(isinstance(outcome, ConditionFailedError) for outcome in outcomes.values() if not isinstance(outcome, str))
    record, current = object_store.get_json_with_etag(key)
    assert record == {"owner": winners[0], "generation": 1} and current == outcomes[winners[0]]
    # the losers' fenced writes fail for good: their etag is gone
    with pytest.raises(ConditionFailedError):
        object_store.put_json(key, {"owner": "a loser", "generation": 1}, if_match=etag)


def test_conditional_delete(object_store, key_prefix):
    key = key_prefix + "jobs/j1.json"
    etag = object_store.put_json(key, {"v": 1})
    with pytest.raises(ConditionFailedError):
        object_store.delete(key, if_match="0" * 32)
    assert object_store.exists(key)
    object_store.delete(key, if_match=f'"{etag}"')
    assert not object_store.exists(key)
    with pytest.raises(ObjectNotFoundError):  # S3 answers 404 to a conditional delete of nothing
        object_store.delete(key, if_match=etag)
    with pytest.raises(ObjectNotFoundError):
        object_store.delete(key, if_match="*")
    object_store.delete(key)  # an unconditional delete of nothing stays fine
    object_store.put_json(key, {"v": 2})
    object_store.delete(key, if_match="*")  # "*": whatever object is there
    assert not object_store.exists(key)
    with pytest.raises(ValueError):
        object_store.delete(key, if_match="")


def test_copy(object_store, key_prefix):
    source, dest = key_prefix + "staging/poster.png", key_prefix + "final/poster.png"
    source_etag = object_store.put_bytes(source, b"\x89PNG", "image/png", metadata={"job-id": "j1"})
    with pytest.raises(ObjectNotFoundError):  # If-Match names an object the destination lacks
        object_store.copy(source, dest, if_match=source_etag)
    etag = object_store.copy(source, dest, if_absent=True)
    info = object_store.head(dest)
    assert etag == source_etag == info.etag
    assert (object_store.get_bytes(dest), info.content_type, info.metadata) == (b"\x89PNG", "image/png", {"job-id": "j1"})
    with pytest.raises(ObjectExistsError):
        object_store.copy(source, dest, if_absent=True)
    with pytest.raises(ConditionFailedError):
        object_store.copy(source, dest, if_match="0" * 32)
    assert object_store.copy(source, dest, if_match=etag) == etag
    object_store.copy(source, dest)  # idempotent: the same bytes again
    with pytest.raises(ObjectNotFoundError):
        object_store.copy(key_prefix + "staging/absent", dest)
    with pytest.raises(StorageError, match="InvalidRequest"):  # onto itself, nothing changed: S3 refuses
        object_store.copy(source, source)
    with pytest.raises(ValueError, match="not both"):
        object_store.copy(source, dest, if_absent=True, if_match=etag)


def test_copy_above_the_copy_object_limit_goes_in_parts(make_store, key_prefix, monkeypatch):
    store = make_store(multipart_part_size=5 * MiB)
    monkeypatch.setattr(storage, "MAX_COPY_OBJECT_SIZE", 4 * MiB)  # stands for S3's 5 GiB
    source, dest = key_prefix + "staging/video.mp4", key_prefix + "final/video.mp4"
    data = bytes(range(256)) * (4096 * 11 + 7)  # 11 MiB and a bit: three parts
    store.put_bytes(source, data, "video/mp4", metadata={"job-id": "j1"})
    etag = store.copy(source, dest, if_absent=True)
    info = store.head(dest)
    assert etag == info.etag and etag.endswith("-3")
    assert (store.get_bytes(dest), info.content_type, info.metadata) == (data, "video/mp4", {"job-id": "j1"})
    with pytest.raises(ObjectExistsError):
        store.copy(source, dest, if_absent=True)
    with pytest.raises(ConditionFailedError):
        store.copy(source, dest, if_match="0" * 32 + "-3")
    assert pending_uploads(store, key_prefix) == []  # the failed copies were aborted
    assert store.copy(source, dest, if_match=etag) == etag


def test_multipart_writer_conditions(make_store, key_prefix):
    store = make_store(multipart_part_size=5 * MiB)
    key = key_prefix + "video.mp4"
    part = b"v" * (5 * MiB)
    with store.open_multipart(key, "video/mp4", if_absent=True) as writer:
        writer.write(part + b"tail")
    assert writer.etag == store.head(key).etag and writer.etag.endswith("-2")
    assert writer.close() == writer.etag  # closing again: the same ETag

    for condition, error in (({"if_absent": True}, ObjectExistsError), ({"if_match": "0" * 32 + "-2"}, ConditionFailedError)):
        writer = store.open_multipart(key, "video/mp4", **condition)
        writer.write(part + b"other")
        assert writer.parts_uploaded == 1 and pending_uploads(store, key_prefix) == [key]
        with pytest.raises(error):
            writer.close()
        assert pending_uploads(store, key_prefix) == []  # aborted: no orphan left
        assert writer.closed and store.head(key).etag != writer.etag
    assert store.get_bytes(key) == part + b"tail"

    writer = store.open_multipart(key, "video/mp4", if_match=store.head(key).etag)
    writer.write(part)
    replaced = writer.close()
    assert store.head(key).etag == replaced and store.get_bytes(key) == part

    # S3 refuses an If-Match completion when the key was written after the upload began, even
    # with the same bytes (409 ConditionalRequestConflict)
    same = store.put_bytes(key, b"same", if_match=replaced)
    writer = store.open_multipart(key, if_match=same)
    writer.write(part + b"x")
    assert store.put_bytes(key, b"same") == same
    with pytest.raises(ConditionFailedError, match="ConditionalRequestConflict"):
        writer.close()
    assert pending_uploads(store, key_prefix) == []

    # an object smaller than a part goes in one conditional PUT
    with pytest.raises(ObjectExistsError):
        with store.open_multipart(key, if_absent=True) as writer:
            writer.write(b"small")
    with pytest.raises(ValueError, match="not both"):
        store.open_multipart(key, if_absent=True, if_match=same)


def test_abort_uploads(make_store, key_prefix):
    store = make_store(multipart_part_size=5 * MiB)
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        store.open_multipart(key_prefix + "job/" + name).write(b"x" * (5 * MiB))  # left behind, as by a crash
    store.open_multipart(key_prefix + "other/d.mp4").write(b"x" * (5 * MiB))
    assert store.abort_uploads(key_prefix + "job/") == 3
    assert pending_uploads(store, key_prefix) == [key_prefix + "other/d.mp4"]
    assert store.abort_uploads(key_prefix) == 1 and store.abort_uploads(key_prefix) == 0


# --- keys ---------------------------------------------------------------------------------------

BAD_KEYS = [
    ("", "empty"),
    ("k" * 1025, "1025 bytes long, more than 1024"),
    ("é" * 513, "1026 bytes long"),
    ("a/./b", "'.' segment"),
    ("a/../b", "'..' segment"),
    ("..", "'..' segment"),
    ("a//b", "empty segment"),
    ("/a", "start with '/'"),
    ("a/", "end with '/'"),
    ("nul\x00byte", "control character (U+0000) at position 3"),
    ("new\nline", "U+000A"),
    ("del\x7f", "U+007F"),
    ("c1\x85", "U+0085"),
    ("lone \ud800 surrogate", "not valid Unicode"),
]


@pytest.mark.parametrize(("key", "reason"), BAD_KEYS)
def test_check_key_refuses_keys_stores_would_normalise(key, reason):
    with pytest.raises(InvalidKeyError, match=re.escape(reason)) as caught:
        check_key(key)
    assert isinstance(caught.value, ValueError)
    assert len(str(caught.value)) < 200  # the key is never echoed whole


def test_check_key_accepts_what_tessera_writes():
    for key in ["acme/j1/video.mp4", "a", "x" * 1024, "é" * 512, "odd!'()*&$@=;:,?#[]~+ %.bin", "a/.hidden/..b/c.", "日本/語"]:
        check_key(key)
    with pytest.raises(InvalidKeyError, match="string"):
        check_key(b"bytes/key")  # type: ignore[arg-type]


def test_long_keys_are_cut_in_messages():
    key = "secret-" + "k" * 5000
    with pytest.raises(InvalidKeyError) as caught:
        check_key(key + "\x00")
    message = str(caught.value)
    assert "5008 characters" in message and "k" * 61 not in message and len(message) < 200


def test_bad_keys_fail_before_any_request(make_store):
    unreachable = make_store(endpoint_url="http://127.0.0.1:9", max_attempts=1, connect_timeout_s=0.5)
    for call in (lambda: unreachable.get_bytes("a/../b"), lambda: unreachable.put_bytes("a//b", b""),
                 lambda: unreachable.delete("x\x00", if_match="*"), lambda: unreachable.copy("ok", "../escape"),
                 lambda: unreachable.open_multipart("/abs"), lambda: unreachable.uri("a/./b")):
        with pytest.raises(InvalidKeyError):
            call()


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
    for bad, reason in (
        ("http://b/k", "not an s3:// URI"),
        ("s3://bucket-only", "needs a bucket and a key"),
        ("s3:///key", "needs a bucket and a key"),
        ("s3://bucket/", "needs a bucket and a key"),
        ("s3://Bad_Bucket/key", "bucket name"),
        ("s3://bucket/acme/../other/x", "'..' segment"),
        ("s3://bucket/acme//x", "empty segment"),
        ("s3://bucket/acme/\x00", "control character"),
        (None, "must be a string"),
    ):
        with pytest.raises(InvalidKeyError, match=reason):
            ObjectStore.parse_uri(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyError) as caught:
        ObjectStore.parse_uri("http://" + "x" * 100_000)
    assert "100007 characters" in str(caught.value) and len(str(caught.value)) < 200


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
