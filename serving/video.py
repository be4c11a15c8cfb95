"""H.264 video with PyAV: encode time tiles, stitch them into one streamed MP4, write PNGs.

Decoder replicas encode each time tile into a standalone MP4 (any replica, any order). One
:class:`TileMuxer` then copies the tiles' compressed packets, in order and without
re-encoding, into a single fragmented MP4 that it writes to a sink as it grows (in Tessera:
an S3 multipart upload). Fragmented MP4 needs no seek back to patch headers, so the video can
stream out while later tiles are still being denoised, and no process holds the whole
decoded video.
"""

from __future__ import annotations

import dataclasses
import io
from fractions import Fraction
from typing import Protocol

import av
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

# Fragment at every keyframe and write an empty moov up front: streamable, no seeking.
_FRAGMENTED = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}


class VideoEncodingConfig(BaseModel):
    """H.264 settings (libx264 through PyAV)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    crf: int = Field(18, ge=0, le=51, description="Constant rate factor: lower is better quality and bigger files.")
    preset: str = Field("veryfast", description="x264 speed/size preset.")
    keyframe_interval_s: float = Field(
        2.0, gt=0, description="Seconds between keyframes inside a tile (each tile also starts with one)."
    )


class Sink(Protocol):
    def write(self, data: bytes) -> object: ...


@dataclasses.dataclass
class EncodedTile:
    """One time tile of a video, encoded as a standalone MP4."""

    index: int
    first_frame: int
    num_frames: int
    mp4: bytes


def check_frames(frames: np.ndarray) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"H.264 (yuv420p) needs even width and height, got {frames.shape[2]}x{frames.shape[1]}")


def encode_mp4(frames: np.ndarray, fps: float, config: VideoEncodingConfig) -> bytes:
    """Encode ``(T, H, W, 3)`` uint8 RGB frames as a standalone fragmented H.264 MP4."""
    check_frames(frames)
    rate = Fraction(fps).limit_denominator(1001)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4", options=_FRAGMENTED) as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = 1 / rate
        stream.options = {
            "crf": str(config.crf),
            "preset": config.preset,
            "g": str(max(1, round(config.keyframe_interval_s * fps))),
            "bf": "0",  # no B-frames: tiles' timestamps stay simple to offset when stitching
        }
        for index, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = index
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def encode_png(frame: np.ndarray) -> bytes:
    """One ``(H, W, 3)`` uint8 RGB frame as PNG bytes."""
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frame must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = frame.shape[1], frame.shape[0], "rgb24"
    packets = codec.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24"))
    packets += codec.encode(None)
    return b"".join(bytes(packet) for packet in packets)


def decode_frames(data: bytes) -> np.ndarray:
    """Decode a video or image file's bytes to ``(T, H, W, 3)`` uint8 RGB frames."""
    with av.open(io.BytesIO(data)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


class _SinkWriter(io.RawIOBase):
    """Adapts a sink to the non-seekable file object PyAV writes to."""

    def __init__(self, sink: Sink):
        self._sink = sink

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data) -> int:  # type: ignore[override]
        chunk = bytes(data)
        self._sink.write(chunk)
        return len(chunk)


class TileMuxer:
    """Stitches encoded tiles, given strictly in order, into one fragmented MP4 on a sink."""

    def __init__(self, sink: Sink, fps: float):
        self._fps = Fraction(fps).limit_denominator(1001)
        self._writer = _SinkWriter(sink)
        self._container = av.open(self._writer, "w", format="mp4", options=_FRAGMENTED)
        self._stream = None
        self.frames_written = 0

    def add(self, tile: EncodedTile) -> None:
        if tile.first_frame != self.frames_written:
            raise ValueError(f"tile {tile.index} starts at frame {tile.first_frame}, expected {self.frames_written}")
        with av.open(io.BytesIO(tile.mp4)) as source:
            source_stream = source.streams.video[0]
            if self._stream is None:
                self._stream = self._container.add_stream_from_template(source_stream)
            offset = round(tile.first_frame / self._fps / source_stream.time_base)
            packets = 0
            for packet in source.demux(source_stream):
                if packet.dts is None:  # the demuxer's end-of-stream marker
                    continue
                packet.pts += offset
                packet.dts += offset
                packet.stream = self._stream
                self._container.mux(packet)
                packets += 1
        if packets != tile.num_frames:
            raise ValueError(f"tile {tile.index} holds {packets} frames, expected {tile.num_frames}")
        self.frames_written += packets

    def close(self) -> None:
        """Write the trailer. Only call after the last tile; on failure just drop the muxer."""
        self._container.close()
