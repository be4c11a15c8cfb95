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
