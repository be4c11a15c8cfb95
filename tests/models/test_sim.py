"""The simulated accelerator: its cost model reproduces the published figures it is calibrated
on, batching amortises the fixed cost, memory bounds the batch, outputs are deterministic and of
the right shapes, and the model sleeps instead of computing. Fast: tiny time scales."""

from __future__ import annotations

import dataclasses
import time
import typing
from pathlib import Path

import pytest
import torch

from tessera.models import DenoiseWork, FrameCondition, PartNotLoadedError, SimModelConfig, frame_noise, load_model
from tessera.models.sim import cost
from tessera.models.sim.model import SimulatedOutOfMemoryError, SimVideoModel
from tessera.serving.config import TesseraConfig, load_document

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def model(**fields) -> SimVideoModel:
    return load_model(SimModelConfig(**{"time_scale": 1e-6, **fields}))  # type: ignore[return-value]


def work(m: SimVideoModel, width: int, height: int, frames: int, sigmas=(1.0, 0.9), guidance=5.0, prompt="a red circle",
         seed=0, sampler="euler") -> DenoiseWork:
    c, t, h, w = m.geometry.latent_shape(frames, height, width)
    text, negative = m.encode_text([prompt, ""])
    return DenoiseWork(frame_noise(seed, 0, t, (c, h, w)), tuple(sigmas), text, negative if guidance != 1.0 else None,
                       guidance, 16.0, sampler=sampler)


@pytest.mark.parametrize("variant", sorted(cost.VARIANTS))
def test_cost_model_reproduces_the_published_step_time_at_its_calibration_point(variant):
    cm = cost.VARIANTS[variant]
    cal = cm.calibration
    tokens = cm.geometry.tokens(cal.width, cal.height, cal.frames)
    # The published loops run the two branches of guidance as two forwards of batch 1.
    assert 2 * cm.forward_seconds([(tokens, 1)]) == pytest.approx(cal.seconds_per_step, rel=0.01)
    # The sim batches the branches into one forward: the fixed cost once, within 1% too.
    m = model(variant=variant)
    assert m.forward_seconds([work(m, cal.width, cal.height, cal.frames)]) == pytest.approx(cal.seconds_per_step, rel=0.01)


def test_the_published_figures_and_derived_constants():
    small, large = cost.VARIANTS["wan2.1-1.3b-480p"], cost.VARIANTS["wan2.1-14b-480p"]
    assert cost.FASTWAN_1_3B_480P.seconds_per_step == pytest.approx(95.21 / 50)
    assert cost.FASTWAN_14B_720P.seconds_per_step == pytest.approx(1746.5 / 50)
    assert cost.WAN_GEOMETRY.tokens(832, 480, 81) == 21 * 30 * 52 == 32760
    assert cost.WAN_GEOMETRY.tokens(848, 480, 81) == 21 * 30 * 53
    assert cost.WAN_GEOMETRY.tokens(1280, 720, 81) == 21 * 45 * 80
    assert small.dit.params == pytest.approx(1.42e9, rel=0.01) and large.dit.params == pytest.approx(14.3e9, rel=0.01)
    # Cross-checks against figures it was not fitted to: Wan's H100 end-to-end 14B 720P run (T5,
    # VAE and offloading included) takes a little longer than the DiT alone; LightX2V's whole 480P
    # pipeline on an H200 a little longer than 40 predicted DiT steps.
    dit_only = large.step_seconds(1280, 720, 81) * 50
    assert dit_only < cost.WAN_README_14B_720P_H100.seconds < 1.1 * dit_only
    dit_480p = large.step_seconds(832, 480, 81) * 40
    assert dit_480p < cost.LIGHTX2V_14B_480P_H200.seconds < 1.1 * dit_480p
    for cm in (small, large):
        assert 0.2 < cm.mfu < 0.5  # a plausible share of the H100's dense BF16 peak


def test_cost_grows_superlinearly_with_tokens_and_linearly_with_batch():
    cm = cost.VARIANTS["wan2.1-1.3b-480p"]
    n = cm.geometry.tokens(832, 480, 81)
    assert cm.copy_seconds(2 * n) > 2 * cm.copy_seconds(n) > 0
    quadratic = 2 * n * n * cm.dit.quadratic_flops_per_token_pair - cm.dit.text_flops_per_copy  # what doubling adds beyond 2x
    assert cm.copy_seconds(2 * n) - 2 * cm.copy_seconds(n) == pytest.approx(quadratic / cm.flops_per_s)
    one = cm.forward_seconds([(n, 2)])
    increments = [cm.forward_seconds([(n, 2)] * b) - cm.forward_seconds([(n, 2)] * (b - 1)) for b in range(2, 6)]
    assert increments == pytest.approx([one - cm.fixed_seconds] * 4)
    assert cm.forward_seconds([(n, 2)]) == pytest.approx(cm.forward_seconds([(n, 1), (n, 1)]))  # guidance doubles the batch
    m = model()
    assert m.forward_seconds([work(m, 256, 256, 33, guidance=1.0)]) < m.forward_seconds([work(m, 256, 256, 33)])


def test_batching_amortises_the_fixed_cost():
    """The source of batched throughput: 64 clips of 2 s at 256x256 (33 frames at 16 fps, 2304
    tokens) in one forward per step against one forward each. Prints the ratio it predicts."""
    m = model()
    item = work(m, 256, 256, 33)
    single = m.forward_seconds([item])
    batched = m.forward_seconds([item] * 64)
    assert batched < 64 * single
    ratio = 64 * single / batched
    assert ratio == pytest.approx((m.cost.fixed_seconds + 2 * m.cost.copy_seconds(2304)) / (m.cost.fixed_seconds / 64 + 2 * m.cost.copy_seconds(2304)))
    print(f"wan2.1-1.3b-480p, 64 x (2 s, 256x256): batched / unbatched throughput {ratio:.3f}x")
    assert 1.0 < ratio


def test_memory_bounds_the_batch_as_an_80_gb_gpu_would():
    for variant, expected in (("wan2.1-1.3b-480p", 21), ("wan2.1-14b-480p", 4)):
        m = model(variant=variant)
        item = work(m, 832, 480, 81)
        bound = m.max_batch_items(item)
        assert bound == expected
        usable = 80e9 * cost.USABLE_MEMORY_FRACTION
        assert m.cost.forward_bytes([m._shape(item)] * bound) <= usable < m.cost.forward_bytes([m._shape(item)] * (bound + 1))
    assert model(max_batch_items=3).max_batch_items(item) == 3
    too_small = model(variant="wan2.1-14b-480p", gpu_memory_gb=24)  # the 14B's weights alone do not fit
    item = work(too_small, 256, 256, 33)
    assert too_small.max_batch_items(item) == 0
    with pytest.raises(SimulatedOutOfMemoryError, match="out of memory"):
        too_small.step([item])


def test_outputs_are_deterministic_with_per_item_levels_and_guidance_in_one_call():
    m = model()
    a = work(m, 128, 64, 17, sigmas=(1.0, 0.7), guidance=5.0, prompt="a red circle", seed=1)
    b = work(m, 128, 64, 17, sigmas=(0.5, 0.3), guidance=3.0, prompt="a blue square", seed=2)
    assert m.batch_key(a) == m.batch_key(b)
    together = m.step([a, b])
    assert [tuple(x.shape) for x in together] == [tuple(a.latents.shape)] * 2
    assert all(torch.equal(x, y) for x, y in zip(together, m.step([a]) + m.step([b])))
    assert all(torch.equal(x, y) for x, y in zip(together, model().step([a, b])))  # a fresh replica agrees
    assert not torch.equal(together[0], together[1])
    # Rectified flow towards a target: any path to sigma 0 ends on it, the same for every sampler.
    one_go = m.step([work(m, 128, 64, 17, sigmas=(1.0, 0.4, 0.0))])[0]
    halfway = m.step([work(m, 128, 64, 17, sigmas=(1.0, 0.4))])[0]
    two_calls = m.step([dataclasses.replace(work(m, 128, 64, 17, sigmas=(0.4, 0.0)), latents=halfway)])[0]
    heun = m.step([work(m, 128, 64, 17, sigmas=(1.0, 0.5, 0.0), sampler="heun")])[0]
    assert torch.allclose(one_go, two_calls, atol=1e-6) and torch.allclose(one_go, heun, atol=1e-6)
    assert torch.allclose(one_go, m.step([work(m, 128, 64, 17, sigmas=(1.0, 0.0), seed=9)])[0], atol=1e-6)  # noise-independent
    # Given frames come back exactly.
    item = work(m, 128, 64, 17, sigmas=(1.0, 0.5))
    known = torch.randn_like(item.latents)
    mask = torch.zeros(item.latents.shape[1])
    mask[0] = 1
    item.frames = FrameCondition(known, mask)
    out = m.step([item])[0]
    assert torch.equal(out[:, 0], known[:, 0]) and not torch.equal(out[:, 1], known[:, 1])


def test_config_variants_are_the_cost_models():
    assert set(typing.get_args(SimModelConfig.model_fields["variant"].annotation)) == set(cost.VARIANTS)
    assert SimModelConfig().time_scale == 1.0 and SimModelConfig().gpu_memory_gb == 80


def test_text_vae_shapes_and_version():
    m = model()
    first, second = m.encode_text(["a red circle", "a blue square"])
    again, = m.encode_text(["a red circle"])
    assert first.tokens.shape == (4, 8) and first.mask.all() and torch.equal(first.tokens, again.tokens)
    assert not torch.equal(first.tokens, second.tokens)
    assert m.expand("a cat") == "a cat"
    latents = torch.randn(16, 6, 8, 12)
    frames = m.decode_latents(latents)
    assert frames.dtype == torch.uint8 and tuple(frames.shape) == (m.geometry.pixel_frames(6), 64, 96, 3)
    tail = m.decode_latents(latents, context_frames=2)
    assert torch.equal(tail, frames[m.geometry.time_grid.pixel_start(2):])
    assert torch.equal(m.decode_latents(latents), frames)
    encoded = m.encode_video(frames)
    assert tuple(encoded.shape) == (16, 6, 8, 12)
    assert torch.equal(m.decode_latents(encoded), frames)  # decode(encode(x)) == x for decoded (8x8-blocky) frames
    assert m.card.family == "sim" and m.card.version == model().card.version != model(variant="wan2.1-14b-480p").card.version
    assert m.card.version != model(time_scale=0.5).card.version
    assert m.card.geometry.native_window == 21 and m.card.limits.default_fps == 16 and m.card.geometry.size_multiple == 16
    vae_only = load_model(SimModelConfig(), parts={"vae"})
    with pytest.raises(PartNotLoadedError):
        vae_only.step([work(m, 64, 64, 5)])
    with pytest.raises(PartNotLoadedError):
        vae_only.encode_text(["x"])


def test_step_and_decode_sleep_for_the_cost_using_little_cpu():
    scale = 4.0  # two steps of one guided 2 s 256x256 clip: about 2 x 57 ms of H100 time -> 0.46 s
    m = model(time_scale=scale)
    item = work(m, 256, 256, 33, sigmas=(1.0, 0.8, 0.6))
    expected = 2 * m.forward_seconds([item]) * scale
    m.step([item])  # warm: the target is built once per text and shape
    wall, cpu = time.perf_counter(), time.process_time()
    m.step([item])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert wall >= expected > 0.2
    assert cpu < 0.25 * expected
    latents = torch.randn(16, 9, 32, 32)
    expected = m.cost.decode_seconds(33, 256, 256) * scale
    wall, cpu = time.perf_counter(), time.process_time()
    m.decode_latents(latents)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert wall >= expected > 0.01
    assert cpu < 0.1 + 0.25 * expected


def test_example_config_loads_as_the_sim_family():
    document = load_document(DEPLOY / "sim.example.yaml")
    document["storage"] = {"endpoint_url": "http://127.0.0.1:1", "bucket": "tessera-test"}
    config = TesseraConfig.model_validate(document)
    assert isinstance(config.model, SimModelConfig) and config.limits.max_duration_s == 300
    assert isinstance(load_model(config.model, parts=()), SimVideoModel)
