"""NativeVideoModel through the stage interface (random weights; the trained ones in test_checkpoint)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tessera.models import DenoiseWork, FrameCondition, NativeModelConfig, PartNotLoadedError, frame_noise, load_model
from tessera.models.native.generate import generate_video


@pytest.fixture(scope="module")
def random_dir(tmp_path_factory) -> Path:
    # An empty weights folder: the tiny variant initialised at random, independent of shipped weights.
    return tmp_path_factory.mktemp("no-weights")


@pytest.fixture(scope="module")
def model(random_dir):
    torch.manual_seed(0)
    return load_model(NativeModelConfig(weights_dir=random_dir, allow_random_weights=True, torch_threads=2))


def test_missing_weights_is_an_error_unless_random_is_allowed(random_dir):
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_model(NativeModelConfig(weights_dir=random_dir), parts={"vae"})
    loaded = load_model(NativeModelConfig(weights_dir=random_dir, allow_random_weights=True), parts={"vae"})
    assert loaded.card.version.startswith("random-")


def test_only_requested_parts_are_loaded(random_dir):
    vae_only = load_model(NativeModelConfig(weights_dir=random_dir, allow_random_weights=True), parts={"vae"})
    assert vae_only.dit is None and vae_only.text_encoder is None and vae_only.vae is not None
    with pytest.raises(PartNotLoadedError):
        vae_only.encode_text(["a red ball"])
    with pytest.raises(PartNotLoadedError):
        vae_only.step([])
    assert vae_only.sigmas(4)[0] == 1.0  # needs no weights
    assert vae_only.expand("red ball going left").startswith("A red circle moves to the left")


def test_card_geometry_and_limits(model):
    geometry, limits = model.card.geometry, model.card.limits
    assert (geometry.spatial_factor, geometry.temporal_factor, geometry.patch_size) == (8, 4, (1, 2, 2))
    assert geometry.size_multiple == 16 and geometry.decode_context == model.decoder_context_frames == 4
    assert limits.min_side == 32 and limits.max_side == 256 and limits.min_fps <= limits.default_fps <= limits.max_fps


def test_text_encoding_gives_token_embeddings(model):
    short, long, empty = model.encode_text(["red ball", "a small red circle moves to the left", ""])
    assert short.tokens.shape[1] == 384 and short.tokens.shape[0] == short.mask.shape[0]
    assert long.tokens.shape[0] > short.tokens.shape[0] and empty.mask.all()


def _work(model, shape, seed, **kwargs):
    text, negative = model.encode_text(["a blue square moving up", ""])
    _, t, h, w = shape
    c = model.geometry.latent_channels
    noise = frame_noise(seed, 0, t, (c, h, w))
    defaults = dict(sigmas=tuple(model.sigmas(3)), text=text, negative_text=negative, guidance_scale=3.0, fps=8.0)
    return DenoiseWork(latents=noise, **{**defaults, **kwargs})


def test_step_is_deterministic_and_batching_does_not_change_results(model):
    a = _work(model, (8, 3, 4, 6), seed=1)
    b = _work(model, (8, 3, 4, 6), seed=2, guidance_scale=1.0)
    c = _work(model, (8, 2, 2, 2), seed=3, sampler="heun")
    together = model.step([a, b, c])
    alone = [model.step([item])[0] for item in (a, b, c)]
    again = model.step([a, b, c])
    for x, y, z in zip(together, alone, again):
        assert torch.equal(x, z)
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)
    assert together[2].shape == (model.geometry.latent_channels, 2, 2, 2)


def test_step_keeps_given_frames_exactly(model):
    known = torch.randn(model.geometry.latent_channels, 4, 4, 4)
    mask = torch.tensor([1.0, 0.0, 0.0, 1.0])
    work = _work(model, (8, 4, 4, 4), seed=4, frames=FrameCondition(latents=known, mask=mask))
    out = model.step([work])[0]
    assert torch.equal(out[:, 0], known[:, 0]) and torch.equal(out[:, 3], known[:, 3])
    assert not torch.equal(out[:, 1], known[:, 1])


def test_step_validates_work(model):
    with pytest.raises(ValueError, match="divisible by the patch size"):
        model.step([_work(model, (8, 2, 3, 4), seed=0)])
    with pytest.raises(ValueError, match="non-increasing"):
        model.step([_work(model, (8, 2, 4, 4), seed=0, sigmas=(0.2, 0.5))])
    with pytest.raises(ValueError, match="frame condition mask"):
        model.step([_work(model, (8, 2, 4, 4), seed=0, frames=FrameCondition(torch.zeros(model.geometry.latent_channels, 2, 4, 4), torch.zeros(3)))])


@pytest.mark.parametrize("frames,height,width", [(1, 32, 48), (6, 48, 32), (17, 16, 80)])
def test_encode_and_decode_shapes(model, frames, height, width):
    video = torch.randint(0, 256, (frames, height, width, 3), dtype=torch.uint8)
    latents = model.encode_video(video)
    assert latents.shape == model.geometry.latent_shape(frames, height, width)
    decoded = model.decode_latents(latents)
    assert decoded.dtype == torch.uint8 and decoded.shape[1:] == (height, width, 3)
    assert decoded.shape[0] == model.geometry.pixel_frames(latents.shape[1]) >= frames


def test_long_decode_in_tiles_matches_untiled(model):
    torch.manual_seed(5)
    latents = torch.randn(model.geometry.latent_channels, 23, 4, 6)
    full = model.decode_latents(latents)
    context = model.decoder_context_frames
    tiles = [model.decode_latents(latents[:, :9])]
    tiles.append(model.decode_latents(latents[:, 9 - context : 17], context_frames=context))
    tiles.append(model.decode_latents(latents[:, 17 - context :], context_frames=context))
    tiled = torch.cat(tiles)
    assert tiled.shape == full.shape
    # Documented tolerance: at most one uint8 level (float rounding only).
    assert (tiled.int() - full.int()).abs().max() <= 1


def test_large_frames_decode_in_blended_spatial_tiles(model):
    torch.manual_seed(6)
    latents = torch.randn(model.geometry.latent_channels, 1, 64, 8)  # 512 px tall: decoded as overlapping spatial tiles
    out = model.decode_latents(latents)
    assert out.shape == (1, 512, 64, 3)


def test_generate_any_size_and_frame_count(model):
    video = generate_video(model, "red ball", width=48, height=32, num_frames=6, fps=8.0, steps=2)
    assert video.shape == (6, 32, 48, 3)
    image = generate_video(model, "red ball", width=32, height=256, num_frames=1, fps=8.0, steps=1)
    assert image.shape == (1, 256, 32, 3)
