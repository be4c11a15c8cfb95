"""The HunyuanVideo 1.5 family (models/open/hunyuan.py) against diffusers' own
``HunyuanVideo15Pipeline``, on a tiny random pipeline built in the test (tests/models/tiny_open.py:
the component sizes of diffusers' own tests, a chat tokenizer built with ``tokenizers``, ByT5's
byte tokenizer) and served from the folder ``save_pretrained`` wrote (CPU, float32, nothing
downloaded).

Faithfulness tolerance: ``FAITHFUL`` = 1e-5 absolute on the latents and 1 uint8 level on the
frames; measured here: see the assertions' messages (0 on this machine: the stages run the
pipeline's components in its order with its arguments). The prompt quotes a word, so ByT5's glyph
branch (TextConditioning.extra["byt5"]) is not empty; the negative prompt has none (all masked).
A whole job through every stage in process (LocalTessera) gives the MP4 of the pipeline's frames.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from tessera.models import DenoiseWork, load_model, parse_model_config
from tessera.models.config import HunyuanVideo15ModelConfig
from tessera.models.interface import UnsupportedModeError
from tessera.serving.stages import SharedText
from tests.models.tiny_open import hunyuan15_t2v

torch.set_num_threads(2)

PROMPT, NEGATIVE = 'a red circle moving to the right with "hello" on it', "blue square"
HEIGHT = WIDTH = 16
FRAMES = 9  # 2k+1 for the tiny VAE's 2x temporal compression: 5 latent frames
STEPS, GUIDANCE = 3, 6.0
LATENT_SHAPE = (4, 5, HEIGHT // 4, WIDTH // 4)
FAITHFUL = 1e-5


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return hunyuan15_t2v(tmp_path_factory.mktemp("hunyuan") / "tiny-hunyuanvideo-1.5", guidance_scale=GUIDANCE)


def config(folder, **fields) -> HunyuanVideo15ModelConfig:
    return HunyuanVideo15ModelConfig(**{"path": folder, "device": "cpu", "dtype": "float32", **fields})


@pytest.fixture(scope="module")
def pipe(folder):
    from diffusers import HunyuanVideo15Pipeline

    pipe = HunyuanVideo15Pipeline.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def stages(folder):
    return {
        "text": load_model(config(folder), parts={"text"}),
        "denoisers": [load_model(config(folder), parts={"denoiser"}) for _ in range(2)],
        "vae": load_model(config(folder), parts={"vae"}),
    }


def noise(seed: int = 7) -> torch.Tensor:
    return torch.randn((1, *LATENT_SHAPE), generator=torch.Generator().manual_seed(seed))


def test_card_from_the_folder_configs_and_the_pipeline_defaults(folder):
    model = load_model(parse_model_config({"family": "hunyuanvideo15", "path": str(folder), "device": "cpu"}), parts=())
    card = model.card
    assert card.family == "hunyuanvideo15" and card.name == "tiny-hunyuanvideo-1.5"
    g = card.geometry
    assert (g.latent_channels, g.spatial_factor, g.temporal_factor, g.patch_size) == (4, 4, 2, (1, 1, 1))
    assert g.native_window == 61  # the pipeline's 121 frames at 2x temporal compression
    assert card.limits.default_guidance_scale == GUIDANCE and card.limits.default_steps == 50
    assert (card.limits.default_width, card.limits.default_height) == (20, 12)  # 16:9 near target_size 16, multiples of 4
    assert card.capabilities.modes == {"text_to_video", "image", "edit"}
    with pytest.raises(UnsupportedModeError, match="model tiny-hunyuanvideo-1.5 does not support loop"):
        card.require_mode("loop")


def test_text_carries_both_encoders_real_rows(stages):
    text, negative = stages["text"].encode_text([PROMPT, NEGATIVE])
    assert text.tokens.shape == (13, 16) and text.extra["byt5"].tokens.shape[1] == 32 and text.extra["byt5"].tokens.shape[0] > 0
    assert negative.extra["byt5"].tokens.shape == (0, 32)  # no quoted text: ByT5's branch is all padding
    key = SharedText.content_key(text, negative)
    changed = pickle.loads(pickle.dumps(text))
    changed.extra["byt5"].tokens[0, 0] += 1
    assert SharedText.content_key(changed, negative) != key, "the content key covers the second encoder"


def test_stages_reproduce_the_pipeline(stages, pipe):
    model = stages["denoisers"][0]
    sigmas = model.sigmas(STEPS)
    text, negative = stages["text"].encode_text([PROMPT, NEGATIVE])
    latents = model.add_noise(torch.zeros(LATENT_SHAPE), noise()[0], sigmas[0])
    assert torch.equal(latents, noise()[0])
    for index in range(STEPS):  # one step per call, alternating replicas, the work item over the wire
        work = DenoiseWork(latents=latents, sigmas=tuple(sigmas[index : index + 2]), text=text, negative_text=negative,
                           guidance_scale=GUIDANCE, fps=24.0)
        [result] = stages["denoisers"][index % 2].step_with_state([pickle.loads(pickle.dumps(work))])
        latents = result.latents
        assert result.solver_state is None  # flow-match Euler keeps no history
    frames = stages["vae"].decode_latents(latents)

    common = dict(prompt=PROMPT, negative_prompt=NEGATIVE, height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=STEPS)
    reference = pipe(**common, latents=noise(), output_type="latent").frames[0]
    video = pipe(**common, latents=noise(), output_type="np").frames[0]
    difference = (latents - reference).abs().max().item()
    assert difference <= FAITHFUL, f"latents differ by {difference}"
    expected = torch.from_numpy(np.round(video * 255).astype(np.uint8))
    assert frames.shape == (FRAMES, HEIGHT, WIDTH, 3) and frames.dtype == torch.uint8
    levels = (frames.int() - expected.int()).abs().max().item()
    assert levels <= 1, f"frames differ by {levels} levels"


def test_guidance_scale_of_the_request_replaces_the_guiders(stages, pipe):
    """The request's scale goes through the guider's own combination (the pipeline takes it from its guider)."""
    from diffusers.guiders import ClassifierFreeGuidance

    model = stages["denoisers"][0]
    text, negative = stages["text"].encode_text([PROMPT, NEGATIVE])
    sigmas = tuple(model.sigmas(2))
    other = model.step([DenoiseWork(noise()[0], sigmas, text, negative, 3.0, 24.0)])[0]
    original = pipe.guider
    try:
        pipe.guider = ClassifierFreeGuidance(guidance_scale=3.0)
        reference = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, height=HEIGHT, width=WIDTH, num_frames=FRAMES,
                         num_inference_steps=2, latents=noise(), output_type="latent").frames[0]
    finally:
        pipe.guider = original
    assert (other - reference).abs().max().item() <= FAITHFUL
    unguided = DenoiseWork(noise()[0], sigmas, text, negative, 1.0, 24.0)
    assert not model.guided(unguided) and model.batch_key(unguided) != model.batch_key(DenoiseWork(noise()[0], sigmas, text, negative, 3.0, 24.0))


def test_items_of_two_jobs_batch_together(stages):
    model = stages["denoisers"][0]
    sigmas = model.sigmas(3)
    text, negative = stages["text"].encode_text([PROMPT, NEGATIVE])
    plain, plain_negative = stages["text"].encode_text(["a blue square moving up", ""])
    items = [DenoiseWork(noise(1)[0], tuple(sigmas[0:2]), text, negative, 6.0, 24.0),
             DenoiseWork(noise(2)[0], tuple(sigmas[1:3]), plain, plain_negative, 4.0, 24.0)]
    together = model.step(items)
    alone = [model.step([item])[0] for item in items]
    for a, b in zip(together, alone, strict=True):
        assert (a - b).abs().max().item() <= FAITHFUL


def test_the_gateway_reads_the_card_without_weights(folder, monkeypatch):
    """A control-plane process builds the card and no module."""
    from tessera.models.open import common

    monkeypatch.setattr(common, "load_component", lambda *a, **k: pytest.fail("loaded a component"))
    model = load_model(config(folder, version="pinned"), parts=())
    assert model.card.version == "pinned" and model.pipe is None


def test_a_job_through_every_stage_gives_the_pipelines_mp4(s3_server, folder, pipe):
    """A whole job in process (LocalTessera: text on its own, the step batcher, decode tiles,
    H.264, S3): the MP4 decodes to the pipeline's frames from the job's noise, encoded the same
    way (tolerance 1 level; measured 0)."""

    from tessera.models.interface import frame_noise
    from tessera.serving.config import TesseraConfig
    from tessera.serving.jobs.spec import GenerationRequest
    from tessera.serving.local import render_once
    from tessera.serving.storage import ObjectStore
    from tessera.serving.media import decode_media
    from tessera.serving.video import encode_mp4
    from tests.conftest import storage_config_for

    settings = TesseraConfig(storage=storage_config_for(s3_server), model=config(folder, torch_threads=2))
    request = GenerationRequest(prompt=PROMPT, num_frames=FRAMES, width=WIDTH, height=HEIGHT, steps=STEPS, seed=3,
                                skip_prompt_expansion=True)

    record, _ = render_once(settings, request)
    assert record.model.startswith("hunyuanvideo15/tiny-hunyuanvideo-1.5@")
    got = decode_media(ObjectStore(settings.storage).get_bytes(record.video_key))
    noise = frame_noise(3, 0, LATENT_SHAPE[1], (LATENT_SHAPE[0], *LATENT_SHAPE[2:]))[None]
    video = pipe(prompt=PROMPT, negative_prompt="", height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=STEPS,
                 latents=noise, output_type="np").frames[0]
    expected = decode_media(encode_mp4(np.round(video * 255).astype(np.uint8), 24.0, settings.video))
    assert got.shape == expected.shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
