"""The planner's decode tiles, decoded separately and concatenated, equal the untiled decode.

Uses the tiny native model at random weights (the VAE's causal structure, not its training,
is what makes tiling exact) with the tiling the app config gives by default.
"""

from __future__ import annotations

import pytest
import torch

from tessera.models import NativeModelConfig, load_model
from tessera.serving.config import TilingConfig
from tessera.serving.jobs.planner import plan_render


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    weights = tmp_path_factory.mktemp("random-weights")
    return load_model(NativeModelConfig(weights_dir=weights, allow_random_weights=True, torch_threads=2), parts={"vae"})


@pytest.mark.parametrize("num_frames", [45, 77, 100])
def test_planned_tiles_decode_like_the_whole_clip(model, num_frames):
    geometry = model.geometry
    options = TilingConfig(decode_tile_frames=3).options(geometry)  # small tiles: several seams
    plan = plan_render(num_frames, 48, 64, geometry, options)
    assert len(plan.decode_tiles) >= 3
    generator = torch.Generator().manual_seed(num_frames)
    latents = torch.randn(plan.latent_shape, generator=generator)  # (C, T, H, W)

    whole = model.decode_latents(latents)[:num_frames]  # (T, H, W, 3) uint8
    pieces = [
        model.decode_latents(latents[:, tile.input_start : tile.stop], context_frames=tile.context)[: tile.num_frames]
        for tile in plan.decode_tiles
    ]
    tiled = torch.cat(pieces)
    assert tiled.shape == whole.shape == (num_frames, 48, 64, 3)
    # Exact up to float rounding: at most one uint8 level anywhere.
    assert (tiled.int() - whole.int()).abs().max() <= 1
