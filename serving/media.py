"""Input images and videos: probe them at submit time, decode and fit them on a Decoder replica.

Probing reads a file's header and its first frame only (the gateway stays light); the full
decode happens where the frames are encoded to latents. Both raise :class:`MediaError` with a
message for the caller, which the gateway reports as INVALID_ARGUMENT.
"""

from __future__ import annotations

import io

import av
import numpy as np
import torch
import torch.nn.functional as F

from tessera.serving.errors import InvalidRequestError
from tessera.serving.jobs.spec import MediaInfo

IMAGE_CODECS = {"png": "PNG", "mjpeg": "JPEG", "webp": "WebP"}
"""Image formats accepted as image inputs (codec name to the name callers know)."""
_STILL_CODECS = frozenset({"png", "mjpeg", "webp", "bmp", "tiff", "jpeg2000", "jpegls", "pgm", "ppm", "qoi"})


class MediaError(InvalidRequestError):
    """An input that cannot be used: unreadable, of the wrong kind, or too large to decode."""


MIN_INPUT_FPS = 0.5
MAX_INPUT_FPS = 1000.0
"""Frame rates a video input may declare: outside them the header is broken (or hostile), and
resampling it to the output rate would make absurd frame counts."""


def _unreadable(field: str, error: BaseException) -> MediaError:
    """The caller-facing error for a file that FFmpeg/PyAV cannot make sense of (any exception)."""
    if isinstance(error, av.error.FFmpegError):
        reason = error.strerror or type(error).__name__
    elif isinstance(error, UnicodeError):
        reason = "its metadata is not valid UTF-8"
    else:
        reason = "a malformed or unsupported file"
    return MediaError(f"{field} could not be read as an image or video: not a decodable image or video file ({reason})")


def probe_media(data: bytes, field: str, *, max_side: int, source: str, sha256: str) -> MediaInfo:
    """What ``data`` holds: an image or a video, its size, frame count and rate.

    Frames are counted from the container's packets without decoding them; the first frame is
    decoded to prove the stream is readable. Any file that cannot be probed (truncated, a broken
    header, no codec, metadata that is not UTF-8, random bytes...) raises :class:`MediaError`:
    whatever PyAV raises for it, the caller gets INVALID_ARGUMENT, never INTERNAL."""
    if not data:
        raise MediaError(f"{field} is empty")
    try:
        return _probe(data, field, max_side=max_side, source=source, sha256=sha256)
    except MediaError:
        raise
    except (MemoryError, RecursionError):
        raise MediaError(f"{field} could not be read as an image or video: it is too complex to probe") from None
    except Exception as error:  # noqa: BLE001 - PyAV raises many kinds for malformed files; all are the caller's
        raise _unreadable(field, error) from None


def _probe(data: bytes, field: str, *, max_side: int, source: str, sha256: str) -> MediaInfo:
    with av.open(io.BytesIO(data), mode="r", metadata_errors="replace") as container:
        if not container.streams.video:
            raise MediaError(f"{field} has no video or image stream (format {container.format.name})")
        stream = container.streams.video[0]
        codec_context = stream.codec_context
        if codec_context is None or not codec_context.name:
            raise MediaError(
                f"{field} could not be read as an image or video: not a decodable image or video file "
                f"(its video stream has no known codec)"
            )
        codec = codec_context.name
        width, height = codec_context.width, codec_context.height
        if width > max_side or height > max_side:
            raise MediaError(f"{field} is {width}x{height}; inputs may be at most {max_side} px on a side")
        packets = sum(1 for packet in container.demux(stream) if packet.size)
        container.seek(0)
        first = next(container.decode(video=0), None)
        if first is None:
            raise MediaError(f"{field} holds no decodable frame")
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
    if first.width <= 0 or first.height <= 0:
        raise MediaError(f"{field} decodes to an empty {first.width}x{first.height} frame")
    if first.width > max_side or first.height > max_side:
        raise MediaError(f"{field} is {first.width}x{first.height}; inputs may be at most {max_side} px on a side")
    still = codec in _STILL_CODECS and packets <= 1
    if not still and fps <= 0:
        raise MediaError(f"{field} is a video without a frame rate")
    if not still and not MIN_INPUT_FPS <= fps <= MAX_INPUT_FPS:
        raise MediaError(
            f"{field} declares {fps:g} fps; video inputs must be {MIN_INPUT_FPS:g} to {MAX_INPUT_FPS:g} fps"
        )
    return MediaInfo(
        kind="image" if still else "video",
        format=codec,
        width=first.width,
        height=first.height,
        frames=1 if still else max(1, packets),
        fps=0.0 if still else fps,
        size_bytes=len(data),
        sha256=sha256,
        source=source,
    )


def decode_media(data: bytes, indices: list[int] | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode an image or video to ``(T, H, W, 3)`` uint8 RGB, keeping only frames ``indices``
    (in that order, repeats allowed; an index past the end takes the last frame).

    With ``size = (width, height)`` each kept frame is fitted to it (:func:`fit_frames`) as it
    is decoded, so a long high-resolution input never sits in memory at full size."""
    wanted = None if indices is None else set(indices)
    stop = None if indices is None else max(indices)
    kept: dict[int, np.ndarray] = {}
    count, previous = 0, None

    def convert(frame) -> np.ndarray:
        array = frame.to_ndarray(format="rgb24")
        return array if size is None else fit_frames(torch.from_numpy(array)[None], *size)[0].numpy()

    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="replace") as container:
            for index, frame in enumerate(container.decode(video=0)):
                count, previous = index + 1, frame
                if wanted is None or index in wanted:
                    kept[index] = convert(frame)
                if stop is not None and index >= stop:
                    break
    except (av.error.FFmpegError, UnicodeError) as error:  # the file (probed at submit) broke mid-stream
        raise _unreadable("input", error) from None
    if count == 0:
        raise MediaError("input holds no decodable frame")
    if indices is None:
        return np.stack([kept[i] for i in range(count)])
    last = count - 1
    if last not in kept:
        kept[last] = convert(previous)
    return np.stack([kept[min(i, last)] for i in indices])


def fit_frames(frames: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Scale ``(T, H, W, 3)`` uint8 frames to cover ``width`` x ``height`` and crop the centre.

    Frames already of that size come back unchanged (bit-exact)."""
    t, h, w, _ = frames.shape
    if (w, h) == (width, height):
        return frames
    scale = max(width / w, height / h)
    new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
    x = frames.permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=new_h < h or new_w < w)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    x = x[:, :, top : top + height, left : left + width]
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
