"""`tessera generate` mode flags become the right tessera.v1 request (no stack needed: the
message is built exactly as the CLI sends it, through the Python client)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tessera.serving.api import tessera_pb2 as pb
from tessera.cluster.cli import _generation_fields, build_parser, main
from tessera.serving.client import TesseraClient
from tessera.serving.video import encode_png


def request(*argv: str) -> pb.GenerateRequest:
    args = build_parser().parse_args(["generate", *argv])
    return TesseraClient.request(args.prompt, **_generation_fields(args))


def test_image_and_size_flags():
    message = request("a blue square", "--image", "--aspect", "16:9", "--short-side", "64")
    assert message.image and message.aspect_ratio == "16:9" and message.short_side == 64
    assert not message.HasField("from_image")


def test_media_flags_send_files_inline_and_pass_s3_uris(tmp_path):
    png = encode_png(np.zeros((48, 64, 3), np.uint8))
    (tmp_path / "frame.png").write_bytes(png)
    message = request("a red ball", "--from-image", str(tmp_path / "frame.png"), "--last-frame", "--duration", "3")
    assert message.from_image.data == png and message.image_is_last_frame and message.duration_s == 3
    message = request("go on", "--extend", "s3://bucket/default/job/video.mp4", "--seconds", "2", "--backward")
    assert message.extend_video.uri == "s3://bucket/default/job/video.mp4" and not message.extend_video.data
    assert message.extend_seconds == 2 and message.backward
    message = request("make it green", "--edit", "s3://bucket/default/a.mp4", "--strength", "0.4")
    assert message.edit_video.uri.endswith("/a.mp4") and message.strength == pytest.approx(0.4)
    message = request("", "--transition", "s3://bucket/default/a.mp4", "s3://bucket/default/b.mp4", "--seconds", "1.5")
    assert message.transition_from.uri.endswith("a.mp4") and message.transition_to.uri.endswith("b.mp4")
    assert message.transition_seconds == 1.5
    assert request("a red circle", "--loop").loop


def test_shots_file_in_yaml_or_json(tmp_path):
    (tmp_path / "shots.yaml").write_text(
        "character: a red circle\nshots:\n  - {prompt: moving left, duration_s: 2}\n"
        "  - {prompt: moving right, duration_s: 3, transition: blend}\n"
    )
    message = request("--shots", str(tmp_path / "shots.yaml"))
    assert message.prompt == "" and message.character == "a red circle"
    assert [(s.prompt, s.duration_s, s.transition) for s in message.shots] == [
        ("moving left", 2, pb.CUT), ("moving right", 3, pb.BLEND)
    ]
    (tmp_path / "shots.json").write_text(json.dumps([{"prompt": "moving up", "duration_s": 1}]))
    message = request("--shots", str(tmp_path / "shots.json"), "--character", "a blue square")
    assert [s.prompt for s in message.shots] == ["moving up"] and message.character == "a blue square"


def test_unreadable_files_are_reported_before_any_call(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text("just a string")
    assert main(["--address", "127.0.0.1:1", "generate", "--shots", str(tmp_path / "bad.yaml")]) == 1
    assert "must hold a list of shots" in capsys.readouterr().err
    assert main(["--address", "127.0.0.1:1", "generate", "x", "--from-image", str(tmp_path / "missing.png")]) == 1
    assert "missing.png" in capsys.readouterr().err
