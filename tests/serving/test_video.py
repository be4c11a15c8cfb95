"""H.264 tiles stitched into one streamed MP4, checked with ffprobe and by decoding."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.serving.video import EncodedTile, TileMuxer, VideoEncodingConfig, decode_frames, encode_mp4, encode_png
from tests.helpers import ffprobe


def moving_square(frames: int, height: int = 64, width: int = 96) -> np.ndarray:
    video = np.full((frames, height, width, 3), 16, np.uint8)
    for t in range(frames):
        x = (3 * t) % (width - 16)
        video[t, 24:40, x : x + 16] = (220, 40, 40)
    return video


class Chunks:
    """A sink that records what arrives, as an S3 multipart writer would receive it."""

    def __init__(self):
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.chunks.append(data)

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


@pytest.mark.parametrize("cuts", [[(0, 40)], [(0, 13), (13, 29), (29, 40)], [(0, 1)] + [(i, i + 1) for i in range(1, 40)]])
def test_tiles_stitch_into_one_video(tmp_path, cuts):
    video = moving_square(40)
    config = VideoEncodingConfig(crf=10)
    sink = Chunks()
    muxer = TileMuxer(sink, fps=8)
    for index, (start, stop) in enumerate(cuts):
        muxer.add(EncodedTile(index, start, stop - start, encode_mp4(video[start:stop], 8, config)))
    muxer.close()
    path = tmp_path / "stitched.mp4"
    path.write_bytes(sink.data)
    info = ffprobe(path)
    assert (info["codec"], info["width"], info["height"], info["frames"], info["fps"]) == ("h264", 96, 64, 40, 8)
    assert info["duration"] == pytest.approx(5.0, abs=0.01)
    decoded = decode_frames(sink.data)
    assert decoded.shape == video.shape
    assert np.abs(decoded.astype(int) - video).mean() < 2.0, "frames come back in order, near lossless at crf 10"
    if len(cuts) > 1:
        assert len(sink.chunks) > 1, "the muxer streams out as tiles arrive"


def test_muxer_rejects_out_of_order_tiles():
    video = moving_square(8)
    muxer = TileMuxer(Chunks(), fps=8)
    with pytest.raises(ValueError, match="starts at frame 4, expected 0"):
        muxer.add(EncodedTile(1, 4, 4, encode_mp4(video[4:], 8, VideoEncodingConfig())))


def test_fractional_fps(tmp_path):
    path = tmp_path / "ntsc.mp4"
    path.write_bytes(encode_mp4(moving_square(30), 30000 / 1001, VideoEncodingConfig()))
    assert ffprobe(path)["fps"] == pytest.approx(29.97, abs=0.01)


def test_png_round_trip():
    frame = moving_square(1)[0]
    png = encode_png(frame)
    assert png.startswith(b"\x89PNG") and (decode_frames(png)[0] == frame).all()


@pytest.mark.parametrize(
    "frames,message",
    [
        (np.zeros((2, 64, 64, 3), np.float32), "uint8"),
        (np.zeros((2, 64, 64), np.uint8), "uint8"),
        (np.zeros((2, 63, 64, 3), np.uint8), "even width and height"),
    ],
)
def test_bad_frames_are_rejected(frames, message):
    with pytest.raises(ValueError, match=message):
        encode_mp4(frames, 8, VideoEncodingConfig())
