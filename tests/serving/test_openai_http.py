"""The OpenAI-compatible HTTP app without Ray: the Gateway's FastAPI app over a real JobFront
(the session's embedded S3 server), served by uvicorn on a socket, called with the real
``openai`` SDK. No job runner is there, so every submit that passes validation is refused for
capacity (429, the record withdrawn): what these tests check is everything before a render
(keys, the routes the SDK calls, errors in the API's shape). Renders: tests/integration/test_openai_http.py."""

from __future__ import annotations

import ast
import inspect
import io
import json
import threading
import time
import urllib.error
import urllib.request
import uuid

import av
import numpy as np
import openai
import pytest

from tessera.models.registry import load_model
from tessera.serving.auth import Authenticator, hash_api_key
from tessera.serving.config import TesseraConfig
from tessera.serving.http.openai_videos import OPENAPI_URL, VideosAPI, create_app
from tessera.serving.http.spritesheet import contact_sheet, grid, pick_frames
from tessera.serving.jobs.submission import JobFront
from tessera.serving.storage import ObjectStore
from tessera.serving.video import VideoEncodingConfig, encode_mp4
from tests.conftest import storage_config_for
from tests.helpers import free_port

pytestmark = pytest.mark.filterwarnings("ignore:The Sora API is scheduled:DeprecationWarning")

TENANT = f"http-{uuid.uuid4().hex[:8]}"
KEY = "sk-test-" + uuid.uuid4().hex


def sdk_routes() -> set[tuple[str, str]]:
    """(METHOD, path) of every request the SDK's ``client.videos`` makes, read from its source."""
    import openai.resources.videos as module

    tree = ast.parse(inspect.getsource(module))
    [videos] = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Videos"]
    methods = {"_get": "GET", "_post": "POST", "_delete": "DELETE", "_get_api_list": "GET", "_patch": "PATCH", "_put": "PUT"}
    found = set()
    for node in ast.walk(videos):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in methods):
            continue
        path = node.args[0]
        if isinstance(path, ast.Call):  # path_template("/videos/{video_id}", video_id=...)
            path = path.args[0]
        assert isinstance(path, ast.Constant) and isinstance(path.value, str), ast.dump(node)
        found.add((methods[node.func.attr], "/v1" + path.value))
    return found


@pytest.fixture(scope="module")
def api_server(s3_server):
    """The app on a real socket; every tenant key configured, no job runner behind it."""
    config = TesseraConfig(storage=storage_config_for(s3_server), auth={"api_keys": {TENANT: hash_api_key(KEY)}},
                           jobs={"retry_pushback_ms": 1500}, http={"model_aliases": ["sora-2"]})
    model = load_model(config.model, parts=())
    store = ObjectStore(config.storage)

    async def no_room(tenant: str, job_id: str) -> bool:
        return False

    jobs = JobFront(config, model, store, offer=no_room, offer_attempts=1)
    app = create_app()
    app.state.videos = VideosAPI(config, jobs, Authenticator(config.auth), store)

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1", store
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def client(api_server) -> openai.OpenAI:
    with openai.OpenAI(base_url=api_server[0], api_key=KEY, max_retries=0) as sdk:
        yield sdk


def raw(url: str, method: str = "GET", headers: dict | None = None, data: bytes | None = None):
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_every_route_the_sdk_calls_is_in_the_openapi_document(api_server):
    routes = sdk_routes()
    assert len(routes) >= 10 and ("POST", "/v1/videos/extensions") in routes, routes
    status, _, body = raw(api_server[0].removesuffix("/v1") + OPENAPI_URL)
    assert status == 200
    document = json.loads(body)
    assert document == create_app().openapi(), "the served document is the app's own"
    missing = {(method, path) for method, path in routes if method.lower() not in document["paths"].get(path, {})}
    assert not missing, f"routes the SDK calls that the API lacks: {sorted(missing)}"
    assert "/v1/videos/{video_id}/events" in document["paths"]
    create = document["paths"]["/v1/videos"]["post"]["requestBody"]["content"]
    assert set(create) == {"multipart/form-data", "application/json"}
    assert "input_reference" in document["components"]["schemas"]["CreateVideoBody"]["properties"]


def test_a_wrong_or_missing_key_is_refused_with_401(api_server):
    base, _ = api_server
    with openai.OpenAI(base_url=base, api_key="sk-wrong", max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError) as caught:
            wrong.videos.list()
    assert caught.value.status_code == 401
    assert caught.value.body == {"message": "unknown API key", "type": "invalid_request_error", "param": None,
                                 "code": "invalid_api_key"}
    status, headers, body = raw(f"{base}/videos")
    assert status == 401 and headers["x-should-retry"] == "false"
    assert "Authorization: Bearer KEY" in json.loads(body)["error"]["message"]
    status, _, body = raw(f"{base}/videos", headers={"Authorization": f"Basic {KEY}"})
    assert status == 401 and "must be 'Bearer KEY'" in json.loads(body)["error"]["message"]
    status, _, body = raw(f"{base}/videos", headers={"x-api-key": KEY})  # the gRPC metadata's name works too
    assert status == 200 and json.loads(body) == {"object": "list", "data": [], "first_id": None, "last_id": None,
                                                   "has_more": False}


def test_sizes_the_model_cannot_render_are_refused_naming_its_limits(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.videos.create(prompt="a red circle", size="720x1280")
    error = caught.value
    assert error.status_code == 400 and error.body["param"] == "size" and error.body["type"] == "invalid_request_error"
    assert "size 720x1280 is not one that model native/tiny renders" in error.message
    assert "multiples of 16 from 32 to 256 px" in error.message and "never resized" in error.message
    for size, words in (("64", "not WIDTHxHEIGHT"), ("72x64", "multiples of 16")):
        with pytest.raises(openai.BadRequestError, match=words):
            client.videos.create(prompt="a red circle", size=size)


@pytest.mark.parametrize(("fields", "param", "code", "words"), [
    ({"seconds": "0"}, "seconds", "invalid_value", "positive number of seconds"),
    ({"seconds": "61"}, "seconds", "invalid_value", "maximum of 60 s"),
    ({"model": "sora-3"}, "model", "model_not_found", "serves 'native/tiny'"),
    ({"extra_body": {"colour": "red"}}, "colour", "unknown_parameter", "unknown parameter 'colour'"),
    ({"extra_body": {"steps": "many"}}, "steps", "invalid_value", "invalid value for 'steps'"),
    ({"extra_body": {"steps": 1000}}, "steps", "invalid_value", "steps must be between 1 and 100"),
    # references go in extra_body: the SDK's create() accepts only uploads for input_reference itself
    ({"extra_body": {"input_reference": {"file_id": "file-1"}}}, "input_reference", "unsupported_value", "Files API"),
    ({"extra_body": {"input_reference": {"image_url": "https://example.com/a.png"}}}, "input_reference",
     "unsupported_value", "fetches no other URLs"),
    ({"extra_body": {"input_reference": {"image_url": "data:image/png;base64,%%%"}}}, "input_reference",
     "invalid_value", "not hold valid base64"),
])
def test_bad_requests_are_400s_with_the_parameter_named(client, fields, param, code, words):
    with pytest.raises(openai.BadRequestError) as caught:
        client.videos.create(prompt="a red circle", **fields)
    assert caught.value.body["param"] == param and caught.value.body["code"] == code
    assert words in caught.value.message


def test_a_known_alias_passes_and_no_capacity_is_a_429_with_a_retry_hint(client, api_server):
    """With no job runner to take it, a valid video is refused for capacity, and its record withdrawn."""
    with pytest.raises(openai.RateLimitError) as caught:
        client.videos.create(prompt="a red circle", model="sora-2", size="64x64", seconds="1", extra_body={"steps": 2})
    assert caught.value.status_code == 429 and caught.value.body["type"] == "rate_limit_error"
    assert caught.value.response.headers["retry-after"] == "2" and caught.value.response.headers["retry-after-ms"] == "1500"
    assert client.videos.list().data == []


def test_unknown_videos_are_404s_on_every_route(client):
    for call in (lambda: client.videos.retrieve("0123456789abcdef"), lambda: client.videos.delete("0123456789abcdef"),
                 lambda: client.videos.download_content("0123456789abcdef"),
                 lambda: client.videos.remix("0123456789abcdef", prompt="x"),
                 lambda: client.videos.extend(prompt="x", seconds="1", video=openai.omit,
                                              extra_body={"video": {"id": "0123456789abcdef"}}),
                 lambda: client.videos.retrieve("not-an-id")):
        with pytest.raises(openai.NotFoundError) as caught:
            call()
        assert caught.value.body["code"] == "not_found" and "no job" in caught.value.message
    with pytest.raises(openai.BadRequestError, match="not a video id"):
        client.videos.list(after="nope")
    with pytest.raises(openai.BadRequestError) as caught:
        client.videos.list(limit=1000)
    assert caught.value.body["param"] == "limit"


def test_characters_are_answered_as_not_supported(client):
    with pytest.raises(openai.BadRequestError, match="characters .* are not supported"):
        client.videos.create_character(name="me", video=("me.mp4", b"\0" * 16, "video/mp4"))
    with pytest.raises(openai.NotFoundError):
        client.videos.get_character("char_1")


def test_unknown_routes_answer_in_the_api_shape(api_server):
    status, _, body = raw(f"{api_server[0]}/nothing", headers={"Authorization": f"Bearer {KEY}"})
    assert status == 404 and json.loads(body)["error"]["message"] == "Invalid URL (GET /v1/nothing)"


def test_an_upload_above_the_inline_limit_is_413(api_server):
    base, _ = api_server
    status, headers, body = raw(f"{base}/videos", method="POST", data=b"{}",
                                headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json",
                                         "Content-Length": str(64 * 1024 * 1024)})
    assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"


def test_contact_sheet_lays_out_evenly_spread_frames():
    assert pick_frames(16, 16) == list(range(16)) and pick_frames(100, 4) == [0, 33, 66, 99] and pick_frames(0, 4) == []
    assert grid(16) == (4, 4) and grid(5) == (3, 2) and grid(1) == (1, 1)
    frames = np.zeros((20, 48, 64, 3), np.uint8)
    for index in range(20):
        frames[index, :, :, 0] = index * 12  # red grows frame by frame
    sheet, layout = contact_sheet(encode_mp4(frames, 8, VideoEncodingConfig()), frames=16)
    assert sheet[:2] == b"\xff\xd8", "a JPEG"
    assert layout == {"columns": 4, "rows": 4, "tile_width": 64, "tile_height": 48, "total_frames": 20,
                      "frames": pick_frames(20, 16)}
    with av.open(io.BytesIO(sheet)) as container:
        image = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert image.shape == (4 * 48, 4 * 64, 3)
    reds = [int(image[r * 48 + 24, c * 64 + 32, 0]) for r in range(4) for c in range(4)]
    assert reds == sorted(reds) and reds[-1] - reds[0] > 150, reds
