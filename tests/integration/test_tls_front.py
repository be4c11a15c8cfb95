"""The TLS front (deploy/nginx/tessera.conf, Debian's nginx) in front of the session's real stack:
gRPC and the HTTP API over TLS with clients that verify the certificate (a CA made here),
streams, trailers and health through the front, plaintext and untrusted clients refused."""

from __future__ import annotations

import json
import socket
import ssl
import urllib.request

import grpc
import openai
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tessera.serving.api import tessera_pb2 as pb
from tessera.serving.api import tessera_pb2_grpc as pb_grpc
from tests.deploy.nginx_front import NginxFront

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:The Sora API is scheduled:DeprecationWarning")]


@pytest.fixture(scope="module")
def front(stack):
    with NginxFront(grpc_upstream=stack.config.grpc.port, http_upstream=stack.config.http.port) as front:
        yield front


def tls_channel(front: NginxFront, **options) -> grpc.Channel:
    """A gRPC channel over TLS that trusts only the test CA and checks the server's name."""
    credentials = grpc.ssl_channel_credentials(root_certificates=front.certificates.ca.read_bytes())
    return grpc.secure_channel(f"localhost:{front.grpc_port}", credentials, options=list(options.items()))


def https_context(front: NginxFront) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(front.certificates.ca))  # verifies the chain and the host name


def test_grpc_over_tls_streams_a_job_and_carries_status_and_health(stack, front):
    key = [("authorization", f"Bearer {stack.api_key}")]
    with tls_channel(front) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        api = pb_grpc.VideoGenerationStub(channel)
        request = pb.GenerateRequest(prompt="a red circle moving to the right", duration_s=1, width=64, height=64, seed=7)
        events = list(api.Generate(request, metadata=key, timeout=180))
        assert len(events) > 2, "progress events arrive one by one through the front"
        job = events[-1].job
        assert job.state == pb.SUCCEEDED and job.video_uri.endswith(".mp4"), job
        assert api.GetJob(pb.GetJobRequest(job_id=job.job_id), metadata=key, timeout=30).job_id == job.job_id
        # A status and its message come back in the trailers, through nginx's HTTP/2 to Serve.
        with pytest.raises(grpc.RpcError) as refused:
            api.GetJob(pb.GetJobRequest(job_id=job.job_id), metadata=[("authorization", "Bearer tsk_wrong")], timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED and refused.value.details()


def test_grpc_clients_that_cannot_verify_the_certificate_are_refused(front):
    untrusting = grpc.secure_channel(f"localhost:{front.grpc_port}", grpc.ssl_channel_credentials())  # system CAs only
    wrong_name = tls_channel(front, **{"grpc.ssl_target_name_override": "tessera.example.com"})
    for channel in (untrusting, wrong_name):
        with channel, pytest.raises(grpc.RpcError) as refused:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_http_api_over_https_with_the_openai_sdk(stack, front):
    base = f"https://localhost:{front.https_port}"
    with urllib.request.urlopen(f"{base}/healthz", context=https_context(front), timeout=30) as response:
        assert response.status == 200 and json.loads(response.read())
    with openai.DefaultHttpxClient(verify=https_context(front)) as http, openai.OpenAI(
        base_url=f"{base}/v1", api_key=stack.api_key, http_client=http, max_retries=0, timeout=120
    ) as sdk:
        video = sdk.videos.create_and_poll(prompt="a blue square moving up", size="64x64", seconds="1",
                                           extra_body={"steps": 2, "fps": 6}, poll_interval_ms=200)
        assert video.status == "completed", video
        clip = sdk.videos.download_content(video.id).content  # streamed through nginx unbuffered
        assert clip[4:8] == b"ftyp"
        with pytest.raises(openai.AuthenticationError):
            sdk.videos.retrieve(video.id, extra_headers={"Authorization": "Bearer tsk_wrong"})
    request = urllib.request.Request(f"{base}/v1/videos/{video.id}/events", headers={"Authorization": f"Bearer {stack.api_key}"})
    with urllib.request.urlopen(request, context=https_context(front), timeout=60) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert b"data: " in response.read()


def plain_http(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_plaintext_is_refused_on_both_tls_ports(front):
    for port in (front.https_port, front.grpc_port):
        answer = plain_http(port)
        # nginx answers a plaintext request on a TLS port itself, with 400, and forwards nothing.
        assert answer.startswith(b"HTTP/1.1 400 ") and b"The plain HTTP request was sent to HTTPS port" in answer, answer
        assert b"SERVING" not in answer
    with grpc.insecure_channel(f"127.0.0.1:{front.grpc_port}") as channel, pytest.raises(grpc.RpcError) as refused:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_front_listens_on_loopback_only_and_not_as_root(front):
    master = psutil.Process(front.process.pid)
    processes = [master, *master.children(recursive=True)]
    assert all(process.uids().effective != 0 for process in processes)
    listening = {(conn.laddr.ip, conn.laddr.port) for process in processes for conn in process.net_connections("tcp")
                 if conn.status == psutil.CONN_LISTEN}
    assert listening == {("127.0.0.1", front.grpc_port), ("127.0.0.1", front.https_port)}
