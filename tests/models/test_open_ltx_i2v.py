"""LTX-Video image to video (models/open/ltx.py) against diffusers' own ``LTXImageToVideoPipeline``,
on a tiny random folder saved as that pipeline (tests/models/tiny_open.py; CPU, float32).

The image's latent is made on the part that holds the VAE (``encode_conditioning``: the
pipeline's video processor and ``prepare_latents``, the VAE's distribution sampled with the
generator ``__call__`` would get for the job's seed), and is the clean first latent frame the
Denoiser keeps while its tokens get timestep 0.

Faithfulness tolerance: ``FAITHFUL`` = 1e-5 absolute on the latents and 1 uint8 level on the
frames, as tests/models/test_open_ltx.py; measured: **0** (bit-exact), the VAE's
timestep-conditioned decode included; the image's latent equals the first latent frame of
``__call__`` with ``generator=torch.Generator().manual_seed(seed)`` exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tessera.models import DenoiseWork, load_model
from tessera.models.config import LTXModelConfig
from tessera.models.interface import ConditioningRequest, UnsupportedModeError
from tests.models.tiny_open import ltx_t2v

torch.set_num_threads(2)

PROMPT, NEGATIVE = "a red circle moving to the right", "blue square"
HEIGHT = WIDTH = 32
FRAMES = 9
STEPS, GUIDANCE, FPS, SEED = 3, 3.0, 25.0, 5
LATENT_SHAPE = (8, 3, 8, 8)  # the tiny VAE compresses 4x in space and time
FAITHFUL = 1e-5


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return ltx_t2v(tmp_path_factory.mktemp("ltx-i2v") / "tiny-ltx-i2v", timestep_conditioning=True, image_to_video=True)


@pytest.fixture(scope="module")
def pipe(folder):
    from diffusers import LTXImageToVideoPipeline

    pipe = LTXImageToVideoPipeline.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def config(folder, **fields) -> LTXModelConfig:
    return LTXModelConfig(path=folder, device="cpu", dtype="float32", **fields)


def image() -> torch.Tensor:
    return torch.randint(0, 256, (HEIGHT, WIDTH, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))


def noise() -> torch.Tensor:
    return torch.randn((1, *LATENT_SHAPE), generator=torch.Generator().manual_seed(7))


def test_image_to_video_reproduces_the_pipeline(folder, pipe):
    from PIL import Image

    text_model = load_model(config(folder), parts={"text"})
    denoisers = [load_model(config(folder), parts={"denoiser"}) for _ in range(2)]
    vae = load_model(config(folder, decode_timestep=0.05, decode_noise_scale=0.025, decode_seed=11), parts={"vae"})

    conditioning = vae.encode_conditioning(ConditioningRequest({0: image()}, FRAMES, HEIGHT, WIDTH, SEED))
    given = conditioning.frames
    assert given is not None and given.mask.tolist() == [1.0, 0.0, 0.0] and not conditioning.per_frame
    sigmas = denoisers[0].sigmas_for(STEPS, LATENT_SHAPE)
    text, negative = text_model.encode_text([PROMPT, NEGATIVE])
    latents = given.apply(denoisers[0].add_noise(torch.zeros(LATENT_SHAPE), noise()[0], sigmas[0]))  # as the sampler starts
    start = latents.clone()
    for index in range(STEPS):
        work = DenoiseWork(latents, tuple(sigmas[index : index + 2]), text, negative, GUIDANCE, FPS, frames=given,
                           conditioning=conditioning)
        [result] = denoisers[index % 2].step_with_state([work])
        latents = result.latents
    assert torch.equal(latents[:, 0], given.latents[:, 0])  # the image's latent is kept
    frames = vae.decode_latents(latents)

    common = dict(image=Image.fromarray(image().numpy()), prompt=PROMPT, negative_prompt=NEGATIVE, height=HEIGHT, width=WIDTH,
                  num_frames=FRAMES, frame_rate=int(FPS), num_inference_steps=STEPS, guidance_scale=GUIDANCE)
    packed = pipe._pack_latents(start[None], 1, 1)  # the same initial latents: the image's first frame, then noise
    reference = pipe._unpack_latents(pipe(**common, latents=packed, output_type="latent").frames, 3, 8, 8, 1, 1)[0]
    video = pipe(**common, latents=packed, output_type="np", decode_timestep=0.05, decode_noise_scale=0.025,
                 generator=torch.Generator().manual_seed(11)).frames[0]
    difference = (latents - reference).abs().max().item()
    expected = torch.from_numpy(np.round(video * 255).astype(np.uint8))
    levels = (frames.int() - expected.int()).abs().max().item()
    print(f"LTX image to video: latents max |diff| {difference:.3g}, frames {levels} levels")
    assert difference <= FAITHFUL
    assert frames.shape == expected.shape and levels <= 1

    # The image's latent is the one __call__ makes from the image with the job's seed as its generator.
    own = pipe(**common, generator=torch.Generator().manual_seed(SEED), output_type="latent").frames
    own = pipe._unpack_latents(own, 3, 8, 8, 1, 1)[0]
    assert torch.equal(own[:, 0], given.latents[:, 0])


def test_given_frames_batch_apart_from_text_to_video(folder):
    model = load_model(config(folder), parts={"text", "denoiser", "vae"})
    text, negative = model.encode_text([PROMPT, NEGATIVE])
    conditioning = model.encode_conditioning(ConditioningRequest({0: image()}, FRAMES, HEIGHT, WIDTH, SEED))
    sigmas = tuple(model.sigmas_for(STEPS, LATENT_SHAPE)[:2])
    i2v = DenoiseWork(conditioning.frames.apply(noise()[0]), sigmas, text, negative, GUIDANCE, FPS, frames=conditioning.frames)
    t2v = DenoiseWork(noise()[0], sigmas, text, negative, GUIDANCE, FPS)
    assert model.batch_key(i2v) != model.batch_key(t2v)  # per-token timesteps against one per video
    together = model.step([i2v, t2v])
    for item, result in zip((i2v, t2v), together, strict=True):
        assert torch.equal(result, model.step([item])[0])


def test_card_lists_image_to_video_from_the_first_frame(folder, tmp_path):
    for path in (folder, ltx_t2v(tmp_path / "t2v-folder")):  # LTX-Video's checkpoints serve both pipelines
        card = load_model(config(path, name="ltx-video"), parts=()).card
        card.require_mode("image_to_video")
        assert card.capabilities.conditioned_modes == frozenset({"image_to_video"})
        with pytest.raises(UnsupportedModeError, match="^model ltx-video does not support image_is_last_frame with image_to_video"):
            card.require_option("image_is_last_frame", "image_to_video")
        with pytest.raises(UnsupportedModeError, match="^model ltx-video does not support transition "):
            card.require_mode("transition")
