"""The embedded S3 server: signature checks, S3 behaviour Tessera relies on, and its lifecycle.

Protocol tests talk to the session's server with boto3, raw HTTP and urllib; lifecycle tests start
servers of their own on temporary data dirs."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import boto3
import botocore.auth
import botocore.awsrequest
import botocore.credentials
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tessera.cluster.s3_server import EmbeddedS3Config, EmbeddedS3Server, S3ServerError, read_credentials

MiB = 1024 * 1024
REPO = Path(__file__).resolve().parents[2]
AWKWARD_KEYS = [
    "with space/and  two spaces.bin",
    "plus+sign/a+b=c.txt",
    "unicode/vidéo-日本語-🎬.mp4",
    "deep/nested/path/to/object",
    "symbols/!'()*&$@=;:,?#[]~.txt",
    "percent/100%25 done%.txt",
]


def client_for(endpoint: str, key_id: str, secret: str):
    config = Config(
        signature_version="s3v4", s3={"addressing_style": "path"},
        retries={"mode": "standard", "max_attempts": 1},
        request_checksum_calculation="when_required", response_checksum_validation="when_required",
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=key_id, aws_secret_access_key=secret, config=config,
    )


@pytest.fixture(scope="module")
def s3(s3_server):
    creds = s3_server.credentials
    return client_for(s3_server.endpoint_url, creds.access_key_id, creds.secret_access_key)


def error_of(error: ClientError) -> tuple[str, int]:
    return error.response["Error"]["Code"], error.response["ResponseMetadata"]["HTTPStatusCode"]


def http_error(url: str, method: str = "GET", data: bytes | None = None, headers: dict | None = None) -> tuple[int, str]:
    """Status and S3 error code of a request that must fail."""
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    body = caught.value.read()
    return caught.value.code, ET.fromstring(body).findtext("Code") if body else ""


def signed_request(server, method: str, key: str, signed_body: bytes, sent_body: bytes, changed_headers: dict | None = None):
    """Sign a request for signed_body with botocore's own SigV4 signer, then send sent_body (and
    changed_headers) instead."""
    url = f"{server.endpoint_url}/{server.bucket}/{urllib.parse.quote(key)}"
    request = botocore.awsrequest.AWSRequest(method=method, url=url, data=signed_body)
    creds = botocore.credentials.Credentials(server.credentials.access_key_id, server.credentials.secret_access_key)
    botocore.auth.S3SigV4Auth(creds, "s3", "us-east-1").add_auth(request)
    headers = {**dict(request.prepare().headers), **(changed_headers or {})}
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request(method, request.prepare().url[len(server.endpoint_url):], body=sent_body, headers=headers)
        response = connection.getresponse()
        body = response.read()
        return response.status, (ET.fromstring(body).findtext("Code") if body else "")
    finally:
        connection.close()


def raw_request(server, method: str, key: str, body: bytes = b"", headers: dict | None = None, query: str = ""):
    """A request signed (headers included) with botocore's SigV4 signer: status, headers, body."""
    url = f"{server.endpoint_url}/{server.bucket}/{urllib.parse.quote(key)}" + (f"?{query}" if query else "")
    request = botocore.awsrequest.AWSRequest(method=method, url=url, data=body, headers=headers or {})
    creds = botocore.credentials.Credentials(server.credentials.access_key_id, server.credentials.secret_access_key)
    botocore.auth.S3SigV4Auth(creds, "s3", "us-east-1").add_auth(request)
    prepared = request.prepare()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request(method, prepared.url[len(server.endpoint_url):], body=body, headers=dict(prepared.headers))
        response = connection.getresponse()
        return response.status, {name.lower(): value for name, value in response.getheaders()}, response.read()
    finally:
        connection.close()


def s3_error(error: ClientError) -> tuple[int, dict]:
    """Status and the whole parsed <Error> element (Code, Message and S3's detail elements)."""
    return error.response["ResponseMetadata"]["HTTPStatusCode"], error.response["Error"]


def fails(call, **params) -> tuple[int, dict]:
    with pytest.raises(ClientError) as caught:
        call(**params)
    return s3_error(caught.value)


PRECONDITION = "At least one of the pre-conditions you specified did not hold"
NOT_IMPLEMENTED = "A header you provided implies functionality that is not implemented"


def precondition_failed(condition: str) -> tuple[int, dict]:
    return 412, {"Code": "PreconditionFailed", "Message": PRECONDITION, "Condition": condition}


def no_such_key(key: str) -> tuple[int, dict]:
    return 404, {"Code": "NoSuchKey", "Message": "The specified key does not exist.", "Key": key}


def conflict(condition: str, key: str) -> tuple[int, dict]:
    return 409, {
        "Code": "ConditionalRequestConflict",
        "Message": "The conditional request cannot succeed due to a conflicting operation against this resource.",
        "Condition": condition, "Key": key,
    }


def not_implemented(header: str, additional: str | None = None) -> tuple[int, dict]:
    error = {"Code": "NotImplemented", "Message": NOT_IMPLEMENTED, "Header": header}
    if additional:
        error["additionalMessage"] = additional
    return 501, error


def race(count: int, attempt) -> list:
    """Run attempt(i) in `count` threads released at once; their results (or ClientErrors)."""
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = attempt(i)
        except ClientError as error:
            results[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


# --- signatures ------------------------------------------------------------------------------------


def test_valid_credentials_round_trip_with_metadata(s3, s3_server, key_prefix):
    key = key_prefix + "hello.txt"
    s3.put_object(Bucket=s3_server.bucket, Key=key, Body=b"hello", ContentType="text/plain", Metadata={"job": "j1"})
    got = s3.get_object(Bucket=s3_server.bucket, Key=key)
    assert got["Body"].read() == b"hello"
    assert got["ContentType"] == "text/plain"
    assert got["Metadata"] == {"job": "j1"}


def test_wrong_secret_is_refused_and_writes_nothing(s3, s3_server, key_prefix):
    key = key_prefix + "denied"
    intruder = client_for(s3_server.endpoint_url, s3_server.credentials.access_key_id, "not-the-secret")
    with pytest.raises(ClientError) as caught:
        intruder.put_object(Bucket=s3_server.bucket, Key=key, Body=b"x")
    assert error_of(caught.value) == ("SignatureDoesNotMatch", 403)
    with pytest.raises(ClientError) as caught:
        intruder.list_objects_v2(Bucket=s3_server.bucket)
    assert error_of(caught.value) == ("SignatureDoesNotMatch", 403)
    assert s3.list_objects_v2(Bucket=s3_server.bucket, Prefix=key_prefix)["KeyCount"] == 0


def test_unknown_access_key_is_refused(s3_server):
    stranger = client_for(s3_server.endpoint_url, "S3RVER", "S3RVER")  # s3rver's built-in account is gone
    with pytest.raises(ClientError) as caught:
        stranger.list_objects_v2(Bucket=s3_server.bucket)
    assert error_of(caught.value) == ("InvalidAccessKeyId", 403)


def test_anonymous_requests_are_refused(s3, s3_server, key_prefix):
    key = key_prefix + "private"
    s3.put_object(Bucket=s3_server.bucket, Key=key, Body=b"secret")
    assert http_error(f"{s3_server.endpoint_url}/{s3_server.bucket}/{key}") == (403, "AccessDenied")
    assert http_error(f"{s3_server.endpoint_url}/{s3_server.bucket}/{key}", "PUT", b"x") == (403, "AccessDenied")


def test_signed_payload_hash_is_checked(s3, s3_server, key_prefix):
    key = key_prefix + "tampered"
    status, code = signed_request(s3_server, "PUT", key, b"the signed body", b"another body!!!")
    assert (status, code) == (400, "XAmzContentSHA256Mismatch")
    with pytest.raises(ClientError) as caught:
        s3.head_object(Bucket=s3_server.bucket, Key=key)
    assert error_of(caught.value)[1] == 404  # the rejected upload left nothing behind
    assert signed_request(s3_server, "PUT", key, b"same body", b"same body") == (200, "")
    assert s3.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read() == b"same body"


def test_aws_chunked_uploads_are_refused(s3_server, key_prefix):
    streaming = {"X-Amz-Content-SHA256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"}
    assert signed_request(s3_server, "PUT", key_prefix + "chunked", b"x", b"x", streaming) == (501, "NotImplemented")


def test_sigv4_and_listing_units_in_node():
    result = subprocess.run(
        ["node", "--test", str(REPO / "tests" / "cluster" / "sigv4.test.js")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout


# --- presigned URLs --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", AWKWARD_KEYS)
def test_presigned_get_works_over_plain_http(s3, s3_server, key_prefix, name):
    key = key_prefix + name
    s3.put_object(Bucket=s3_server.bucket, Key=key, Body=name.encode())
    url = s3.generate_presigned_url("get_object", Params={"Bucket": s3_server.bucket, "Key": key}, ExpiresIn=300)
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == name.encode()


def test_presigned_url_expires(s3, s3_server, key_prefix):
    key = key_prefix + "short-lived"
    s3.put_object(Bucket=s3_server.bucket, Key=key, Body=b"x")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": s3_server.bucket, "Key": key}, ExpiresIn=1)
    # X-Amz-Date has whole seconds: the URL is dead at most 2 s after it was made.
    time.sleep(2.2)
    assert http_error(url) == (403, "AccessDenied")


def test_tampered_presigned_urls_are_refused(s3, s3_server, key_prefix):
    for name in ("mine", "theirs"):
        s3.put_object(Bucket=s3_server.bucket, Key=key_prefix + name, Body=name.encode())
    url = s3.generate_presigned_url("get_object", Params={"Bucket": s3_server.bucket, "Key": key_prefix + "mine"})
    other_key = url.replace("/mine?", "/theirs?")
    signature = url[-64:]
    other_signature = url[:-64] + ("0" if signature[0] != "0" else "1") + signature[1:]
    longer = url.replace("X-Amz-Expires=3600", "X-Amz-Expires=7200")
    for tampered in (other_key, other_signature, longer):
        assert tampered != url
        assert http_error(tampered) == (403, "SignatureDoesNotMatch")
    assert http_error(url, "DELETE") == (403, "SignatureDoesNotMatch")  # signed for GET only
    assert http_error(url, headers={"x-amz-meta-extra": "1"}) == (403, "AccessDenied")  # unsigned x-amz header
    assert s3.get_object(Bucket=s3_server.bucket, Key=key_prefix + "mine")["Body"].read() == b"mine"


def test_presigned_put_with_unsigned_payload(s3, s3_server, key_prefix):
    key = key_prefix + "uploaded by url"
    url = s3.generate_presigned_url("put_object", Params={"Bucket": s3_server.bucket, "Key": key}, ExpiresIn=60)
    assert "UNSIGNED-PAYLOAD" not in url  # the payload is unsigned implicitly in presigned URLs
    request = urllib.request.Request(url, data=b"payload via url", method="PUT")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    assert s3.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read() == b"payload via url"


# --- S3 behaviour --------------------------------------------------------------------------------


def test_awkward_keys_round_trip_and_list(s3, s3_server, key_prefix):
    keys = [key_prefix + name for name in AWKWARD_KEYS]
    for key in keys:
        s3.put_object(Bucket=s3_server.bucket, Key=key, Body=key.encode())
    for key in keys:
        assert s3.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read() == key.encode()
    listed = [entry["Key"] for entry in s3.list_objects_v2(Bucket=s3_server.bucket, Prefix=key_prefix)["Contents"]]
    assert listed == sorted(keys, key=lambda key: key.encode())


def test_listing_is_in_byte_order_across_pages(s3, s3_server, key_prefix):
    # s3rver alone lists "p/0" before "p-a" (folder walk order) and 500s on page 2 (DES tokens).
    names = ["p", "p-a", "p/0", "p/1", "p/2/x", "p.txt", "q", "é", "z"]
    keys = [key_prefix + name for name in names]
    for key in keys:
        s3.put_object(Bucket=s3_server.bucket, Key=key, Body=b"")
    expected = sorted(keys, key=lambda key: key.encode())
    paginator = s3.get_paginator("list_objects_v2")
    for page_size in (1, 2, 4, 1000):
        pages = paginator.paginate(Bucket=s3_server.bucket, Prefix=key_prefix, PaginationConfig={"PageSize": page_size})
        assert [entry["Key"] for page in pages for entry in page.get("Contents", [])] == expected
    v1_pages = s3.get_paginator("list_objects").paginate(
        Bucket=s3_server.bucket, Prefix=key_prefix, PaginationConfig={"PageSize": 3})
    assert [entry["Key"] for page in v1_pages for entry in page.get("Contents", [])] == expected
    folded = paginator.paginate(
        Bucket=s3_server.bucket, Prefix=key_prefix, Delimiter="/", PaginationConfig={"PageSize": 2})
    items = [(p.get("CommonPrefixes", []), [e["Key"] for e in p.get("Contents", [])]) for p in folded]
    prefixes = [entry["Prefix"] for group, _ in items for entry in group]
    plain = [key for _, group in items for key in group]
    assert prefixes == [key_prefix + "p/"]
    assert plain == [key for key in expected if "/" not in key[len(key_prefix):]]


def test_multipart_upload_appears_whole_only_when_completed(s3, s3_server, key_prefix):
    key = key_prefix + "video.mp4"
    bucket = s3_server.bucket
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key, ContentType="video/mp4")["UploadId"]
    bodies = [b"a" * (5 * MiB), b"b" * (5 * MiB), b"tail"]
    parts = []
    for number, body in enumerate(bodies, start=1):
        etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=body)["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
        with pytest.raises(ClientError) as caught:
            s3.head_object(Bucket=bucket, Key=key)
        assert error_of(caught.value)[1] == 404
    listed = s3.list_multipart_uploads(Bucket=bucket, Prefix=key_prefix)["Uploads"]
    assert [(entry["Key"], entry["UploadId"]) for entry in listed] == [(key, upload)]

    done = s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})
    assert done["ETag"].strip('"').endswith("-3")
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] == sum(map(len, bodies)) and head["ContentType"] == "video/mp4"
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"".join(bodies)
    assert "Uploads" not in s3.list_multipart_uploads(Bucket=bucket, Prefix=key_prefix)


def test_multipart_rules_of_s3(s3, s3_server, key_prefix):
    key = key_prefix + "rules.bin"
    bucket = s3_server.bucket
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    small = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"small")["ETag"]
    last = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=2, Body=b"last")["ETag"]
    attempts = {
        "EntityTooSmall": [{"PartNumber": 1, "ETag": small}, {"PartNumber": 2, "ETag": last}],
        "InvalidPart": [{"PartNumber": 1, "ETag": '"' + "0" * 32 + '"'}],
        "InvalidPartOrder": [{"PartNumber": 2, "ETag": last}, {"PartNumber": 1, "ETag": small}],
    }
    for expected, parts in attempts.items():
        with pytest.raises(ClientError) as caught:
            s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})
        assert error_of(caught.value) == (expected, 400)

    s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
    assert "Uploads" not in s3.list_multipart_uploads(Bucket=bucket, Prefix=key_prefix)
    with pytest.raises(ClientError) as caught:
        s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=3, Body=b"late")
    assert error_of(caught.value) == ("NoSuchUpload", 404)
    with pytest.raises(ClientError) as caught:
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
    assert error_of(caught.value) == ("NoSuchUpload", 404)


def test_put_if_none_match_creates_only_once(s3, s3_server, key_prefix):
    key = key_prefix + "claim"
    s3.put_object(Bucket=s3_server.bucket, Key=key, Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as caught:
        s3.put_object(Bucket=s3_server.bucket, Key=key, Body=b"second", IfNoneMatch="*")
    assert s3_error(caught.value) == precondition_failed("If-None-Match")
    assert s3.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read() == b"first"
    s3.delete_object(Bucket=s3_server.bucket, Key=key)
    s3.put_object(Bucket=s3_server.bucket, Key=key, Body=b"again", IfNoneMatch="*")  # free again after a delete


# --- conditional writes: S3's answers as recorded against AWS (localstack's validated snapshots of
# TestS3ObjectWritePrecondition; the DeleteObject ones as probed on AWS in localstack issue 13894) ---


def test_put_if_match_replaces_only_the_named_object(s3, s3_server, key_prefix):
    bucket, key = s3_server.bucket, key_prefix + "record.json"
    assert fails(s3.put_object, Bucket=bucket, Key=key, Body=b"v0", IfMatch='"' + "0" * 32 + '"') == no_such_key(key)
    first = s3.put_object(Bucket=bucket, Key=key, Body=b"v1")["ETag"]
    assert first == '"' + hashlib.md5(b"v1").hexdigest() + '"'
    assert fails(s3.put_object, Bucket=bucket, Key=key, Body=b"stale", IfMatch='"' + "0" * 32 + '"') == \
        precondition_failed("If-Match")
    second = s3.put_object(Bucket=bucket, Key=key, Body=b"v2", IfMatch=first)["ETag"]  # quoted, as S3 gives it
    third = s3.put_object(Bucket=bucket, Key=key, Body=b"v3", IfMatch=second.strip('"'))["ETag"]  # or bare
    assert fails(s3.put_object, Bucket=bucket, Key=key, Body=b"late", IfMatch=second) == precondition_failed("If-Match")
    got = s3.get_object(Bucket=bucket, Key=key)
    assert got["Body"].read() == b"v3" and got["ETag"] == third  # the PUT's ETag header is the object's


def test_precondition_failed_is_s3s_xml_error(s3_server, key_prefix):
    key = key_prefix + "xml"
    status, headers, _ = raw_request(s3_server, "PUT", key, b"v1")
    assert status == 200 and headers["etag"] == '"' + hashlib.md5(b"v1").hexdigest() + '"'
    status, headers, body = raw_request(s3_server, "PUT", key, b"v2", {"If-Match": '"' + "1" * 32 + '"'})
    assert status == 412 and headers["content-type"].startswith("application/xml")
    error = ET.fromstring(body)
    assert error.tag == "Error"
    assert [(child.tag, child.text) for child in error] == [
        ("Code", "PreconditionFailed"), ("Message", PRECONDITION), ("Condition", "If-Match"),
    ]
    status, _, body = raw_request(s3_server, "PUT", key, b"v2", {"If-None-Match": "*"})
    assert status == 412 and ET.fromstring(body).findtext("Condition") == "If-None-Match"


def test_condition_values_s3_refuses_are_not_implemented(s3, s3_server, key_prefix):
    bucket, key = s3_server.bucket, key_prefix + "validation"
    etag = s3.put_object(Bucket=bucket, Key=key, Body=b"v1")["ETag"]
    assert fails(s3.put_object, Bucket=bucket, Key=key, Body=b"x", IfMatch="*") == \
        not_implemented("If-Match", "We don't accept the provided value of If-Match header for this API")
    assert fails(s3.put_object, Bucket=bucket, Key=key, Body=b"x", IfNoneMatch=etag) == \
        not_implemented("If-None-Match", "We don't accept the provided value of If-None-Match header for this API")
    assert fails(s3.put_object, Bucket=bucket, Key=key, Body=b"x", IfNoneMatch="*", IfMatch=etag) == \
        not_implemented("If-Match,If-None-Match", "Multiple conditional request headers present in the request")
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"v1"


def test_racing_if_match_puts_exactly_one_wins(s3, s3_server, key_prefix):
    bucket, key = s3_server.bucket, key_prefix + "lease.json"
    etag = s3.put_object(Bucket=bucket, Key=key, Body=b'{"owner": null}')["ETag"]
    bodies = [json.dumps({"owner": f"replica-{i}", "pad": "x" * 100_000 * i}).encode() for i in range(8)]
    results = race(8, lambda i: s3.put_object(Bucket=bucket, Key=key, Body=bodies[i], IfMatch=etag))
    winners = [i for i, result in enumerate(results) if isinstance(result, dict)]
    assert len(winners) == 1, results
    assert all(s3_error(result) == precondition_failed("If-Match") for result in results if isinstance(result, ClientError))
    got = s3.get_object(Bucket=bucket, Key=key)
    assert got["Body"].read() == bodies[winners[0]] and got["ETag"] == results[winners[0]]["ETag"]


def test_racing_creates_and_conditional_deletes(s3, s3_server, key_prefix):
    bucket, key = s3_server.bucket, key_prefix + "claim"
    results = race(8, lambda i: s3.put_object(Bucket=bucket, Key=key, Body=f"claimant {i}".encode(), IfNoneMatch="*"))
    assert sum(isinstance(result, dict) for result in results) == 1, results
    etag = s3.head_object(Bucket=bucket, Key=key)["ETag"]

    # a holder deleting its record races a new owner replacing it, both naming the same ETag
    def attempt(i: int):
        if i % 2:
            return s3.delete_object(Bucket=bucket, Key=key, IfMatch=etag)
        return s3.put_object(Bucket=bucket, Key=key, Body=f"new owner {i}".encode(), IfMatch=etag)

    results = race(6, attempt)
    assert sum(isinstance(result, dict) for result in results) == 1, results
    for result in results:
        if isinstance(result, ClientError):  # after a winning delete the key is gone: 404, else 412
            assert s3_error(result)[0] in (404, 412)


def test_readers_get_the_etag_of_the_bytes_they_read(s3, s3_server, key_prefix):
    """A GET racing overwrites gets one commit's bytes, length and ETag, never a mix: a reader that
    paired new ETag with old bytes would pass a later If-Match with stale data."""
    bucket, key = s3_server.bucket, key_prefix + "hot.json"
    s3.put_object(Bucket=bucket, Key=key, Body=b"0")
    deadline = time.monotonic() + 2.0
    mixed, reads = [], []

    def write(i: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            s3.put_object(Bucket=bucket, Key=key, Body=f"writer {i} version {n} ".encode() * (1 + n % 7))
            n += 1

    def read(_: int) -> None:
        while time.monotonic() < deadline:
            got = s3.get_object(Bucket=bucket, Key=key)
            body = got["Body"].read()
            reads.append(1)
            if got["ETag"] != '"' + hashlib.md5(body).hexdigest() + '"' or got["ContentLength"] != len(body):
                mixed.append((got["ETag"], body[:40]))

    results = race(6, lambda i: write(i) if i < 2 else read(i))
    assert not any(isinstance(result, ClientError) for result in results), results
    assert len(reads) > 20 and mixed == []


def test_conditional_delete(s3, s3_server, key_prefix):
    bucket, key = s3_server.bucket, key_prefix + "doomed"
    etag = s3.put_object(Bucket=bucket, Key=key, Body=b"v1")["ETag"]
    assert fails(s3.delete_object, Bucket=bucket, Key=key, IfMatch='"' + "0" * 32 + '"') == precondition_failed("If-Match")
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"v1"
    for header in ("IfMatchSize", "IfMatchLastModifiedTime"):  # directory buckets only
        value = 2 if header == "IfMatchSize" else s3.head_object(Bucket=bucket, Key=key)["LastModified"]
        assert fails(s3.delete_object, Bucket=bucket, Key=key, **{header: value}) == not_implemented(
            {"IfMatchSize": "x-amz-if-match-size", "IfMatchLastModifiedTime": "x-amz-if-match-last-modified-time"}[header])
    deleted = s3.delete_object(Bucket=bucket, Key=key, IfMatch=etag.strip('"'))
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
    # If-Match on a key with no object: 404, whatever the value (a plain delete stays a 204)
    assert fails(s3.delete_object, Bucket=bucket, Key=key, IfMatch=etag) == no_such_key(key)
    assert fails(s3.delete_object, Bucket=bucket, Key=key, IfMatch="*") == no_such_key(key)
    assert s3.delete_object(Bucket=bucket, Key=key)["ResponseMetadata"]["HTTPStatusCode"] == 204
    s3.put_object(Bucket=bucket, Key=key, Body=b"v2")
    s3.delete_object(Bucket=bucket, Key=key, IfMatch="*")  # any object
    assert fails(s3.head_object, Bucket=bucket, Key=key)[0] == 404


def test_delete_objects_checks_keys_and_etags(s3, s3_server, key_prefix):
    bucket = s3_server.bucket
    etag = s3.put_object(Bucket=bucket, Key=key_prefix + "a", Body=b"a")["ETag"]
    for name in ("b", "c"):
        s3.put_object(Bucket=bucket, Key=key_prefix + name, Body=name.encode())
    result = s3.delete_objects(Bucket=bucket, Delete={"Objects": [
        {"Key": key_prefix + "a", "ETag": '"' + "0" * 32 + '"'},  # stale: kept
        {"Key": key_prefix + "b"},
        {"Key": key_prefix + "c", "ETag": "*"},
        {"Key": key_prefix + "absent", "ETag": etag},
        {"Key": key_prefix + "../../escape"},  # s3rver alone resolved this outside the bucket
    ]})
    assert sorted(entry["Key"] for entry in result["Deleted"]) == [key_prefix + "b", key_prefix + "c"]
    assert {entry["Key"]: (entry["Code"], entry["Message"]) for entry in result["Errors"]} == {
        key_prefix + "a": ("PreconditionFailed", PRECONDITION),
        key_prefix + "absent": ("NoSuchKey", "The specified key does not exist."),
        key_prefix + "../../escape": ("InvalidArgument", 'This server does not accept keys with empty, "." or ".." segments.'),
    }
    assert [entry["Key"] for entry in s3.list_objects_v2(Bucket=bucket, Prefix=key_prefix)["Contents"]] == [key_prefix + "a"]
    quiet = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": key_prefix + "a", "ETag": etag}], "Quiet": True})
    assert "Deleted" not in quiet and "Errors" not in quiet
    assert s3.list_objects_v2(Bucket=bucket, Prefix=key_prefix)["KeyCount"] == 0


def multipart(s3, bucket: str, key: str, bodies: list[bytes]) -> tuple[str, list[dict]]:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key, ContentType="video/mp4")["UploadId"]
    parts = [
        {"PartNumber": number, "ETag": s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body)["ETag"]}
        for number, body in enumerate(bodies, start=1)
    ]
    return upload_id, parts


def pending(s3, bucket: str, prefix: str) -> list[str]:
    return [upload["UploadId"] for upload in s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])]


def test_complete_multipart_upload_conditions(s3, s3_server, key_prefix):
    bucket, key = s3_server.bucket, key_prefix + "video.mp4"
    bodies = [b"a" * (5 * MiB), b"tail"]
    complete = lambda upload_id, parts, **condition: s3.complete_multipart_upload(  # noqa: E731
        Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}, **condition)

    upload_id, parts = multipart(s3, bucket, key, bodies)
    assert fails(complete, upload_id=upload_id, parts=parts, IfMatch='"' + "0" * 32 + '"') == no_such_key(key)
    done = complete(upload_id, parts, IfNoneMatch="*")
    assert done["ETag"].endswith('-2"') and done["ResponseMetadata"]["HTTPHeaders"]["etag"] == done["ETag"]
    assert s3.head_object(Bucket=bucket, Key=key)["ETag"] == done["ETag"]

    # a failed condition writes nothing and leaves the upload: it can be completed again, or aborted
    upload_id, parts = multipart(s3, bucket, key, [b"b" * (5 * MiB), b"tail 2"])
    assert fails(complete, upload_id=upload_id, parts=parts, IfNoneMatch="*") == precondition_failed("If-None-Match")
    assert fails(complete, upload_id=upload_id, parts=parts, IfMatch='"' + "0" * 32 + '-2"') == precondition_failed("If-Match")
    assert pending(s3, bucket, key_prefix) == [upload_id]
    assert s3.head_object(Bucket=bucket, Key=key)["ETag"] == done["ETag"]
    again = complete(upload_id, parts, IfMatch=done["ETag"])
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"b" * (5 * MiB) + b"tail 2"
    assert pending(s3, bucket, key_prefix) == []

    upload_id, parts = multipart(s3, bucket, key, [b"c"])
    assert fails(complete, upload_id=upload_id, parts=parts, IfNoneMatch="*") == precondition_failed("If-None-Match")
    s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    assert pending(s3, bucket, key_prefix) == [] and s3.head_object(Bucket=bucket, Key=key)["ETag"] == again["ETag"]

    upload_id, parts = multipart(s3, bucket, key, [b"d"])
    assert fails(complete, upload_id=upload_id, parts=parts, IfMatch="*") == \
        not_implemented("If-Match", "We don't accept the provided value of If-Match header for this API")
    assert fails(complete, upload_id=upload_id, parts=parts, IfNoneMatch=again["ETag"]) == \
        not_implemented("If-None-Match", "We don't accept the provided value of If-None-Match header for this API")
    s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)


def test_complete_multipart_upload_conflicts_with_writes_since_it_began(s3, s3_server, key_prefix):
    bucket = s3_server.bucket
    complete = lambda key, upload_id, parts, **condition: s3.complete_multipart_upload(  # noqa: E731
        Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}, **condition)

    key = key_prefix + "rewritten"  # rewritten during the upload, even with the same bytes: 409
    etag = s3.put_object(Bucket=bucket, Key=key, Body=b"same")["ETag"]
    upload_id, parts = multipart(s3, bucket, key, [b"new"])
    assert s3.put_object(Bucket=bucket, Key=key, Body=b"same")["ETag"] == etag
    assert fails(complete, key=key, upload_id=upload_id, parts=parts, IfMatch=etag) == conflict("If-Match", key)

    key = key_prefix + "deleted"  # deleted during the upload: 404 for If-Match, 409 once written again
    etag = s3.put_object(Bucket=bucket, Key=key, Body=b"v1")["ETag"]
    upload_id, parts = multipart(s3, bucket, key, [b"new"])
    s3.delete_object(Bucket=bucket, Key=key)
    assert fails(complete, key=key, upload_id=upload_id, parts=parts, IfMatch=etag) == no_such_key(key)
    etag = s3.put_object(Bucket=bucket, Key=key, Body=b"v2")["ETag"]
    assert fails(complete, key=key, upload_id=upload_id, parts=parts, IfMatch=etag) == conflict("If-Match", key)

    key = key_prefix + "freed"  # taken when the upload began, free at completion: If-None-Match is 409
    s3.put_object(Bucket=bucket, Key=key, Body=b"v1")
    upload_id, parts = multipart(s3, bucket, key, [b"new"])
    s3.delete_object(Bucket=bucket, Key=key)
    assert fails(complete, key=key, upload_id=upload_id, parts=parts, IfNoneMatch="*") == conflict("If-None-Match", key)

    key = key_prefix + "taken"  # free when it began, taken at completion: 412
    upload_id, parts = multipart(s3, bucket, key, [b"new"])
    s3.put_object(Bucket=bucket, Key=key, Body=b"first")
    assert fails(complete, key=key, upload_id=upload_id, parts=parts, IfNoneMatch="*") == precondition_failed("If-None-Match")


@pytest.mark.parametrize("name", AWKWARD_KEYS)
def test_copy_object_with_awkward_source_keys(s3, s3_server, key_prefix, name):
    bucket, source = s3_server.bucket, key_prefix + "src/" + name
    s3.put_object(Bucket=bucket, Key=source, Body=name.encode(), ContentType="text/plain", Metadata={"job": "j1"})
    copied = s3.copy_object(Bucket=bucket, Key=key_prefix + "dst/" + name, CopySource={"Bucket": bucket, "Key": source})
    assert copied["CopyObjectResult"]["ETag"] == '"' + hashlib.md5(name.encode()).hexdigest() + '"'
    got = s3.get_object(Bucket=bucket, Key=key_prefix + "dst/" + name)
    assert (got["Body"].read(), got["ContentType"], got["Metadata"]) == (name.encode(), "text/plain", {"job": "j1"})


def test_copy_object(s3, s3_server, key_prefix):
    bucket, source, dest = s3_server.bucket, key_prefix + "staged/video.mp4", key_prefix + "final/video.mp4"
    source_etag = s3.put_object(Bucket=bucket, Key=source, Body=b"frames", ContentType="video/mp4", Metadata={"a": "1"})["ETag"]
    copy = lambda **params: s3.copy_object(Bucket=bucket, CopySource={"Bucket": bucket, "Key": source}, **params)  # noqa: E731

    assert fails(copy, Key=dest, IfMatch=source_etag) == no_such_key(dest)
    first = copy(Key=dest, IfNoneMatch="*")["CopyObjectResult"]
    assert first["ETag"] == source_etag
    assert fails(copy, Key=dest, IfNoneMatch="*") == precondition_failed("If-None-Match")
    assert fails(copy, Key=dest, IfMatch='"' + "0" * 32 + '"') == precondition_failed("If-Match")
    assert copy(Key=dest, IfMatch=first["ETag"])["CopyObjectResult"]["ETag"] == source_etag
    assert fails(copy, Key=dest, IfMatch="*") == \
        not_implemented("If-Match", "We don't accept the provided value of If-Match header for this API")

    replaced = copy(Key=key_prefix + "replaced", MetadataDirective="REPLACE", ContentType="application/x-test", Metadata={"b": "2"})
    head = s3.head_object(Bucket=bucket, Key=key_prefix + "replaced")
    assert (head["ContentType"], head["Metadata"], head["ETag"]) == ("application/x-test", {"b": "2"}, replaced["CopyObjectResult"]["ETag"])
    head = s3.head_object(Bucket=bucket, Key=dest)
    assert (head["ContentType"], head["Metadata"]) == ("video/mp4", {"a": "1"})

    assert fails(copy, Key=source)[0] == 400  # onto itself with nothing changed: InvalidRequest
    assert fails(copy, Key=source)[1]["Code"] == "InvalidRequest"
    assert fails(s3.copy_object, Bucket=bucket, Key=dest, CopySource={"Bucket": bucket, "Key": key_prefix + "nothing"}) == \
        no_such_key(key_prefix + "nothing")
    # S3's conditions on the source
    assert fails(copy, Key=dest, CopySourceIfMatch='"' + "0" * 32 + '"') == precondition_failed("x-amz-copy-source-If-Match")
    assert fails(copy, Key=dest, CopySourceIfNoneMatch=source_etag) == precondition_failed("x-amz-copy-source-If-None-Match")
    assert copy(Key=dest, CopySourceIfMatch=source_etag)["CopyObjectResult"]["ETag"] == source_etag


def test_copy_sources_outside_the_data_folder_are_refused(s3, s3_server, key_prefix):
    for source in ("../outside", "a/../../../etc/passwd", "a//b"):
        status, error = fails(s3.copy_object, Bucket=s3_server.bucket, Key=key_prefix + "dst",
                              CopySource=f"{s3_server.bucket}/{source}")
        assert (status, error["Code"]) == (400, "InvalidArgument")
    status, error = fails(s3.copy_object, Bucket=s3_server.bucket, Key=key_prefix + "dst", CopySource="../etc/passwd")
    assert (status, error["Code"]) == (400, "InvalidBucketName")


def test_upload_part_copy(s3, s3_server, key_prefix):
    bucket, source, dest = s3_server.bucket, key_prefix + "big", key_prefix + "big-copy"
    data = bytes(range(256)) * (45 * 1024)  # 11.25 MiB
    source_etag = s3.put_object(Bucket=bucket, Key=source, Body=data)["ETag"]
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=dest)["UploadId"]
    ranges = [(0, 5 * MiB - 1), (5 * MiB, 10 * MiB - 1), (10 * MiB, len(data) - 1)]
    parts = []
    for number, (first, last) in enumerate(ranges, start=1):
        result = s3.upload_part_copy(Bucket=bucket, Key=dest, UploadId=upload_id, PartNumber=number,
                                     CopySource={"Bucket": bucket, "Key": source}, CopySourceRange=f"bytes={first}-{last}",
                                     CopySourceIfMatch=source_etag)["CopyPartResult"]
        assert result["ETag"] == '"' + hashlib.md5(data[first:last + 1]).hexdigest() + '"'
        parts.append({"PartNumber": number, "ETag": result["ETag"]})
    status, error = fails(s3.upload_part_copy, Bucket=bucket, Key=dest, UploadId=upload_id, PartNumber=4,
                          CopySource={"Bucket": bucket, "Key": source}, CopySourceRange=f"bytes=0-{len(data)}")
    assert (status, error["Code"]) == (400, "InvalidRequest")
    assert fails(s3.upload_part_copy, Bucket=bucket, Key=dest, UploadId=upload_id, PartNumber=4,
                 CopySource={"Bucket": bucket, "Key": source}, CopySourceIfMatch='"' + "0" * 32 + '"') == \
        precondition_failed("x-amz-copy-source-If-Match")
    s3.complete_multipart_upload(Bucket=bucket, Key=dest, UploadId=upload_id, MultipartUpload={"Parts": parts})
    assert s3.get_object(Bucket=bucket, Key=dest)["Body"].read() == data


@pytest.mark.parametrize("bad", ["nul\x00byte", "new\nline", "tab\there", "del\x7f", "c1\x85control"])
def test_keys_with_control_characters_are_a_clean_400(s3, s3_server, key_prefix, bad):
    key = key_prefix + bad
    for call in (lambda: s3.put_object(Bucket=s3_server.bucket, Key=key, Body=b"x"),
                 lambda: s3.get_object(Bucket=s3_server.bucket, Key=key),
                 lambda: s3.delete_object(Bucket=s3_server.bucket, Key=key)):
        with pytest.raises(ClientError) as caught:
            call()
        status, error = s3_error(caught.value)
        assert (status, error["Code"], error["ArgumentName"]) == (400, "InvalidArgument", "key")
        assert "control characters" in error["Message"] and "ArgumentValue" not in error
    s3.head_bucket(Bucket=s3_server.bucket)  # the server is fine


def test_key_length_limits(s3, s3_server, key_prefix):
    too_long = key_prefix + "é" * ((1025 - len(key_prefix)) // 2 + 1)  # under 1024 characters, over 1024 bytes
    assert len(too_long) <= 1024 < len(too_long.encode())
    assert fails(s3.put_object, Bucket=s3_server.bucket, Key=too_long, Body=b"x") == (400, {
        "Code": "KeyTooLongError", "Message": "Your key is too long", "MaxSizeAllowed": "1024",
        "Size": str(len(too_long.encode())),
    })
    name_too_long = key_prefix + "n" * 217  # more than a file name can hold with the store's suffixes
    status, error = fails(s3.put_object, Bucket=s3_server.bucket, Key=name_too_long, Body=b"x")
    assert (status, error["Code"]) == (400, "InvalidArgument")
    s3.put_object(Bucket=s3_server.bucket, Key=key_prefix + "n" * 216, Body=b"x")
    s3.put_object(Bucket=s3_server.bucket, Key=key_prefix + "d" * 255 + "/x", Body=b"x")


def test_names_that_would_escape_the_data_folder_are_refused(s3, s3_server):
    for key in ("a/../../outside", "a/./b", "a//b"):
        with pytest.raises(ClientError) as caught:
            s3.put_object(Bucket=s3_server.bucket, Key=key, Body=b"x")
        assert error_of(caught.value) == ("InvalidArgument", 400)
    for bucket in ("..", "a..b"):
        with pytest.raises(ClientError) as caught:
            s3.list_objects_v2(Bucket=bucket)
        assert error_of(caught.value) == ("InvalidBucketName", 400)


# --- lifecycle -------------------------------------------------------------------------------------


def process_exists(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_until(condition, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_objects_and_credentials_survive_a_restart(tmp_path):
    server = EmbeddedS3Server(EmbeddedS3Config(data_dir=tmp_path / "s3"))
    with server:
        creds, port, first_pid = server.credentials, server.port, server.pid
        client = client_for(server.endpoint_url, creds.access_key_id, creds.secret_access_key)
        client.put_object(Bucket=server.bucket, Key="jobs/j1.json", Body=b'{"state": "RUNNING"}')
    assert not process_exists(first_pid)
    with server:  # same object, same data dir
        assert server.credentials == creds and server.port == port
        client = client_for(server.endpoint_url, creds.access_key_id, creds.secret_access_key)
        assert client.get_object(Bucket=server.bucket, Key="jobs/j1.json")["Body"].read() == b'{"state": "RUNNING"}'
    with EmbeddedS3Server(EmbeddedS3Config(data_dir=tmp_path / "s3")) as fresh_object:
        assert fresh_object.credentials == creds


def test_generated_credentials_are_private_and_explicit_ones_are_not_stored(tmp_path):
    with EmbeddedS3Server(EmbeddedS3Config(data_dir=tmp_path / "generated")) as server:
        path = tmp_path / "generated" / "credentials.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert read_credentials(tmp_path / "generated") == server.credentials
        assert len(server.credentials.secret_access_key) >= 32
        assert server.credentials.secret_access_key not in repr(server.credentials)
        assert server.credentials.secret_access_key.encode() not in Path(f"/proc/{server.pid}/cmdline").read_bytes()
    explicit = EmbeddedS3Config(data_dir=tmp_path / "explicit", access_key_id="tessera-dev", secret_access_key="dev-secret-1")
    with EmbeddedS3Server(explicit) as server:
        client = client_for(server.endpoint_url, "tessera-dev", "dev-secret-1")
        client.head_bucket(Bucket=server.bucket)
    assert not (tmp_path / "explicit" / "credentials.json").exists()


def test_stop_leaves_no_process_and_can_repeat(tmp_path):
    server = EmbeddedS3Server(EmbeddedS3Config(data_dir=tmp_path / "s3"))
    server.start()
    pid = server.pid
    assert EmbeddedS3Server.find_running(tmp_path / "s3").pid == pid
    server.stop()
    assert not process_exists(pid)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # nothing left in its process group either
    assert EmbeddedS3Server.find_running(tmp_path / "s3") is None
    assert not (tmp_path / "s3" / "server.json").exists()
    server.stop()  # idempotent


def test_a_data_dir_serves_one_server_at_a_time(tmp_path):
    config = EmbeddedS3Config(data_dir=tmp_path / "s3")
    with EmbeddedS3Server(config):
        with pytest.raises(S3ServerError, match="already runs"):
            EmbeddedS3Server(config).start()


def test_server_exits_when_its_owner_is_killed(tmp_path):
    owner = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from tessera.cluster.s3_server import EmbeddedS3Config, EmbeddedS3Server
            server = EmbeddedS3Server(EmbeddedS3Config(data_dir={str(tmp_path / 's3')!r}))
            server.start()
            print(server.pid, flush=True)
            time.sleep(600)
        """)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        pid = int(owner.stdout.readline())
        assert process_exists(pid)
    finally:
        owner.kill()
        owner.wait()
    # A new owner can take the data dir over at once: start() waits for the orphan to leave.
    with EmbeddedS3Server(EmbeddedS3Config(data_dir=tmp_path / "s3")) as successor:
        assert not process_exists(pid), f"server {pid} outlived its owner"
        assert EmbeddedS3Server.find_running(tmp_path / "s3").pid == successor.pid != pid


def test_detached_server_outlives_its_starter_until_stopped(tmp_path):
    data_dir = tmp_path / "s3"
    starter = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(f"""
            from tessera.cluster.s3_server import EmbeddedS3Config, EmbeddedS3Server
            EmbeddedS3Server(EmbeddedS3Config(data_dir={str(data_dir)!r})).start(detached=True)
        """)],
        capture_output=True, text=True, timeout=60,
    )
    assert starter.returncode == 0, starter.stderr
    running = EmbeddedS3Server.find_running(data_dir)
    try:
        assert running is not None and running.mode == "detached"
        creds = read_credentials(data_dir)
        client_for(running.endpoint_url, creds.access_key_id, creds.secret_access_key).head_bucket(Bucket="tessera")
    finally:
        assert EmbeddedS3Server.stop_running(data_dir)
    assert wait_until(lambda: not process_exists(running.pid))
    assert EmbeddedS3Server.find_running(data_dir) is None
    assert not EmbeddedS3Server.stop_running(data_dir)


def test_start_errors_are_specific(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(S3ServerError) as in_use:
            EmbeddedS3Server(EmbeddedS3Config(data_dir=tmp_path / "a", port=port)).start()
    assert str(in_use.value) == f"cannot listen on 127.0.0.1:{port}: the port is already in use (pick another port, or 0 for a free one)"
    with pytest.raises(S3ServerError, match="bootstrap.sh"):
        EmbeddedS3Server(EmbeddedS3Config(data_dir=tmp_path / "b", node_executable="no-such-node-binary")).start()
    with pytest.raises(S3ServerError, match="exited|failed to start") as caught:
        EmbeddedS3Server(EmbeddedS3Config(data_dir=tmp_path / "c", host="203.0.113.1")).start()  # not our address
    assert "EADDRNOTAVAIL" in str(caught.value)
    for name in ("a", "b", "c"):
        assert EmbeddedS3Server.find_running(tmp_path / name) is None


def test_server_log_records_requests_when_verbose(tmp_path):
    with EmbeddedS3Server(EmbeddedS3Config(data_dir=tmp_path / "s3", verbose=True)) as server:
        creds = server.credentials
        client_for(server.endpoint_url, creds.access_key_id, creds.secret_access_key).head_bucket(Bucket=server.bucket)
    log = (tmp_path / "s3" / "server.log").read_text()
    assert "HEAD /tessera 200" in log and "stopping (SIGTERM)" in log


def test_config_is_strict():
    with pytest.raises(ValueError, match="both"):
        EmbeddedS3Config(data_dir="/tmp/x", access_key_id="only-the-id")
    with pytest.raises(ValueError):
        EmbeddedS3Config(data_dir="/tmp/x", bucket="Not_A_Bucket")
    with pytest.raises(ValueError):
        EmbeddedS3Config(data_dir="/tmp/x", unknown=1)


def test_ready_line_protocol_of_server_js(tmp_path):
    """server.js on its own: one JSON line on stdout, clean exit on SIGTERM."""
    env = {**os.environ, "TESSERA_S3_SECRET_ACCESS_KEY": "s"}
    process = subprocess.Popen(
        ["node", str(REPO / "cluster" / "s3server" / "server.js"), "--data-dir", str(tmp_path), "--access-key-id", "k"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
    )
    try:
        ready = json.loads(process.stdout.readline())
        assert ready["ready"] is True and ready["port"] > 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        assert process.stdout.read() == ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    missing_secret = subprocess.run(
        ["node", str(REPO / "cluster" / "s3server" / "server.js"), "--data-dir", str(tmp_path), "--access-key-id", "k"],
        capture_output=True, text=True, timeout=30, env={k: v for k, v in os.environ.items() if k != "TESSERA_S3_SECRET_ACCESS_KEY"},
    )
    assert missing_secret.returncode == 1
    assert json.loads(missing_secret.stdout)["ready"] is False


def test_an_exited_child_is_not_alive_before_it_is_reaped():
    """`tessera run` is the parent of the stack it starts: its exit leaves a zombie that signal 0
    still reaches, and `down` waited out its whole timeout before this was handled."""
    from tessera.cluster.s3_server import pid_alive

    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and pid_alive(exited.pid):
            time.sleep(0.05)
        assert not pid_alive(exited.pid), "an exited child counts as gone"
        assert pid_alive(running.pid)
        assert pid_alive(os.getppid()), "a live process that is not our child (waitpid cannot reap it)"
    finally:
        running.kill()
        running.wait()
