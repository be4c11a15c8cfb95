"""A multistep solver's history through the serving path: the Denoiser's step batcher carries it
from step to step and returns it, and the sampling loop slices, rolls and fuses it across time
windows exactly as it does the latents.

The real Wan family on a tiny random pipeline (tests/models/tiny_open.py), UniPC as released
folders have it; reference: the family's own stage methods with the state carried by hand, which
tests/models/test_open_wan.py shows equal to ``WanPipeline.__call__``."""

from __future__ import annotations

import asyncio

import pytest
import torch

from tessera.models import load_model
from tessera.models.config import WanModelConfig
from tessera.models.interface import DenoiseWork
from tessera.serving.config import StepBatchingConfig
from tessera.serving.denoiser import DenoiserEngine
from tessera.serving.jobs.planner import Window
from tessera.serving.jobs.sampling import combine_states, fuse_states, fuse_windows, map_frames
from tessera.serving.stages import SharedText, StepWork
from tests.models.tiny_open import wan_t2v

torch.set_num_threads(2)
PROMPT, NEGATIVE = "a red circle moving to the right", "blue square"
STEPS, GUIDANCE = 4, 5.0
LATENT_SHAPE = (16, 3, 4, 4)  # (C, T, H, W): 32x32, 9 frames
EXACT = 1e-5
"""Through the batcher one window is one forward per step, the same calls as by hand (measured 0)."""


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    folder = wan_t2v(tmp_path_factory.mktemp("wan") / "tiny-wan2.1")
    config = WanModelConfig(path=folder, device="cpu", dtype="float32", max_sequence_length=16)
    text, negative = load_model(config, parts={"text"}).encode_text([PROMPT, NEGATIVE])
    return config, SharedText(SharedText.content_key(text, negative), (text, negative))


def by_hand(model, latents: torch.Tensor, sigmas, shared: SharedText) -> torch.Tensor:
    text, negative = shared.ref
    state = None
    for index in range(len(sigmas) - 1):
        [result] = model.step_with_state([DenoiseWork(latents, tuple(sigmas[index : index + 2]), text, negative, GUIDANCE,
                                                      16.0, solver_state=state)])
        latents, state = result.latents, result.solver_state
    return latents


def test_the_batcher_carries_the_solver_history_within_and_across_calls(family):
    config, shared = family
    engine = DenoiserEngine(config, 2, StepBatchingConfig(max_batch_items=4, max_wait_s=0.0))
    sigmas = tuple(engine.model.sigmas(STEPS))
    noise = torch.randn(LATENT_SHAPE, generator=torch.Generator().manual_seed(3))
    expected = by_hand(engine.model, noise, sigmas, shared)

    def work(latents, levels, state=None) -> StepWork:
        return StepWork(latents=latents, sigmas=levels, text=shared, guidance_scale=GUIDANCE, fps=16.0, solver_state=state)

    [whole] = asyncio.run(engine.advance_batch([work(noise, sigmas)]))
    assert (whole.latents - expected).abs().max() <= EXACT
    assert whole.solver_state is not None, "UniPC keeps a history"
    [first] = asyncio.run(engine.advance_batch([work(noise, sigmas[:3])]))
    [second] = asyncio.run(engine.advance_batch([work(first.latents, sigmas[2:], first.solver_state)]))
    assert (second.latents - expected).abs().max() <= EXACT
    [forgetful] = asyncio.run(engine.advance_batch([work(first.latents, sigmas[2:])]))
    assert (forgetful.latents - expected).abs().max() > 1e-3, "without the history the solver takes another path"


WINDOWS = [Window(0, 0, 4, (1.0, 1.0, 0.5, 0.25)), Window(1, 2, 6, (0.5, 0.75, 1.0, 1.0))]


def window_state(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"index": 3, "steps": 10, "scheduler": {
        "model_outputs": [torch.randn(1, 2, 4, 2, 2, generator=g), torch.randn(1, 2, 4, 2, 2, generator=g)],
        "last_sample": torch.randn(1, 2, 4, 2, 2, generator=g), "lower_order_nums": 2, "timestep_list": [torch.tensor(5.0)],
    }}


def test_window_states_fuse_like_latents_and_keep_their_counters():
    states = [window_state(1), window_state(2)]
    fused = fuse_states(WINDOWS, states, 6)
    assert fused["index"] == 3 and fused["scheduler"]["lower_order_nums"] == 2
    for position in range(2):
        expected = fuse_windows(WINDOWS, [s["scheduler"]["model_outputs"][position] for s in states], 6)
        assert torch.equal(fused["scheduler"]["model_outputs"][position], expected)
    assert fused["scheduler"]["last_sample"].shape == (1, 2, 6, 2, 2)
    assert torch.equal(fused["scheduler"]["timestep_list"][0], torch.tensor(5.0)), "small tensors are not frames"
    # Frames only one window covers come through unchanged.
    assert torch.equal(fused["scheduler"]["last_sample"][..., :2, :, :], states[0]["scheduler"]["last_sample"][..., :2, :, :])


def test_a_loop_rotation_is_undone_and_a_missing_state_drops_the_history():
    state = window_state(4)
    rolled = map_frames(state, lambda t: torch.roll(t, shifts=-1, dims=-3))
    back = combine_states([Window(0, 0, 4, (1.0,) * 4)], [rolled], 4, roll=1)
    assert torch.equal(back["scheduler"]["last_sample"], state["scheduler"]["last_sample"])
    assert combine_states(WINDOWS, [window_state(1), None], 6, roll=0) is None
