"""The runner's frame conditioning through the real engines (in process, random weights):
given latent frames come out bit-exact through multi-window co-denoising and fusion, the
others are generated, and SDEdit starts from the noised input.

The DiT's zero-initialised output layers are re-drawn at random so the velocity is not zero
(an untrained adaLN-Zero DiT would leave every latent where it started, and prove nothing)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from tessera.models import NativeModelConfig, load_model
from tessera.models.shapes.world import ClipSpec, render
from tessera.serving.config import ExpansionConfig, LimitsConfig
from tessera.serving.decoder import DecoderEngine
from tessera.serving.denoiser import DenoiserEngine
from tessera.serving.jobs.inputs import InputCollector
from tessera.serving.jobs.modes import plan_job
from tessera.serving.jobs.planner import TilingOptions
from tessera.serving.jobs.records import JobRecord
from tessera.serving.jobs.sampling import Sampler, SamplingHooks, SamplingSettings
from tessera.serving.jobs.spec import GenerationRequest, MediaInput
from tessera.serving.jobs.validation import resolve_request
from tessera.serving.prompt_expander import PromptExpanderEngine
from tessera.serving.stages import EncodeRequest, LocalStages, StepWork
from tessera.serving.video import VideoEncodingConfig, encode_mp4

OPTIONS = TilingOptions(window=4, min_overlap=2, sync_every=1, decode_tile=4, decode_context=4, fit_windows=False)
"""Short windows: a 2 s clip spans several, so fusion runs across the given frames."""


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    torch.manual_seed(0)
    config = NativeModelConfig(weights_dir=tmp_path_factory.mktemp("random-weights"), allow_random_weights=True, torch_threads=2)
    denoiser = DenoiserEngine(config, threads=2)
    for name, parameter in denoiser.model.dit.named_parameters():
        if parameter.abs().sum() == 0 and parameter.ndim == 2:
            torch.nn.init.normal_(parameter, std=0.02)
    stages = LocalStages(PromptExpanderEngine(config, ExpansionConfig()), denoiser, DecoderEngine(config, VideoEncodingConfig()))
    return config, stages


def clip(frames: int = 17):
    return render(ClipSpec("red", "circle", "large", "medium", "right", "black", 64, 64, 8.0, frames, (0.3, 0.5)))


def denoise(engines, store, tenant: str, max_windows_per_call: int = 4, options: TilingOptions = OPTIONS,
            **fields) -> tuple[torch.Tensor, object, JobRecord, Sampler]:
    config, stages = engines
    model = load_model(config, parts=())
    request = GenerationRequest(prompt="a red circle moving right", width=64, height=64, fps=8, steps=3, seed=1, **fields)
    collector = InputCollector(store, LimitsConfig())
    collected = collector.collect(tenant, request)
    spec = resolve_request(request, model.card, LimitsConfig(), {n: c.info for n, c in collected.items()})
    record = JobRecord(job_id="job", tenant=tenant, request=request.without_data(), spec=spec, created_at=0.0, updated_at=0.0)
    collector.save(tenant, "job", collected)
    plan = plan_job(spec, model.geometry, options)
    sampler = Sampler(model, stages, store, SamplingSettings(max_windows_per_call=max_windows_per_call))

    async def run():
        conditioning = await stages.condition(spec.prompt, "", False)

        async def nothing(*_):
            return None

        hooks = SamplingHooks(on_step=lambda step: None, check=nothing, after_group=nothing)
        return await sampler.denoise(record, plan, [stages.share(conditioning)], hooks)

    return asyncio.run(run()), plan, record, sampler


def encode(engines, **fields) -> torch.Tensor:
    return asyncio.run(engines[1].encode(EncodeRequest(64, 64, **fields)))


def test_batched_windows_match_one_call_per_window(engines, object_store, key_prefix):
    batched, plan, _, _ = denoise(engines, object_store, key_prefix, duration_s=4)
    single, _, _, _ = denoise(engines, object_store, key_prefix, max_windows_per_call=1, duration_s=4)
    assert len(plan.render.windows) >= 4, "several windows in batches of up to 4 and of 1"
    assert torch.allclose(batched, single, atol=1e-4), (batched - single).abs().max()


def test_fitted_windows_run_batched_and_one_by_one_alike(engines, object_store, key_prefix):
    """5 s at 8 fps is 11 latent frames: two windows of 7 (not 8) that still share 3 frames."""
    fitted = TilingOptions(window=8, min_overlap=2, sync_every=1, decode_tile=8, decode_context=4, fit_windows=True)
    batched, plan, _, _ = denoise(engines, object_store, key_prefix, options=fitted, duration_s=5)
    single, _, _, _ = denoise(engines, object_store, key_prefix, max_windows_per_call=1, options=fitted, duration_s=5)
    assert [(w.start, w.stop) for w in plan.render.windows] == [(0, 7), (4, 11)]
    assert batched.shape[1] == 11 and torch.isfinite(batched).all()
    assert torch.allclose(batched, single, atol=1e-4), (batched - single).abs().max()


def test_extended_frames_stay_exact_through_fusion(engines, object_store, key_prefix):
    source = clip(17)
    latents, plan, _, _ = denoise(engines, object_store, key_prefix.rstrip("/"),
                                  extend_video=MediaInput(data=encode_mp4(source, 8, VideoEncodingConfig())), extend_seconds=2)
    assert len(plan.render.windows) >= 3
    [given] = plan.given
    expected = encode(engines, media=encode_mp4(source, 8, VideoEncodingConfig()), frame_indices=given.frame_indices)
    assert torch.equal(latents[:, : given.latent_stop], expected[:, : given.latent_count]), "given frames are bit-exact"
    noise_free = latents[:, given.latent_stop :]
    assert noise_free.abs().sum() > 0 and not torch.equal(noise_free, expected[:, : noise_free.shape[1]])


def test_transition_keeps_both_ends(engines, object_store, key_prefix):
    first, second = clip(17), clip(9)[::-1].copy()
    latents, plan, _, _ = denoise(
        engines, object_store, key_prefix.rstrip("/"), transition_seconds=1,
        transition_from=MediaInput(data=encode_mp4(first, 8, VideoEncodingConfig())),
        transition_to=MediaInput(data=encode_mp4(second, 8, VideoEncodingConfig())),
    )
    head, tail = plan.given
    assert tail.group_aligned and tail.latent_stop == plan.render.latent_frames
    expected_tail = encode(engines, media=encode_mp4(second, 8, VideoEncodingConfig()), frame_indices=tail.frame_indices,
                           group_aligned=True)
    assert torch.equal(latents[:, tail.latent_start :], expected_tail)
    expected_head = encode(engines, media=encode_mp4(first, 8, VideoEncodingConfig()), frame_indices=head.frame_indices)
    assert torch.equal(latents[:, : head.latent_stop], expected_head)


def test_loop_is_denoised_as_a_circle(engines, object_store, key_prefix):
    latents, plan, _, _ = denoise(engines, object_store, key_prefix.rstrip("/"), loop=True, duration_s=3)
    assert latents.shape == (8, 6, 8, 8) and plan.loop_context and torch.isfinite(latents).all()
    # Rolling the circle is the only difference to plain text to video at the same seed.
    plain, _, _, _ = denoise(engines, object_store, key_prefix.rstrip("/"), num_frames=21)
    assert not torch.equal(latents, plain[:, :6])


def test_edit_at_low_strength_stays_near_the_input_latents(engines, object_store, key_prefix):
    source = encode_mp4(clip(17), 8, VideoEncodingConfig())
    clean = encode(engines, media=source)
    distances = {}
    for strength in (0.3, 1.0):
        latents, plan, _, _ = denoise(engines, object_store, key_prefix.rstrip("/"), edit_video=MediaInput(data=source),
                                      strength=strength)
        assert plan.start_sigma == strength
        distances[strength] = (latents - clean).pow(2).mean().item()
    assert distances[0.3] < distances[1.0]


def test_single_window_progress_is_per_step_or_coalesced(engines):
    """``report_every_s=0`` streams every step; a long interval only the last, which carries the latents:
    either way the latents of the model's own sampler run over all the noise levels at once."""
    config, stages = engines
    conditioning = asyncio.run(stages.condition("a red circle moving right", "", False))
    work = StepWork(latents=torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0)),
                    sigmas=tuple(load_model(config, parts=()).sigmas(5)), text=stages.share(conditioning),
                    guidance_scale=4.0, fps=8.0)

    async def updates(report_every_s: float):
        return [update async for update in stages.advance(work, report_every_s)]

    every = asyncio.run(updates(0.0))
    coalesced = asyncio.run(updates(3600.0))
    assert [u.steps_done for u in every] == [1, 2, 3, 4, 5]
    assert all(u.latents is None for u in every[:-1])
    assert [u.steps_done for u in coalesced] == [5]
    expected = stages._denoiser.model.step([work.resolve(conditioning.text, conditioning.negative_text)])[0]
    assert not torch.allclose(expected, work.latents, atol=1e-2), "the steps must move the latents"
    for updates_seen in (every, coalesced):
        assert torch.allclose(updates_seen[-1].latents, expected, atol=1e-5)
    with pytest.raises(ValueError, match="report_every_s"):
        asyncio.run(updates(-1.0))
