"""A contact sheet of a video's frames, as the videos API's ``variant=spritesheet`` (a JPEG).

Frames are picked evenly over the whole video (first and last included) and laid out row by
row on a near-square grid, each scaled down to at most ``max_tile_width`` pixels wide. The file
is read twice: once to count frames without decoding (demuxed packets), once to decode, so a long
video never sits in memory decoded; only the chosen tiles do.
"""

from __future__ import annotations

import io
import math
from fractions import Fraction

import av
import numpy as np

from tessera.serving.errors import InternalError

SHEET_FRAMES = 16
MAX_TILE_WIDTH = 256


def _count_frames(data: bytes) -> int:
    with av.open(io.BytesIO(data), mode="r") as container:
        return sum(1 for packet in container.demux(video=0) if packet.size)


def pick_frames(total: int, wanted: int) -> list[int]:
    """``wanted`` frame indices spread evenly over ``total`` frames, first and last included."""
    if total <= 0:
        return []
    if total <= wanted:
        return list(range(total))
    if wanted == 1:
        return [0]
    return sorted({round(i * (total - 1) / (wanted - 1)) for i in range(wanted)})


def grid(count: int) -> tuple[int, int]:
    """(columns, rows) of a near-square grid holding ``count`` tiles."""
    columns = max(1, math.ceil(math.sqrt(count)))
    return columns, max(1, math.ceil(count / columns))


def encode_jpeg(image: np.ndarray, quality: int = 3) -> bytes:
    """An ``(H, W, 3)`` uint8 RGB image as JPEG bytes (``quality``: MJPEG qscale, 2 best .. 31 worst)."""
    height, width = image.shape[:2]
    padded = np.zeros((height + height % 2, width + width % 2, 3), np.uint8)  # 4:2:0 needs even sides
    padded[:height, :width] = image
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height, codec.pix_fmt = padded.shape[1], padded.shape[0], "yuvj420p"
    codec.time_base = Fraction(1, 1)
    codec.qmin = codec.qmax = quality
    frame = av.VideoFrame.from_ndarray(padded, format="rgb24").reformat(format="yuvj420p")
    packets = codec.encode(frame) + codec.encode(None)
    return b"".join(bytes(packet) for packet in packets)


def contact_sheet(video: bytes, frames: int = SHEET_FRAMES, max_tile_width: int = MAX_TILE_WIDTH) -> tuple[bytes, dict]:
    """The JPEG contact sheet of ``video`` (MP4 bytes) and its layout: columns, rows, tile size,
    and which source frames it shows (row by row). Blocking: run it in a thread."""
    try:
        total = _count_frames(video)
        indices = pick_frames(total, frames)
        if not indices:
            raise InternalError("the video holds no frames to make a spritesheet of")
        wanted = set(indices)
        tiles: list[np.ndarray] = []
        with av.open(io.BytesIO(video), mode="r") as container:
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            scale = min(1.0, max_tile_width / width)
            tile_w, tile_h = max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)
            for index, frame in enumerate(container.decode(stream)):
                if index in wanted:
                    tiles.append(frame.reformat(width=tile_w, height=tile_h, format="rgb24").to_ndarray())
                if index >= indices[-1]:
                    break
    except av.error.FFmpegError as error:
        raise InternalError(f"the video could not be decoded for its spritesheet: {error}") from None
    columns, rows = grid(len(tiles))
    sheet = np.zeros((rows * tile_h, columns * tile_w, 3), np.uint8)
    for position, tile in enumerate(tiles):
        row, column = divmod(position, columns)
        sheet[row * tile_h : (row + 1) * tile_h, column * tile_w : (column + 1) * tile_w] = tile
    layout = {"columns": columns, "rows": rows, "tile_width": tile_w, "tile_height": tile_h,
              "frames": indices[: len(tiles)], "total_frames": total}
    return encode_jpeg(sheet), layout
