"""The CogVideoX family (models/open/cogvideox.py) against diffusers' own CogVideoXPipeline, on
tiny random pipelines built in the test and served from their ``save_pretrained`` folders (CPU,
float32): CogVideoX-2b's DDIM and CogVideoX-5b's stochastic DPM solver, whose history and noise
stream travel in ``solver_state``.

Faithfulness tolerance: ``FAITHFUL`` = 1e-5 absolute on the latents and 1 uint8 level on the
frames; measured here: **0** (bit-exact).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tessera.models import DenoiseWork, load_model
from tessera.models.config import CogVideoXModelConfig
from tests.models.tiny_open import cogvideox_t2v

torch.set_num_threads(2)

PROMPT, NEGATIVE = "a red circle moving to the right", "blue square"
SIZE, FRAMES, STEPS, GUIDANCE = 16, 9, 3, 6.0
LATENT_SHAPE = (4, 3, 2, 2)
FAITHFUL = 1e-5


def config(folder, **fields) -> CogVideoXModelConfig:
    return CogVideoXModelConfig(**{"path": folder, "device": "cpu", "dtype": "float32", "max_sequence_length": 16, **fields})


def noise() -> torch.Tensor:
    return torch.randn((1, *LATENT_SHAPE), generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("dpm", [False, True], ids=["ddim-2b", "dpm-5b"])
def test_stages_reproduce_the_pipeline(tmp_path, dpm):
    from diffusers import CogVideoXPipeline

    folder = cogvideox_t2v(tmp_path / "tiny-cogvideox", dpm=dpm)
    pipe = CogVideoXPipeline.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    common = dict(prompt=PROMPT, negative_prompt=NEGATIVE, height=SIZE, width=SIZE, num_frames=FRAMES, num_inference_steps=STEPS,
                  guidance_scale=GUIDANCE, max_sequence_length=16, use_dynamic_cfg=dpm, latents=noise().permute(0, 2, 1, 3, 4))
    reference = pipe(**common, generator=torch.Generator().manual_seed(5), output_type="latent").frames[0].permute(1, 0, 2, 3)
    video = pipe(**common, generator=torch.Generator().manual_seed(5), output_type="np").frames[0]

    text_model = load_model(config(folder), parts={"text"})
    denoisers = [load_model(config(folder, use_dynamic_cfg=dpm), parts={"denoiser"}) for _ in range(2)]
    vae = load_model(config(folder), parts={"vae"})
    sigmas = denoisers[0].sigmas(STEPS)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0
    text, negative = text_model.encode_text([PROMPT, NEGATIVE])
    latents = denoisers[0].add_noise(torch.zeros(LATENT_SHAPE), noise()[0], sigmas[0])
    # The pipeline's generator after drawing nothing (its latents were given): the noise stream the DPM solver draws from.
    state = {"steps": STEPS, "index": 0, "first": None, "first_index": None, "generator": torch.Generator().manual_seed(5).get_state()} if dpm else None
    for index in range(STEPS):
        work = DenoiseWork(latents, tuple(sigmas[index : index + 2]), text, negative, GUIDANCE, 8.0, solver_state=state)
        [result] = denoisers[index % 2].step_with_state([work])
        latents, state = result.latents, result.solver_state
    frames = vae.decode_latents(latents)

    assert (latents - reference).abs().max().item() <= FAITHFUL
    expected = torch.from_numpy(np.round(video * 255).astype(np.uint8))
    assert frames.shape == expected.shape and (frames.int() - expected.int()).abs().max().item() <= 1


def test_dpm_without_state_is_reproducible_and_refuses_off_schedule_levels(tmp_path):
    folder = cogvideox_t2v(tmp_path / "tiny-cogvideox-5b", dpm=True)
    model = load_model(config(folder), parts={"text", "denoiser"})
    text, negative = model.encode_text([PROMPT, NEGATIVE])
    sigmas = model.sigmas(4)
    work = DenoiseWork(noise()[0], tuple(sigmas[:2]), text, negative, GUIDANCE, 8.0)
    first, again = model.step_with_state([work]), model.step_with_state([work])  # the noise stream is seeded from the latents
    assert torch.equal(first[0].latents, again[0].latents)
    assert model.card.capabilities.modes == {"text_to_video"}
    with pytest.raises(ValueError, match="must lie on its CogVideoXDPMScheduler schedule"):
        model.step([DenoiseWork(noise()[0], (0.5531, sigmas[2]), text, negative, GUIDANCE, 8.0)])


def test_cogvideox_15_is_refused_with_the_reason(tmp_path):
    """CogVideoX 1.5's transformer patches pairs of latent frames (``patch_size_t`` 2); its pipeline
    pads an odd count with latent frames in front, denoised and dropped: refused at load, by the card."""
    import json

    folder = cogvideox_t2v(tmp_path / "tiny-cogvideox")
    transformer = folder / "transformer" / "config.json"
    transformer.write_text(json.dumps({**json.loads(transformer.read_text()), "patch_size_t": 2}))
    with pytest.raises(ValueError, match="is CogVideoX 1.5 \\(patch_size_t 2\\): its pipeline pads an odd number of latent frames"):
        load_model(config(folder), parts=())
