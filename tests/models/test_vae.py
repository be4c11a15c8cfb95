"""Causal video VAE: shapes, causality, time-tiled decoding."""

from __future__ import annotations

import pytest
import torch

from tessera.models.native.configs import VAEConfig
from tessera.models.native.vae import VideoVAE

SMALL = VAEConfig(channels=(16, 24), blocks_per_stage=1)
C = SMALL.latent_channels


@pytest.fixture(scope="module")
def vae() -> VideoVAE:
    torch.manual_seed(0)
    return VideoVAE(SMALL).eval()


@pytest.mark.parametrize("frames,height,width", [(1, 8, 8), (5, 24, 40), (13, 40, 16), (9, 56, 88)])
def test_shapes_at_odd_sizes(vae, frames, height, width):
    x = torch.rand(2, 3, frames, height, width) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x)
        assert z.shape == (2, C, 1 + (frames - 1) // 4, height // 8, width // 8)
        y = vae.decode(z)
    assert y.shape == x.shape


def test_invalid_inputs_raise(vae):
    with pytest.raises(ValueError, match="1 \\+ 4"):
        vae.encode(torch.zeros(1, 3, 4, 16, 16))
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.encode(torch.zeros(1, 3, 5, 12, 16))
    with pytest.raises(ValueError, match="context_frames"):
        vae.decode(torch.zeros(1, C, 3, 2, 2), context_frames=3)


def test_encoder_is_causal(vae):
    torch.manual_seed(1)
    x = torch.rand(1, 3, 17, 16, 24) * 2 - 1
    changed = x.clone()
    changed[:, :, 1:] = torch.rand_like(changed[:, :, 1:])
    with torch.no_grad():
        a, b = vae.encode(x), vae.encode(changed)
    # The first frame's latent does not depend on any later frame...
    assert torch.equal(a[:, :, 0], b[:, :, 0])
    # ...and latent frame j sees pixel frames up to 4j only.
    later = x.clone()
    later[:, :, 9:] = 0
    with torch.no_grad():
        c = vae.encode(later)
    assert torch.equal(a[:, :, :3], c[:, :, :3]) and not torch.equal(a[:, :, 3], c[:, :, 3])


def test_decoder_is_causal_and_context_frames_drop_pixels(vae):
    torch.manual_seed(2)
    z = torch.randn(1, C, 6, 2, 3)
    with torch.no_grad():
        full = vae.decode(z)
        prefix = vae.decode(z[:, :, :3])
        tail = vae.decode(z, context_frames=2)
    assert full.shape[2] == 1 + 4 * 5 and tail.shape[2] == 4 * 4
    torch.testing.assert_close(prefix, full[:, :, : prefix.shape[2]], rtol=0, atol=1e-6)
    torch.testing.assert_close(tail, full[:, :, 1 + 4 * 1 :], rtol=0, atol=1e-6)


def test_time_tiles_with_receptive_field_context_match_untiled(vae):
    torch.manual_seed(3)
    z = torch.randn(1, C, 15, 2, 2)
    context = vae.decoder_context_frames
    assert context == 4
    with torch.no_grad():
        full = vae.decode(z)
        tiles = [vae.decode(z[:, :, :6])]
        for start in (6, 11):
            stop = min(15, start + 5)
            tiles.append(vae.decode(z[:, :, start - context : stop], context_frames=context))
    torch.testing.assert_close(torch.cat(tiles, dim=2), full, rtol=0, atol=1e-5)


# v2: the highest-resolution stage of encoder and decoder at the pixel frame rate.
V2 = VAEConfig(channels=(16, 24), blocks_per_stage=1, full_rate_encoder_stages=1, full_rate_decoder_stages=1)


@pytest.fixture(scope="module")
def vae_v2() -> VideoVAE:
    torch.manual_seed(0)
    return VideoVAE(V2).eval()


def test_v2_config_context_and_limits():
    assert V2.decoder_context_frames == 3  # 2 latent frames (latent-rate stage) + 2 pixel frames = 1 group
    assert VAEConfig(full_rate_decoder_stages=1, time_kernel=6).decoder_context_frames == 5 + 2
    assert VAEConfig().decoder_context_frames == 4  # v1 unchanged
    with pytest.raises(ValueError, match="full_rate_decoder_stages"):
        VAEConfig(channels=(16, 24), full_rate_decoder_stages=2)


@pytest.mark.parametrize("frames,height,width", [(1, 8, 8), (5, 24, 40), (13, 40, 16)])
def test_v2_shapes(vae_v2, frames, height, width):
    x = torch.rand(2, 3, frames, height, width) * 2 - 1
    with torch.no_grad():
        z = vae_v2.encode(x)
        assert z.shape == (2, C, 1 + (frames - 1) // 4, height // 8, width // 8)
        assert vae_v2.decode(z).shape == x.shape


def test_v2_encoder_is_causal(vae_v2):
    torch.manual_seed(1)
    x = torch.rand(1, 3, 17, 16, 24) * 2 - 1
    later = x.clone()
    later[:, :, 9:] = 0
    with torch.no_grad():
        a, c = vae_v2.encode(x), vae_v2.encode(later)
    assert torch.equal(a[:, :, :3], c[:, :, :3]) and not torch.equal(a[:, :, 3], c[:, :, 3])


def test_v2_time_tiles_with_receptive_field_context_match_untiled(vae_v2):
    torch.manual_seed(3)
    z = torch.randn(1, C, 15, 2, 2)
    context = vae_v2.decoder_context_frames
    with torch.no_grad():
        full = vae_v2.decode(z)
        tiles = [vae_v2.decode(z[:, :, :6])]
        for start in (6, 11):
            stop = min(15, start + 5)
            tiles.append(vae_v2.decode(z[:, :, start - context : stop], context_frames=context))
        # One latent frame less context than the receptive field is not enough.
        short = vae_v2.decode(z[:, :, 6 - context + 1 : 11], context_frames=context - 1)
    torch.testing.assert_close(torch.cat(tiles, dim=2), full, rtol=0, atol=1e-5)
    assert not torch.allclose(short, full[:, :, 1 + 4 * 5 : 1 + 4 * 10], atol=1e-5)


def test_shipped_v1_weights_load_into_the_default_architecture():
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    folder = Path(__file__).resolve().parents[2] / "models" / "weights" / "tiny"
    config = VAEConfig(**json.loads((folder / "config.json").read_text())["vae"])
    assert config.full_rate_encoder_stages == config.full_rate_decoder_stages == 0
    vae = VideoVAE(config)
    vae.load_state_dict({k: v.float() for k, v in load_file(str(folder / "vae.safetensors")).items()})  # strict
