"""Wan image to video (models/open/wan.py) against diffusers' own ``WanImageToVideoPipeline``, on
tiny random pipelines built in the test (tests/models/tiny_open.py: a CLIPVisionModel configured
locally) and served from the folders ``save_pretrained`` wrote (CPU, float32, nothing downloaded).

The stages split the pipeline as Tessera's deployments run it: the prompt through the text part,
the image's conditioning (``encode_conditioning``: the pipeline's video processor, its
``prepare_latents`` with the VAE, its ``encode_image`` with CLIP) on the part that holds the VAE,
the steps on two Denoiser models taking turns with the conditioning and the solver state sent
over the wire, the VAE's decode.

Faithfulness tolerance: ``FAITHFUL`` = 1e-5 absolute on the latents and 1 uint8 level on frames
(as tests/models/test_open_wan.py, whose docstring says why there is one); measured: **0**
(bit-exact) for Wan 2.1 I2V with CLIP, Wan 2.2 I2V A14B's two experts and Wan 2.2 TI2V's
clean first frame. Batching image
conditioned items of two jobs in one forward: ``BATCH_TOLERANCE`` = 1e-5.
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch

from tessera.models import DenoiseWork, load_model
from tessera.models.config import WanModelConfig
from tessera.models.interface import ConditioningRequest, UnsupportedModeError
from tests.models.tiny_open import wan_i2v, wan_i2v_pipeline_video, wan_t2v

torch.set_num_threads(2)

PROMPT, NEGATIVE = "a red circle moving to the right", "blue square"
HEIGHT = WIDTH = 32
FRAMES = 9  # 4k+1: 3 latent frames
STEPS, GUIDANCE, TEXT_LENGTH, SEED = 3, 5.0, 16, 5
LATENT_SHAPE = (16, 3, HEIGHT // 8, WIDTH // 8)
FAITHFUL = 1e-5
BATCH_TOLERANCE = 1e-5


def config(folder, **fields) -> WanModelConfig:
    return WanModelConfig(**{"path": folder, "device": "cpu", "dtype": "float32", "max_sequence_length": TEXT_LENGTH, **fields})


def load_stages(folder) -> dict:
    return {
        "text": load_model(config(folder), parts={"text"}),
        "denoisers": [load_model(config(folder), parts={"denoiser"}) for _ in range(2)],
        "vae": load_model(config(folder), parts={"vae"}),
    }


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return wan_i2v(tmp_path_factory.mktemp("wan-i2v") / "tiny-wan2.1-i2v")


@pytest.fixture(scope="module")
def stages(folder):
    return load_stages(folder)


def image(seed: int = 3) -> torch.Tensor:
    """A random ``uint8 (H, W, 3)`` picture at the video's size."""
    return torch.randint(0, 256, (HEIGHT, WIDTH, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def noise(seed: int = 7) -> torch.Tensor:
    return torch.randn((1, *LATENT_SHAPE), generator=torch.Generator().manual_seed(seed))


def over_the_wire(work: DenoiseWork) -> DenoiseWork:
    return pickle.loads(pickle.dumps(work))


def run_stages(stages, picture: torch.Tensor, latents: torch.Tensor, sigmas: list[float], guidance: float = GUIDANCE):
    text, negative = stages["text"].encode_text([PROMPT, NEGATIVE])
    conditioning = stages["vae"].encode_conditioning(ConditioningRequest({0: picture}, FRAMES, HEIGHT, WIDTH, SEED))
    state = None
    for index in range(len(sigmas) - 1):
        work = DenoiseWork(latents=latents, sigmas=tuple(sigmas[index : index + 2]), text=text, negative_text=negative,
                           guidance_scale=guidance, fps=16.0, solver_state=state, conditioning=conditioning)
        [result] = stages["denoisers"][index % 2].step_with_state([over_the_wire(work)])
        latents, state = result.latents, copy.deepcopy(result.solver_state)
    return latents, conditioning


def pipeline_outputs(folder, picture: torch.Tensor, steps: int, guidance: float, **extra):
    from PIL import Image

    common = dict(image=Image.fromarray(picture.numpy()), height=HEIGHT, width=WIDTH, num_frames=FRAMES,
                  num_inference_steps=steps, guidance_scale=guidance, **extra)
    text = dict(prompt=PROMPT, negative_prompt=NEGATIVE, max_sequence_length=TEXT_LENGTH)
    latents = wan_i2v_pipeline_video(folder, **text, **common, latents=noise(), output_type="latent")
    video = wan_i2v_pipeline_video(folder, **text, **common, latents=noise(), output_type="np")  # (T, H, W, 3) in [0, 1]
    return latents, torch.from_numpy(np.round(video * 255).astype(np.uint8))


def check_faithful(stages, folder, steps: int, **extra) -> None:
    picture = image()
    model = stages["denoisers"][0]
    latents, conditioning = run_stages(stages, picture, noise()[0], model.sigmas(steps))
    frames = stages["vae"].decode_latents(latents)
    reference, expected = pipeline_outputs(folder, picture, steps, GUIDANCE, **extra)
    difference = (latents - reference).abs().max().item()
    levels = (frames.int() - expected.int()).abs().max().item()
    print(f"{folder.name}: latents max |diff| {difference:.3g}, frames {levels} levels")
    assert difference <= FAITHFUL
    assert frames.shape == (FRAMES, HEIGHT, WIDTH, 3) and levels <= 1


def test_wan21_i2v_reproduces_the_pipeline(stages, folder):
    """CLIP's image tokens (1 px patches of its 32 px crop and the class token: 32 x 32 + 1; the
    released ViT-H: 257) and the image's latents behind the mask, through two Denoiser replicas."""
    picture = image()
    conditioning = stages["vae"].encode_conditioning(ConditioningRequest({0: picture}, FRAMES, HEIGHT, WIDTH, SEED))
    assert conditioning.frames is None
    assert tuple(conditioning.per_frame["condition"].shape) == (4 + 16, 3, HEIGHT // 8, WIDTH // 8)
    assert conditioning.per_frame["condition"][:4, 0].eq(1).all() and conditioning.per_frame["condition"][:4, 1:].eq(0).all()
    assert tuple(conditioning.shared["image_embeds"].shape) == (32 * 32 + 1, 4)
    check_faithful(stages, folder, STEPS)


def test_wan22_i2v_two_experts_reproduce_the_pipeline(tmp_path):
    """Wan 2.2 I2V A14B's layout: no image encoder, ``transformer`` above the boundary (0.8 x 1000),
    ``transformer_2`` below; 4 steps cross it."""
    folder = wan_i2v(tmp_path / "tiny-wan2.2-i2v", seed=1, two_experts=True)
    stages = load_stages(folder)
    conditioning = stages["vae"].encode_conditioning(ConditioningRequest({0: image()}, FRAMES, HEIGHT, WIDTH, SEED))
    assert set(conditioning.shared) == set() and set(conditioning.per_frame) == {"condition"}
    check_faithful(stages, folder, 4)


def test_wan22_ti2v_keeps_the_image_as_the_first_latent_frame(tmp_path):
    """Wan 2.2 TI2V's layout (a ``WanPipeline`` folder with ``expand_timesteps``): the image's latent
    is the clean first latent frame, its tokens at timestep 0; the same folder does text to video."""
    folder = wan_t2v(tmp_path / "tiny-wan2.2-ti2v", seed=2, expand_timesteps=True)
    stages = load_stages(folder)
    card = stages["vae"].card
    assert {"text_to_video", "image_to_video"} <= card.capabilities.modes
    conditioning = stages["vae"].encode_conditioning(ConditioningRequest({0: image()}, FRAMES, HEIGHT, WIDTH, SEED))
    assert conditioning.frames is not None and conditioning.frames.mask.tolist() == [1.0, 0.0, 0.0]
    assert not conditioning.per_frame and not conditioning.shared
    model = stages["denoisers"][0]
    start = conditioning.frames.apply(noise()[0])  # as the sampler starts: the given frame put in
    text, negative = stages["text"].encode_text([PROMPT, NEGATIVE])
    latents, state, sigmas = start, None, model.sigmas(STEPS)
    for index in range(STEPS):
        work = DenoiseWork(latents, tuple(sigmas[index : index + 2]), text, negative, GUIDANCE, 16.0, frames=conditioning.frames,
                           solver_state=state, conditioning=conditioning)
        [result] = stages["denoisers"][index % 2].step_with_state([over_the_wire(work)])
        latents, state = result.latents, copy.deepcopy(result.solver_state)
    assert torch.equal(latents[:, 0], conditioning.frames.latents[:, 0])
    frames = stages["vae"].decode_latents(latents)
    reference, expected = pipeline_outputs(folder, image(), STEPS, GUIDANCE)
    difference = (latents - reference).abs().max().item()
    levels = (frames.int() - expected.int()).abs().max().item()
    print(f"{folder.name}: latents max |diff| {difference:.3g}, frames {levels} levels")
    assert difference <= FAITHFUL and levels <= 1


def test_image_conditioned_items_of_two_jobs_batch_together(stages):
    model = stages["denoisers"][0]
    text, negative = stages["text"].encode_text([PROMPT, NEGATIVE])
    sigmas = model.sigmas(STEPS)
    items = []
    for seed in (3, 4):
        conditioning = stages["vae"].encode_conditioning(ConditioningRequest({0: image(seed)}, FRAMES, HEIGHT, WIDTH, SEED))
        items.append(DenoiseWork(noise(seed)[0], tuple(sigmas[:2]), text, negative, GUIDANCE, 16.0, conditioning=conditioning))
    assert model.batch_key(items[0]) == model.batch_key(items[1])
    alone = [model.step([item])[0] for item in items]
    together = model.step(items)
    assert max((a - b).abs().max().item() for a, b in zip(alone, together)) <= BATCH_TOLERANCE


def test_the_card_says_image_to_video_only(folder, stages, tmp_path):
    card = load_model(config(folder, name="wan-2.1-i2v"), parts=()).card
    assert card.capabilities.modes == frozenset({"image_to_video"})
    assert card.capabilities.conditioned_modes == frozenset({"image_to_video"})
    for mode in ("text_to_video", "image", "edit", "loop"):
        with pytest.raises(UnsupportedModeError, match=f"^model wan-2.1-i2v does not support {mode} "):
            card.require_mode(mode)
    with pytest.raises(UnsupportedModeError, match="^model wan-2.1-i2v does not support image_is_last_frame with image_to_video"):
        card.require_option("image_is_last_frame", "image_to_video")

    t2v = load_model(config(wan_t2v(tmp_path / "t2v"), name="wan-2.1-t2v"), parts=()).card
    assert "image_to_video" not in t2v.capabilities.modes
    with pytest.raises(UnsupportedModeError, match="^model wan-2.1-t2v does not support image_to_video "):
        t2v.require_mode("image_to_video")

    model = stages["denoisers"][0]
    text, negative = stages["text"].encode_text([PROMPT, NEGATIVE])
    with pytest.raises(ValueError, match="denoises only with an image's conditioning"):
        model.step([DenoiseWork(noise()[0], tuple(model.sigmas(2)[:2]), text, negative, GUIDANCE, 16.0)])
    with pytest.raises(ValueError, match="one image at the first frame"):
        stages["vae"].encode_conditioning(ConditioningRequest({FRAMES - 1: image()}, FRAMES, HEIGHT, WIDTH, SEED))
