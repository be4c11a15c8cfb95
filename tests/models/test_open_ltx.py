"""The LTX-Video family (models/open/ltx.py) against diffusers' own LTXPipeline, on a tiny random
pipeline built in the test and served from its ``save_pretrained`` folder (CPU, float32).

Faithfulness tolerance: ``FAITHFUL`` = 1e-5 absolute on the latents and 1 uint8 level on the
frames; measured here: **0** (bit-exact), with the VAE's timestep-conditioned decode too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tessera.models import DenoiseWork, load_model
from tessera.models.config import LTXModelConfig
from tessera.models.interface import UnsupportedModeError
from tests.models.tiny_open import ltx_t2v

torch.set_num_threads(2)

PROMPT, NEGATIVE = "a red circle moving to the right", "blue square"
HEIGHT = WIDTH = 32
FRAMES = 9
STEPS, GUIDANCE, FPS = 3, 3.0, 25.0
LATENT_SHAPE = (8, 3, 8, 8)  # the tiny VAE compresses 4x in space and time
FAITHFUL = 1e-5


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return ltx_t2v(tmp_path_factory.mktemp("ltx") / "tiny-ltx", timestep_conditioning=True)


@pytest.fixture(scope="module")
def pipe(folder):
    from diffusers import LTXPipeline

    pipe = LTXPipeline.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def config(folder, **fields) -> LTXModelConfig:
    return LTXModelConfig(path=folder, device="cpu", dtype="float32", **fields)


def noise() -> torch.Tensor:
    return torch.randn((1, *LATENT_SHAPE), generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("rescale", [0.0, 0.7])
def test_stages_reproduce_the_pipeline(folder, pipe, rescale):
    text_model = load_model(config(folder), parts={"text"})
    denoisers = [load_model(config(folder, guidance_rescale=rescale), parts={"denoiser"}) for _ in range(2)]
    vae = load_model(config(folder, decode_timestep=0.05, decode_noise_scale=0.025, decode_seed=11), parts={"vae"})

    sigmas = denoisers[0].sigmas_for(STEPS, LATENT_SHAPE)
    text, negative = text_model.encode_text([PROMPT, NEGATIVE])
    latents = denoisers[0].add_noise(torch.zeros(LATENT_SHAPE), noise()[0], sigmas[0])
    for index in range(STEPS):
        work = DenoiseWork(latents, tuple(sigmas[index : index + 2]), text, negative, GUIDANCE, FPS)
        [result] = denoisers[index % 2].step_with_state([work])
        assert result.solver_state is None  # flow-match Euler keeps no history
        latents = result.latents
    frames = vae.decode_latents(latents)

    common = dict(prompt=PROMPT, negative_prompt=NEGATIVE, height=HEIGHT, width=WIDTH, num_frames=FRAMES, frame_rate=int(FPS),
                  num_inference_steps=STEPS, guidance_scale=GUIDANCE, guidance_rescale=rescale, latents=pipe._pack_latents(noise(), 1, 1))
    reference = pipe._unpack_latents(pipe(**common, output_type="latent").frames, 3, 8, 8, 1, 1)[0]
    video = pipe(**common, output_type="np", decode_timestep=0.05, decode_noise_scale=0.025,
                 generator=torch.Generator().manual_seed(11)).frames[0]
    assert (latents - reference).abs().max().item() <= FAITHFUL
    expected = torch.from_numpy(np.round(video * 255).astype(np.uint8))
    assert frames.shape == expected.shape and (frames.int() - expected.int()).abs().max().item() <= 1


def test_schedule_depends_on_the_video_size(folder):
    """Dynamic shifting: more tokens, a schedule shifted towards noise (as the pipeline computes it)."""
    model = load_model(config(folder), parts=())
    small, large = model.sigmas_for(4, (8, 3, 8, 8)), model.sigmas_for(4, (8, 9, 16, 16))
    assert small[0] == large[0] == 1.0 and small[-2:] == large[-2:] == [pytest.approx(0.1), 0.0]  # shift_terminal 0.1
    assert all(a < b for a, b in zip(small[1:-2], large[1:-2]))


def test_edit_from_any_level_and_batched_items(folder):
    """Euler keeps no history: an SDEdit start off the schedule and items at different levels
    and guidance batch in one forward, each equal to its result alone (1e-5)."""
    model = load_model(config(folder), parts={"text", "denoiser", "vae"})
    text, negative = model.encode_text([PROMPT, NEGATIVE])
    clip = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8))
    clean = model.encode_video(clip)
    assert clean.shape == LATENT_SHAPE
    sigmas = model.sigmas_for(4, LATENT_SHAPE)
    edit = (0.55, *[s for s in sigmas if s < 0.55])
    items = [
        DenoiseWork(model.add_noise(clean, noise()[0], 0.55), edit[:2], text, negative, 4.0, FPS),
        DenoiseWork(noise()[0], tuple(sigmas[:2]), text, negative, GUIDANCE, FPS),
    ]
    together = model.step(items)
    for item, result in zip(items, together, strict=True):
        assert (result - model.step([item])[0]).abs().max().item() <= 1e-5


def test_card_and_refused_modes(folder):
    card = load_model(config(folder, name="ltx-video-0.9"), parts=()).card
    assert (card.geometry.temporal_factor, card.limits.default_fps, card.limits.default_guidance_scale) == (4, 25.0, 3.0)
    assert card.limits.max_prompt_tokens == 128
    with pytest.raises(UnsupportedModeError, match="^model ltx-video-0.9 does not support extend "):
        card.require_mode("extend")
