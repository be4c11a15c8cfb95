"""Every generation mode through gRPC, checked on the output itself with the shapes evaluator.

Inputs are shapes-world clips rendered here (the world the tiny model was trained on): A is a
red circle moving right on black, B a blue square moving left on white. Given frames are kept
as exact latents, so what comes back of an input differs from it only by the VAE's round trip
and H.264 (about 25 dB for the shipped tiny VAE); unrelated frames score below 15 dB.

Prompt following is checked on what the shipped tiny model follows reliably: colour and
background (its direction accuracy is low; bench/modes_bench.py measures it per mode).
"""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest

from tessera.models.shapes.evaluate import psnr, score_clip, track_object
from tessera.models.shapes.world import BACKGROUNDS, ClipSpec, render
from tessera.serving.api import tessera_pb2 as pb
from tessera.serving.client import TesseraError
from tessera.serving.video import VideoEncodingConfig, decode_frames, encode_mp4, encode_png

pytestmark = pytest.mark.integration

FPS, SIZE = 8, 64
SMALL = {"width": SIZE, "height": SIZE, "fps": FPS, "steps": 10, "seed": 5}
KEPT_PSNR = 21.0
"""Frames kept from an input: the VAE round trip plus H.264 (measured 23-27 dB), with margin."""
UNRELATED_PSNR = 15.0
MAX_BOUNDARY_JUMP_PX = 20.0
"""Where given and generated frames meet, the object may not jump further: A moves 2.4 px a
frame, the tiny VAE makes that about 5.5 px at every latent group boundary, and the tiny model
continues motion loosely (bench/modes_bench.py measures the median)."""


def clip_a(frames: int = 17) -> np.ndarray:
    return render(ClipSpec("red", "circle", "large", "medium", "right", "black", SIZE, SIZE, FPS, frames, (0.25, 0.5)))


def clip_b(frames: int = 17) -> np.ndarray:
    return render(ClipSpec("blue", "square", "large", "medium", "left", "white", SIZE, SIZE, FPS, frames, (0.7, 0.4)))


def mp4(frames: np.ndarray) -> bytes:
    return encode_mp4(frames, FPS, VideoEncodingConfig())


def fetch(stack, uri: str) -> bytes:
    return stack.store.get_bytes(stack.store.parse_uri(uri)[1])


def frames_of(stack, job: pb.Job) -> np.ndarray:
    return decode_frames(fetch(stack, job.video_uri or job.image_uri))


def manifest_of(stack, job: pb.Job) -> dict:
    return json.loads(fetch(stack, job.manifest_uri))


def rejected(stack, code: grpc.StatusCode, match: str, prompt: str = "a red circle moving right", **fields) -> None:
    with pytest.raises(TesseraError) as caught:
        stack.client.generate(prompt, **fields)
    assert caught.value.code == code, caught.value
    assert match in caught.value.message, caught.value.message


@pytest.fixture(scope="module")
def inputs(stack) -> dict[str, str]:
    """Input clips uploaded under the default tenant's prefix, as s3:// URIs."""
    uris = {}
    for name, data in (("a.mp4", mp4(clip_a())), ("b.mp4", mp4(clip_b())), ("a0.png", encode_png(clip_a()[0]))):
        key = f"default/test-inputs/{name}"
        stack.store.put_bytes(key, data)
        uris[name] = stack.store.uri(key)
    return uris


# -- image ---------------------------------------------------------------------------------


def test_image_is_one_png_frame(stack):
    job = stack.client.generate("a blue square on a white background", image=True, width=96, height=64, steps=10, seed=2)
    assert job.mode == pb.MODE_IMAGE and job.num_frames == 1
    assert job.image_uri.endswith(f"/{job.job_id}/image.png") and not job.video_uri and job.image_url
    image = fetch(stack, job.image_uri)
    assert image.startswith(b"\x89PNG\r\n\x1a\n")
    frames = decode_frames(image)
    assert frames.shape == (1, 64, 96, 3)
    manifest = manifest_of(stack, job)
    assert manifest["mode"] == "image" and manifest["outputs"]["image"] == job.image_uri and manifest["segments"] == []
    assert score_clip(frames).colour == "blue"
    rejected(stack, grpc.StatusCode.INVALID_ARGUMENT, "width 512 is above the model's maximum of 256 px",
             image=True, width=512, height=512)


# -- image to video ------------------------------------------------------------------------


def test_image_to_video_starts_with_the_image(stack):
    first = clip_a()[0]
    job = stack.client.generate("a red circle moving to the right", from_image=encode_png(first), duration_s=2, **SMALL)
    assert job.mode == pb.MODE_IMAGE_TO_VIDEO and (job.width, job.height, job.num_frames) == (SIZE, SIZE, 16)
    assert job.request.from_image.sha256 and not job.request.from_image.data, "inline data is not echoed back"
    frames = frames_of(stack, job)
    assert psnr(frames[0], first) >= KEPT_PSNR
    assert psnr(frames[0], clip_b()[0]) < UNRELATED_PSNR
    score = score_clip(frames, expected={"colour": "red"})
    assert score.colour_correct and score.visibility >= 0.9, score
    given = manifest_of(stack, job)["layout"]["given"]
    assert given == [{"input": "from_image", "latents": [0, 1], "frames": [0, 1], "group_aligned": False}]


def test_image_to_video_can_end_with_the_image(stack, inputs):
    job = stack.client.generate("a red circle moving to the right", from_image=inputs["a0.png"], image_is_last_frame=True,
                                duration_s=2, **SMALL)
    frames = frames_of(stack, job)
    assert psnr(frames[-1], clip_a()[0]) >= KEPT_PSNR
    assert psnr(frames[0], clip_a()[0]) < psnr(frames[-1], clip_a()[0])
    manifest = manifest_of(stack, job)
    assert manifest["inputs"][0]["source"] == inputs["a0.png"] and manifest["inputs"][0]["format"] == "png"


# -- extend --------------------------------------------------------------------------------


def test_extend_forward_keeps_the_input_and_continues_it(stack, inputs):
    job = stack.client.generate("a red circle moving to the right", extend_video=inputs["a.mp4"], extend_seconds=1, **SMALL)
    assert job.mode == pb.MODE_EXTEND and job.num_frames == 17 + 8
    frames = frames_of(stack, job)
    assert psnr(frames[:17], clip_a()) >= KEPT_PSNR
    new = score_clip(frames[17:], expected={"colour": "red"})
    assert new.colour_correct and new.visibility >= 0.9, new
    jumps = track_object(frames).jumps()
    assert jumps[16] <= MAX_BOUNDARY_JUMP_PX, f"the object jumps {jumps[16]:.1f} px where the extension starts"
    assert manifest_of(stack, job)["extend"] == {"new_frames": 8, "backward": False}


def test_extend_backward_ends_with_the_input(stack, inputs):
    job = stack.client.generate("a red circle moving to the right", extend_video=inputs["a.mp4"], extend_seconds=1,
                                backward=True, **SMALL)
    assert job.num_frames == 9 + 17, "8 new frames rounded up to 1 + 4k"
    frames = frames_of(stack, job)
    assert psnr(frames[9:], clip_a()) >= KEPT_PSNR
    new = score_clip(frames[:9], expected={"colour": "red"})
    assert new.colour_correct and new.visibility >= 0.9, new
    jumps = track_object(frames).jumps()
    assert jumps[8] <= MAX_BOUNDARY_JUMP_PX, f"the object jumps {jumps[8]:.1f} px where the input starts"


# -- video to video (SDEdit) ---------------------------------------------------------------


def test_edit_strength_trades_the_input_for_the_prompt(stack, inputs):
    source = clip_a()
    prompt = "a green circle moving to the right on a black background"
    low = stack.client.generate(prompt, edit_video=inputs["a.mp4"], strength=0.2, **SMALL)
    high = stack.client.generate(prompt, edit_video=inputs["a.mp4"], strength=0.8, **SMALL)
    assert low.mode == pb.MODE_EDIT and low.num_frames == 17
    low_frames, high_frames = frames_of(stack, low), frames_of(stack, high)
    assert psnr(low_frames, source) >= KEPT_PSNR, "low strength stays close to the input"
    assert score_clip(low_frames).colour == "red"
    assert score_clip(high_frames).colour == "green", "high strength follows the new prompt"
    assert psnr(high_frames, source) < psnr(low_frames, source) - 3
    edit = manifest_of(stack, low)["edit"]
    assert edit["strength"] == 0.2 and edit["sigmas"][0] == 0.2 and edit["sigmas"][-1] == 0.0


# -- transition ----------------------------------------------------------------------------


def test_transition_starts_as_the_first_and_ends_as_the_second(stack, inputs):
    job = stack.client.generate("a shape moving", transition_from=inputs["a.mp4"], transition_to=mp4(clip_b()),
                                transition_seconds=1, **SMALL)
    assert job.mode == pb.MODE_TRANSITION and job.num_frames == 17 + 8 + 17
    frames = frames_of(stack, job)
    assert psnr(frames[:17], clip_a()) >= KEPT_PSNR
    assert psnr(frames[-17:], clip_b()) >= KEPT_PSNR
    assert psnr(frames[:17], clip_b()) < UNRELATED_PSNR, "the two inputs are unrelated"
    assert manifest_of(stack, job)["transition"]["bridge_frames"] == 8


# -- loop ----------------------------------------------------------------------------------


def test_loop_flows_from_its_last_frame_into_its_first(stack):
    job = stack.client.generate("a red circle moving to the right", loop=True, duration_s=3, **SMALL)
    assert job.mode == pb.MODE_LOOP and job.num_frames == 24
    frames = frames_of(stack, job)
    jumps = track_object(np.concatenate([frames, frames[:1]])).jumps()  # played in a loop: ..., last, first
    assert np.isfinite(jumps).all(), "the object is found in every frame"
    # The tiny VAE moves objects in steps at every latent group boundary (every 4 frames); the
    # loop's seam is one of those boundaries and must not jump more than the others do.
    inside = jumps[3:-1:4]
    assert jumps[-1] <= 1.5 * max(inside.max(), 2.0), f"loop jump {jumps[-1]:.1f} px; group boundaries inside {inside.round(1)}"
    # "Nearly equal" for a moving picture: the last frame is as close to the first as neighbouring
    # frames across a group boundary are to each other (unrelated frames score about 10 dB lower).
    seam = psnr(frames[-1], frames[0])
    boundaries = [psnr(frames[i], frames[i + 1]) for i in range(3, len(frames) - 1, 4)]
    assert seam >= min(boundaries) - 1.0, f"last/first {seam:.1f} dB; neighbours across group boundaries {np.round(boundaries, 1)}"
    assert manifest_of(stack, job)["plan"]["seam_frame_pairs"][-1] == 23


# -- multi-shot ----------------------------------------------------------------------------


def test_multi_shot_follows_each_shots_prompt_with_one_character(stack):
    shots = [{"prompt": "moving to the left on a black background", "duration_s": 3},
             {"prompt": "moving to the right on a white background", "duration_s": 3}]
    job = stack.client.generate("", character="a large red circle", shots=shots, **SMALL)
    assert job.mode == pb.MODE_MULTI_SHOT and job.num_frames == 25 + 24
    manifest = manifest_of(stack, job)
    ranges = [(s["first_frame"], s["first_frame"] + s["num_frames"]) for s in manifest["shots"]]
    assert ranges == [(0, 25), (25, 49)]
    assert manifest["shots"][1]["start_s"] == pytest.approx(25 / FPS) and manifest["shots"][1]["end_s"] == pytest.approx(49 / FPS)
    assert all("red circle" in s["caption"].lower() for s in manifest["shots"]), "the character is in every caption"
    frames = frames_of(stack, job)
    for (start, stop), background in zip(ranges, (BACKGROUNDS["black"], BACKGROUNDS["white"])):
        shot = frames[start:stop]
        assert np.abs(np.median(shot.reshape(-1, 3), axis=0) - background).max() <= 24, "each shot's own background"
        assert score_clip(shot).colour == "red", "the same character in every shot"


def test_blended_shots_share_windows_across_the_boundary(stack):
    shots = [{"prompt": "moving to the left", "duration_s": 2}, {"prompt": "moving to the right", "duration_s": 2, "transition": "blend"}]
    job = stack.client.generate("", character="a red circle", shots=shots, **SMALL)
    manifest = manifest_of(stack, job)
    assert [s["transition"] for s in manifest["shots"]] == ["CUT", "BLEND"]
    boundary = manifest["shots"][1]["latents"][0]
    windows = manifest["plan"]["windows"]
    assert any(start < boundary < stop for start, stop in windows)


# -- sizes and input errors ----------------------------------------------------------------


def test_aspect_ratio_works_for_a_mode(stack):
    job = stack.client.generate("a red circle moving to the right", from_image=encode_png(clip_a()[0]), aspect_ratio="3:2",
                                short_side=48, duration_s=1, steps=4, seed=1)
    assert (job.width, job.height) == (64, 48)
    assert frames_of(stack, job).shape[1:] == (48, 64, 3)


def test_bad_mode_inputs_get_specific_statuses(stack, inputs):
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    rejected(stack, invalid, "strength must be in (0, 1], got 1.5", edit_video=inputs["a.mp4"], strength=1.5)
    rejected(stack, invalid, "edit_video could not be read as an image or video", edit_video=b"not a video" * 20)
    rejected(stack, invalid, "from_image must be a PNG, JPEG or WebP image; got a h264 video", from_image=inputs["a.mp4"])
    rejected(stack, invalid, "from_image is 40x40, which is not a size this model renders",
             from_image=encode_png(np.zeros((40, 40, 3), np.uint8)))
    rejected(stack, invalid, "set one generation mode at a time", from_image=inputs["a0.png"], loop=True)
    rejected(stack, invalid, "33 shots is more than the limit of 16", shots=[{"prompt": "left", "duration_s": 1}] * 33)
    rejected(stack, invalid, "above the maximum of 60 s", shots=[{"prompt": "left", "duration_s": 31}] * 2)
    bucket = stack.config.storage.bucket
    rejected(stack, grpc.StatusCode.NOT_FOUND, "no such object", extend_video=f"s3://{bucket}/default/nothing.mp4", extend_seconds=1)
    rejected(stack, grpc.StatusCode.PERMISSION_DENIED, "outside this tenant's prefix default/",
             extend_video=f"s3://{bucket}/someone-else/a.mp4", extend_seconds=1)
    rejected(stack, grpc.StatusCode.RESOURCE_EXHAUSTED, "upload it to the bucket", edit_video=bytes(9 * 1024 * 1024))
