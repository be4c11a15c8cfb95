"""The Wan family (models/open/wan.py) against diffusers' own WanPipeline, on a tiny random
pipeline built in the test and served from the folder ``save_pretrained`` wrote (CPU, float32,
nothing downloaded).

Faithfulness tolerance: ``FAITHFUL`` = 1e-5 absolute on latents of magnitude ~1-5, and 1 uint8
level on frames; measured here: **0** (bit-exact). The stages run the pipeline's own components
in the same order with the same arguments (guidance's two branches as two forwards, one video
per call, the scheduler's own ``step`` with its history carried in ``solver_state``), so the
latents equal ``WanPipeline.__call__``'s exactly and the frames equal its ``np`` output scaled to
0..255 and rounded. The tolerance is there because CPU BLAS kernels may round differently for
differently aligned copies of the same weights (a ``copy.deepcopy`` of the model: ~2e-6).
Batching several work items in one forward (different jobs at different steps) is equal up to
batching round-off: ``BATCH_TOLERANCE`` = 1e-5.
"""

from __future__ import annotations

import copy
import json
import pickle
import shutil

import numpy as np
import pytest
import torch

from tessera.models import DenoiseWork, load_model, parse_model_config
from tessera.models.config import WanModelConfig
from tessera.models.interface import PartNotLoadedError, UnsupportedModeError
from tessera.models.open.common import VERSION_FILE, DiffusersFolder, weights_version
from tests.models.tiny_open import wan_t2v

torch.set_num_threads(2)

PROMPT, NEGATIVE = "a red circle moving to the right", "blue square"
HEIGHT = WIDTH = 32
FRAMES = 9  # 4k+1: 3 latent frames
STEPS, GUIDANCE, TEXT_LENGTH = 3, 5.0, 16
LATENT_SHAPE = (16, 3, HEIGHT // 8, WIDTH // 8)
FAITHFUL = 1e-5
BATCH_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return wan_t2v(tmp_path_factory.mktemp("wan") / "tiny-wan2.1")


def config(folder, **fields) -> WanModelConfig:
    return WanModelConfig(**{"path": folder, "device": "cpu", "dtype": "float32", "max_sequence_length": TEXT_LENGTH, **fields})


@pytest.fixture(scope="module")
def pipe(folder):
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def stages(folder):
    """One model per stage, as the deployments load them; two Denoiser replicas."""
    return {
        "text": load_model(config(folder), parts={"text"}),
        "denoisers": [load_model(config(folder), parts={"denoiser"}) for _ in range(2)],
        "vae": load_model(config(folder), parts={"vae"}),
    }


def noise(seed: int = 7) -> torch.Tensor:
    return torch.randn((1, *LATENT_SHAPE), generator=torch.Generator().manual_seed(seed))


def over_the_wire(work: DenoiseWork) -> DenoiseWork:
    """What a Denoiser replica receives: the work item serialised (as Ray does) and rebuilt."""
    return pickle.loads(pickle.dumps(work))


def run_stages(stages, latents: torch.Tensor, sigmas: list[float], guidance: float = GUIDANCE) -> torch.Tensor:
    """The sampling loop's way: one step per call, alternating replicas, the solver state carried
    from each call's result into the next work item."""
    text, negative = stages["text"].encode_text([PROMPT, NEGATIVE])
    state = None
    for index in range(len(sigmas) - 1):
        work = DenoiseWork(latents=latents, sigmas=tuple(sigmas[index : index + 2]), text=text, negative_text=negative,
                           guidance_scale=guidance, fps=16.0, solver_state=state)
        [result] = stages["denoisers"][index % 2].step_with_state([over_the_wire(work)])
        latents, state = result.latents, copy.deepcopy(result.solver_state)
    return latents


def test_stages_reproduce_the_pipeline_bit_exactly(stages, pipe):
    model = stages["denoisers"][0]
    sigmas = model.sigmas(STEPS)
    x0 = model.add_noise(torch.zeros(LATENT_SHAPE), noise()[0], sigmas[0])
    assert torch.equal(x0, noise()[0])  # the schedule's first level is pure noise, as the pipeline starts
    latents = run_stages(stages, x0, sigmas)
    frames = stages["vae"].decode_latents(latents)

    common = dict(prompt=PROMPT, negative_prompt=NEGATIVE, height=HEIGHT, width=WIDTH, num_frames=FRAMES,
                  num_inference_steps=STEPS, guidance_scale=GUIDANCE, max_sequence_length=TEXT_LENGTH)
    reference = pipe(**common, latents=noise(), output_type="latent").frames[0]
    video = pipe(**common, latents=noise(), output_type="np").frames[0]  # (T, H, W, 3) float in [0, 1]

    assert (latents - reference).abs().max().item() <= FAITHFUL
    assert frames.shape == (FRAMES, HEIGHT, WIDTH, 3) and frames.dtype == torch.uint8
    expected = torch.from_numpy(np.round(video * 255).astype(np.uint8))
    assert (frames.int() - expected.int()).abs().max().item() <= 1


def test_wan22_two_experts_reproduce_the_pipeline(tmp_path):
    """Wan 2.2 A14B layout: ``transformer`` above the boundary timestep (0.8 * 1000), ``transformer_2``
    below it with its own guidance; 4 steps cross the boundary (timesteps 999, 900 | 750, 500)."""
    from diffusers import WanPipeline

    guidance_2 = 2.0

    folder = wan_t2v(tmp_path / "tiny-wan2.2", seed=1, two_experts=True)
    pipe = WanPipeline.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=4,
                     guidance_scale=GUIDANCE, guidance_scale_2=guidance_2, max_sequence_length=TEXT_LENGTH, latents=noise(),
                     output_type="latent").frames[0]
    model, other = (load_model(config(folder, guidance_scale_2=guidance_2), parts={"text", "denoiser"}) for _ in range(2))
    sigmas = model.sigmas(4)
    latents = run_stages({"text": model, "denoisers": [model, other]}, noise()[0], sigmas)
    assert (latents - reference).abs().max().item() <= FAITHFUL
    text, negative = model.encode_text([PROMPT, NEGATIVE])
    keys = [model.batch_key(DenoiseWork(noise()[0], tuple(sigmas[i : i + 2]), text, negative, GUIDANCE, 16.0)) for i in range(4)]
    assert [key[-1] for key in keys] == [0, 0, 1, 1]  # the expert is part of the batch key


def test_solver_state_carries_the_multistep_history(stages):
    """Without the state every call restarts UniPC's history: a different (first-order) trajectory."""
    model = stages["denoisers"][0]
    sigmas = model.sigmas(STEPS)
    text, negative = stages["text"].encode_text([PROMPT, NEGATIVE])
    with_state = run_stages(stages, noise()[0], sigmas)
    latents = noise()[0]
    for index in range(STEPS):
        latents = model.step([DenoiseWork(latents, tuple(sigmas[index : index + 2]), text, negative, GUIDANCE, 16.0)])[0]
    assert (latents - with_state).abs().max().item() > 1e-3
    # One call through every level keeps the history inside the call: the same as carrying it.
    whole = model.step([DenoiseWork(noise()[0], tuple(sigmas), text, negative, GUIDANCE, 16.0)])[0]
    assert torch.equal(whole, with_state)


def test_items_at_different_steps_batch_together(stages):
    """Two jobs in one forward (cross-request batching), one at its first step and one at its
    second, each with its own guidance: each equals its result alone."""
    model = stages["denoisers"][0]
    sigmas = model.sigmas(4)
    text, negative = stages["text"].encode_text([PROMPT, NEGATIVE])
    [first] = model.step_with_state([DenoiseWork(noise(1)[0], tuple(sigmas[0:2]), text, negative, 4.0, 16.0)])
    items = [
        DenoiseWork(noise(2)[0], tuple(sigmas[0:2]), text, negative, 6.0, 16.0),
        DenoiseWork(first.latents, tuple(sigmas[1:3]), text, negative, 4.0, 16.0, solver_state=first.solver_state),
    ]
    assert model.batch_key(items[0]) == model.batch_key(items[1])
    together = model.step_with_state(items)
    alone = [model.step_with_state([item])[0] for item in items]
    for a, b in zip(together, alone, strict=True):
        assert (a.latents - b.latents).abs().max().item() <= BATCH_TOLERANCE
        assert a.solver_state["index"] == b.solver_state["index"]


def test_batched_guidance_is_equal_up_to_round_off(stages, folder):
    """``batch_guidance``: both branches in one forward instead of the pipeline's two."""
    batched = load_model(config(folder, batch_guidance=True), parts={"denoiser"})
    text, negative = stages["text"].encode_text([PROMPT, NEGATIVE])
    work = DenoiseWork(noise()[0], tuple(batched.sigmas(STEPS)), text, negative, GUIDANCE, 16.0)
    difference = (batched.step([work])[0] - stages["denoisers"][0].step([work])[0]).abs().max().item()
    assert difference <= BATCH_TOLERANCE


def test_edit_reproduces_the_video_to_video_pipeline(stages, folder, pipe, monkeypatch):
    """SDEdit: encode_video + add_noise at a level of the schedule + the steps below it, against
    WanVideoToVideoPipeline with the same components (strength 0.5 of 4 steps starts at level 2)."""
    from diffusers import WanVideoToVideoPipeline
    from diffusers.pipelines.wan import pipeline_wan, pipeline_wan_video2video

    # diffusers 0.42.1: the video-to-video module's prompt_clean calls ftfy without checking it is
    # installed (the text-to-video one checks); use the text-to-video one, which the stages use.
    monkeypatch.setattr(pipeline_wan_video2video, "prompt_clean", pipeline_wan.prompt_clean)
    from diffusers.utils.torch_utils import randn_tensor
    from PIL import Image

    v2v = WanVideoToVideoPipeline(**{k: getattr(pipe, k) for k in ("tokenizer", "text_encoder", "vae", "scheduler", "transformer")})
    v2v.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(3)
    clip = torch.from_numpy(rng.integers(0, 256, (FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8))
    steps, strength = 4, 0.5
    reference = v2v(video=[Image.fromarray(f) for f in clip.numpy()], prompt=PROMPT, negative_prompt=NEGATIVE, height=HEIGHT,
                    width=WIDTH, num_inference_steps=steps, strength=strength, guidance_scale=GUIDANCE,
                    generator=torch.Generator().manual_seed(5), max_sequence_length=TEXT_LENGTH, output_type="latent").frames[0]

    model = stages["denoisers"][0]
    sigmas = model.sigmas(steps)[2:]  # what edit_schedule(sigmas, strength=sigmas[2]) keeps
    clean = stages["vae"].encode_video(clip)
    drawn = randn_tensor((1, *LATENT_SHAPE), generator=torch.Generator().manual_seed(5), dtype=torch.float32)[0]
    latents = run_stages(stages, model.add_noise(clean, drawn, sigmas[0]), sigmas)
    assert (latents - reference).abs().max().item() <= FAITHFUL


def test_edit_strength_off_the_schedule(stages):
    """Tessera's SDEdit noises to exactly its strength, then joins the schedule below it."""
    model = stages["denoisers"][0]
    text, negative = stages["text"].encode_text([PROMPT, NEGATIVE])
    sigmas = [0.7] + [s for s in model.sigmas(4) if s < 0.7]
    latents, state = noise()[0], None
    for index in range(len(sigmas) - 1):
        [result] = model.step_with_state([DenoiseWork(latents, tuple(sigmas[index : index + 2]), text, negative, GUIDANCE, 16.0,
                                                      solver_state=state)])
        latents, state = result.latents, result.solver_state
    whole = model.step([DenoiseWork(noise()[0], tuple(sigmas), text, negative, GUIDANCE, 16.0)])[0]
    assert torch.equal(latents, whole) and torch.isfinite(latents).all()


def test_time_tiled_decode(stages):
    """A decode tile with causal context reaching the start equals the untiled decode exactly;
    with less context it is an approximation (Wan's decoder cache spans the whole video)."""
    vae = stages["vae"]
    latents = torch.randn(16, 5, 4, 4, generator=torch.Generator().manual_seed(0))
    whole = vae.decode_latents(latents)
    assert whole.shape == (17, HEIGHT, WIDTH, 3)
    tile = vae.decode_latents(latents, context_frames=3)  # latent frames 3..4 are pixel frames 9..16
    assert torch.equal(tile, whole[9:])
    short = vae.decode_latents(latents[:, 2:], context_frames=1)  # one frame of context: approximate
    assert short.shape == tile.shape
    assert vae.card.geometry.decode_context == 32  # the default reaches the start of videos up to 32 latent frames


def test_card_comes_from_the_configs_alone(folder, tmp_path):
    """The control plane's load (parts=()) reads JSON only: a copy of the folder without any
    weight file (version pinned) gives the same card, schedule and noising."""
    configs = tmp_path / "configs-only"
    shutil.copytree(folder, configs, ignore=lambda _, names: [n for n in names if n.endswith(".safetensors")])
    light = load_model(config(configs, version="pinned", name="wan-tiny"), parts=())
    full = load_model(config(folder), parts=())
    assert light.card.geometry == full.card.geometry and light.card.limits == full.card.limits
    assert (light.card.name, light.card.version) == ("wan-tiny", "pinned")
    geometry, limits = light.card.geometry, light.card.limits
    assert (geometry.temporal_factor, geometry.spatial_factor, geometry.size_multiple, geometry.native_window) == (4, 8, 16, 21)
    assert (limits.default_steps, limits.default_guidance_scale, limits.default_width, limits.default_height) == (50, 5.0, 832, 480)
    assert light.sigmas(4) == full.sigmas(4) and light.sigmas(4)[-1] == 0.0
    with pytest.raises(PartNotLoadedError):
        light.encode_text(["a red ball"])
    if not torch.cuda.is_available():  # a CPU-only Gateway reads the card of a model configured for CUDA
        on_cuda = config(configs, version="pinned", name="wan-tiny", device="cuda")
        assert load_model(on_cuda, parts=()).card == light.card
        with pytest.raises(ValueError, match="no CUDA device"):
            load_model(on_cuda, parts={"vae"})


def test_weights_version_is_hashed_once_and_cached(folder, monkeypatch, tmp_path):
    copied = tmp_path / "wan"
    shutil.copytree(folder, copied)
    monkeypatch.setenv("TESSERA_CACHE_DIR", str(tmp_path / "cache"))
    first = weights_version(DiffusersFolder(copied))
    assert json.loads((copied / VERSION_FILE).read_text())["sha256"].startswith(first)
    opened = []
    real_open = type(copied).open
    monkeypatch.setattr(type(copied), "open", lambda self, *a, **k: opened.append(self) or real_open(self, *a, **k))
    assert weights_version(DiffusersFolder(copied)) == first
    assert not [p for p in opened if p.suffix == ".safetensors"]  # read from the cache, nothing hashed
    with (copied / "vae" / "diffusion_pytorch_model.safetensors").open("ab") as handle:
        handle.write(b"\0")
    assert weights_version(DiffusersFolder(copied)) != first


def test_config_is_a_strict_union_member(folder):
    parsed = parse_model_config({"family": "wan", "path": str(folder), "dtype": "bfloat16", "text_encoder_device": "cpu"})
    assert isinstance(parsed, WanModelConfig) and parsed.vae_dtype == "float32"
    with pytest.raises(ValueError, match="variant"):
        parse_model_config({"family": "wan", "path": str(folder), "variant": "tiny"})
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_model(WanModelConfig(path=folder / "vae"), parts=())


def test_unsupported_modes_are_refused_with_the_models_name(folder, stages):
    card = load_model(config(folder, name="wan-2.1-t2v"), parts=()).card
    for mode in ("text_to_video", "image", "edit"):
        card.require_mode(mode)
    for mode in ("loop", "image_to_video", "extend", "transition"):
        with pytest.raises(UnsupportedModeError, match=f"^model wan-2.1-t2v does not support {mode} "):
            card.require_mode(mode)
    from tessera.models import FrameCondition

    model = stages["denoisers"][0]
    text, negative = stages["text"].encode_text([PROMPT, NEGATIVE])
    given = FrameCondition(torch.zeros(LATENT_SHAPE), torch.tensor([1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="cannot keep given frames"):
        model.step([DenoiseWork(noise()[0], tuple(model.sigmas(2)[:2]), text, negative, GUIDANCE, 16.0, frames=given)])
    with pytest.raises(ValueError, match="not on any UniPCMultistepScheduler schedule"):
        model.step([DenoiseWork(noise()[0], (0.9, 0.85, 0.8), text, negative, GUIDANCE, 16.0)])
