"""Media inputs: probing and decoding files, fitting frames, reading inputs from S3 with the
tenant and size rules, and the Decoder stage's encode (random VAE weights: shapes only)."""

from __future__ import annotations

import asyncio

import av
import grpc
import numpy as np
import pytest
import torch

from tessera.models import NativeModelConfig
from tessera.serving.config import LimitsConfig
from tessera.serving.decoder import DecoderEngine
from tessera.serving.errors import TesseraError
from tessera.serving.jobs.inputs import InputCollector, delete_inputs, input_prefix, read_input
from tessera.serving.jobs.spec import GenerationRequest, MediaInput
from tessera.serving.media import MediaError, decode_media, fit_frames, probe_media
from tessera.serving.stages import EncodeRequest
from tessera.serving.video import VideoEncodingConfig, encode_mp4, encode_png


def ramp_video(frames: int = 9, width: int = 64, height: int = 48) -> np.ndarray:
    """Frame t is a flat grey of level 20*t: frame identity survives H.264."""
    levels = (np.arange(frames) * 20).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (frames, height, width, 3)).copy()


def jpeg(frame: np.ndarray) -> bytes:
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height, codec.pix_fmt = frame.shape[1], frame.shape[0], "yuvj420p"
    codec.time_base = 1
    packets = codec.encode(av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuvj420p"))
    return b"".join(bytes(p) for p in packets + codec.encode(None))


def probe(data: bytes, max_side: int = 4096):
    return probe_media(data, "input", max_side=max_side, source="inline", sha256="0")


def test_probe_tells_images_from_videos():
    png = probe(encode_png(np.zeros((48, 64, 3), np.uint8)))
    assert (png.kind, png.format, png.width, png.height, png.frames) == ("image", "png", 64, 48, 1)
    jpg = probe(jpeg(np.zeros((32, 48, 3), np.uint8)))
    assert (jpg.kind, jpg.format, jpg.width, jpg.height) == ("image", "mjpeg", 48, 32)
    mp4 = probe(encode_mp4(ramp_video(9), 8, VideoEncodingConfig()))
    assert (mp4.kind, mp4.format, mp4.frames, mp4.fps, mp4.width, mp4.height) == ("video", "h264", 9, 8.0, 64, 48)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "input is empty"),
        (b"not a video at all" * 10, "input could not be read as an image or video"),
        (encode_png(np.zeros((48, 64, 3), np.uint8)), "input is 64x48; inputs may be at most 32 px on a side"),
    ],
)
def test_unusable_inputs_are_invalid_arguments(data, message):
    with pytest.raises(MediaError, match=message) as caught:
        probe(data, max_side=32)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_malformed_files_are_invalid_arguments_not_crashes():
    """Two files that crashed the probe: an MP4 whose sample description is gone (no codec:
    AttributeError on None) and one whose brand is not UTF-8 (UnicodeDecodeError from PyAV)."""
    mp4 = encode_mp4(ramp_video(9), 8, VideoEncodingConfig())
    at = mp4.index(b"stsd")
    no_codec = mp4[:at] + b"zzzz" + mp4[at + 4 :]
    bad_brand = bytearray(mp4)
    bad_brand[21] ^= 0xFF
    for data in (no_codec, bytes(bad_brand), mp4[:600], mp4[: len(mp4) // 2]):
        try:
            probe(data)
        except TesseraError as error:
            assert isinstance(error, MediaError) and error.code == grpc.StatusCode.INVALID_ARGUMENT
            assert error.message.startswith("input ") and len(error.message) < 300
    with pytest.raises(MediaError, match="not a decodable image or video file"):
        probe(no_codec)


def test_decode_media_keeps_the_frames_asked_for():
    data = encode_mp4(ramp_video(9), 8, VideoEncodingConfig())
    frames = decode_media(data, [0, 4, 4, 8, 20])
    assert frames.shape == (5, 48, 64, 3)
    assert np.abs(frames[:, 0, 0, 0].astype(int) - [0, 80, 80, 160, 160]).max() <= 3, "past the end: the last frame"
    assert decode_media(data).shape == (9, 48, 64, 3)
    assert decode_media(data, [0, 8], size=(32, 32)).shape == (2, 32, 32, 3), "fitted frame by frame"


def test_fit_frames_covers_and_crops_the_centre():
    frames = torch.zeros(2, 32, 128, 3, dtype=torch.uint8)
    frames[:, :, 56:72] = 200  # a bright band in the middle
    fitted = fit_frames(frames, 64, 64)  # scaled x2 to 64x256 (band at 112..144), centre columns 96..160 kept
    assert fitted.shape == (2, 64, 64, 3)
    assert fitted[:, :, 18:46].min() == 200 and fitted[:, :, :12].max() == 0 and fitted[:, :, 52:].max() == 0
    assert fit_frames(frames, 128, 32) is frames, "already the right size: untouched"


# -- inputs from S3 --------------------------------------------------------------------------


@pytest.fixture
def collector(object_store) -> InputCollector:
    return InputCollector(object_store, LimitsConfig(max_inline_input_bytes=4000, max_input_bytes=3000, shared_input_prefixes=("shared-media/",)))


def collect_error(collector, tenant, **fields) -> TesseraError:
    with pytest.raises(TesseraError) as caught:
        collector.collect(tenant, GenerationRequest(prompt="x", **fields))
    return caught.value


def test_inputs_from_the_tenants_prefix_and_shared_prefixes(collector, object_store, key_prefix):
    tenant = key_prefix.rstrip("/")
    png = encode_png(np.zeros((48, 64, 3), np.uint8))
    object_store.put_bytes(f"{tenant}/in/frame.png", png)
    object_store.put_bytes(f"shared-media/{tenant}.png", png)
    got = collector.collect(tenant, GenerationRequest(prompt="x", from_image=MediaInput(uri=object_store.uri(f"{tenant}/in/frame.png"))))
    assert got["from_image"].data == png and got["from_image"].info.source.endswith("/in/frame.png")
    shared = collector.collect("someone-else", GenerationRequest(prompt="x", from_image=MediaInput(uri=object_store.uri(f"shared-media/{tenant}.png"))))
    assert shared["from_image"].info.kind == "image"

    denied = collect_error(collector, "someone-else", from_image=MediaInput(uri=object_store.uri(f"{tenant}/in/frame.png")))
    assert denied.code == grpc.StatusCode.PERMISSION_DENIED and "outside this tenant's prefix someone-else/" in denied.message
    missing = collect_error(collector, tenant, from_image=MediaInput(uri=object_store.uri(f"{tenant}/in/nothing.png")))
    assert missing.code == grpc.StatusCode.NOT_FOUND and "no such object" in missing.message
    other_bucket = collect_error(collector, tenant, from_image=MediaInput(uri=f"s3://another-bucket/{tenant}/in/frame.png"))
    assert other_bucket.code == grpc.StatusCode.INVALID_ARGUMENT and "this deployment's bucket" in other_bucket.message


def test_inputs_over_the_size_limits(collector, object_store, key_prefix):
    tenant = key_prefix.rstrip("/")
    too_big = collect_error(collector, tenant, edit_video=MediaInput(data=bytes(5000)))
    assert too_big.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "upload it to the bucket" in too_big.message
    object_store.put_bytes(f"{tenant}/big.mp4", bytes(3500))
    stored = collect_error(collector, tenant, edit_video=MediaInput(uri=object_store.uri(f"{tenant}/big.mp4")))
    assert stored.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "at most 3000 bytes" in stored.message


def test_inputs_are_kept_with_the_job_and_deleted_after(collector, object_store, key_prefix):
    tenant = key_prefix.rstrip("/")
    png = encode_png(np.zeros((48, 64, 3), np.uint8))
    collected = collector.collect(tenant, GenerationRequest(prompt="x", from_image=MediaInput(data=png)))
    collector.save(tenant, "job1", collected)
    assert read_input(object_store, tenant, "job1", "from_image") == png
    delete_inputs(object_store, tenant, "job1")
    assert object_store.list_keys(input_prefix(tenant, "job1")) == []
    with pytest.raises(TesseraError, match="the stored copy of input from_image of job job1 is gone"):
        read_input(object_store, tenant, "job1", "from_image")


# -- the Decoder stage's encode ------------------------------------------------------------


@pytest.fixture(scope="module")
def decoder(tmp_path_factory) -> DecoderEngine:
    torch.manual_seed(0)
    weights = tmp_path_factory.mktemp("random-weights")
    return DecoderEngine(NativeModelConfig(weights_dir=weights, allow_random_weights=True), VideoEncodingConfig(), threads=2)


def test_encode_counts_latent_frames_by_alignment(decoder):
    def encode(request: EncodeRequest) -> torch.Tensor:
        return asyncio.run(decoder.encode(request))

    clip = torch.from_numpy(ramp_video(9))  # 9 frames = latent 0 + 2 groups of 4
    first = encode(EncodeRequest(64, 48, frames=clip))
    grouped = encode(EncodeRequest(64, 48, frames=clip, group_aligned=True))
    assert first.shape == (8, 3, 6, 8)
    assert grouped.shape == (8, 3, 6, 8), "9 frames as whole groups: ceil(9/4) latent frames"
    media = encode_mp4(ramp_video(9), 8, VideoEncodingConfig())
    picked = encode(EncodeRequest(32, 32, media=media, frame_indices=(0, 2, 4, 6, 8)))
    assert picked.shape == (8, 2, 4, 4)
    again = encode(EncodeRequest(64, 48, latents=first, frame_indices=tuple(range(4)), group_aligned=True))
    assert again.shape == (8, 1, 6, 8)
    with pytest.raises(ValueError, match="exactly one of media, frames and latents"):
        encode(EncodeRequest(64, 48))
