"""Spacetime-patch DiT: shapes at odd sizes, RoPE on any grid, adaLN-Zero, big configs."""

from __future__ import annotations

import pytest
import torch

from tessera.models.native.configs import DiTConfig, get_config
from tessera.models.native.dit import DiT, apply_rope, rope_angles

SMALL = DiTConfig(hidden_size=48, depth=2, num_heads=2)


def _inputs(b: int, t: int, h: int, w: int, tokens: int = 7):
    torch.manual_seed(0)
    text = torch.randn(b, tokens, 384)
    mask = torch.ones(b, tokens, dtype=torch.bool)
    mask[0, 4:] = False
    return torch.randn(b, 8, t, h, w), torch.rand(b), text, mask, torch.full((b,), 8.0)


@pytest.fixture(scope="module")
def dit() -> DiT:
    torch.manual_seed(0)
    model = DiT(SMALL, latent_channels=8).eval()
    # Leave the zero-initialised output layers random so outputs depend on everything.
    for block in model.blocks:
        torch.nn.init.normal_(block.modulation[-1].weight, std=0.02)
    torch.nn.init.normal_(model.proj_out.weight, std=0.02)
    return model


@pytest.mark.parametrize("t,h,w", [(1, 2, 2), (3, 4, 10), (8, 12, 2), (5, 6, 8), (2, 32, 32)])
def test_output_shape_matches_input_at_any_grid(dit, t, h, w):
    x, sigma, text, mask, fps = _inputs(2, t, h, w)
    with torch.no_grad():
        out = dit(x, sigma, text, mask, fps)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_frame_condition_and_padding_mask_change_the_output(dit):
    x, sigma, text, mask, fps = _inputs(2, 3, 4, 4)
    known = torch.randn_like(x)
    frame_mask = torch.tensor([[1.0, 0, 0], [0, 0, 0]])
    with torch.no_grad():
        plain = dit(x, sigma, text, mask, fps)
        conditioned = dit(x, sigma, text, mask, fps, known=known, mask=frame_mask)
        padded_text = text.clone()
        padded_text[0, 4:] = 100.0  # padding tokens must be ignored
        repadded = dit(x, sigma, padded_text, mask, fps)
    assert not torch.allclose(plain[0], conditioned[0])
    torch.testing.assert_close(plain[1], conditioned[1])  # no given frames: no change
    torch.testing.assert_close(plain, repadded)


def test_invalid_inputs_raise(dit):
    x, sigma, text, mask, fps = _inputs(1, 2, 3, 4)
    with pytest.raises(ValueError, match="divisible by the patch size"):
        dit(x, sigma, text, mask, fps)
    x, sigma, text, mask, fps = _inputs(1, 2, 4, 4)
    with pytest.raises(ValueError, match="text tokens"):
        dit(x, sigma, text[..., :10], mask, fps)


def test_adaln_zero_starts_at_zero_output():
    torch.manual_seed(0)
    model = DiT(SMALL, latent_channels=8)
    x, sigma, text, mask, fps = _inputs(1, 2, 4, 4)
    with torch.no_grad():
        assert torch.count_nonzero(model(x, sigma, text, mask, fps)) == 0


def test_rope_scores_depend_on_relative_position_only():
    torch.manual_seed(0)
    split = (8, 8, 8)
    q, k = torch.randn(1, 1, 1, 24), torch.randn(1, 1, 1, 24)
    big = rope_angles((20, 30, 40), split, 10_000.0, torch.device("cpu")).view(20, 30, 40, 12)

    def score(p, r):
        aq, ak = big[p], big[r]
        return (apply_rope(q, aq.cos(), aq.sin()) * apply_rope(k, ak.cos(), ak.sin())).sum()

    torch.testing.assert_close(score((1, 2, 3), (4, 0, 7)), score((11, 22, 30), (14, 20, 34)), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(score((1, 2, 3), (4, 0, 7)), score((1, 2, 3), (4, 1, 7)))


def test_realistic_config_builds_without_allocating():
    from accelerate import init_empty_weights

    config = get_config("1b")
    with init_empty_weights():
        model = DiT(config.dit, config.vae.latent_channels)
    count = sum(p.numel() for p in model.parameters())
    assert all(p.device.type == "meta" for p in model.parameters())
    assert 0.8e9 < count < 1.3e9


def test_video_start_embedding_starts_neutral_and_then_tells_windows_apart():
    torch.manual_seed(0)
    plain = DiT(SMALL, latent_channels=8).eval()
    with_start = DiT(SMALL.model_copy(update={"video_start_embedding": True}), latent_channels=8).eval()
    # A model without the embedding loads into one with it; the new embedding starts at zero.
    missing, unexpected = with_start.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["start_embed.weight"] and unexpected == []
    for block in (plain.blocks[0], with_start.blocks[0]):
        torch.nn.init.normal_(block.modulation[-1].weight, std=0.02)
    with_start.blocks[0].load_state_dict(plain.blocks[0].state_dict())
    torch.nn.init.normal_(plain.proj_out.weight, std=0.02)
    with_start.proj_out.load_state_dict(plain.proj_out.state_dict())
    x, sigma, text, mask, fps = _inputs(2, 2, 4, 4)
    mid = torch.tensor([False, False])
    with torch.no_grad():
        reference = plain(x, sigma, text, mask, fps)
        assert torch.equal(with_start(x, sigma, text, mask, fps, starts_video=mid), reference)
        torch.nn.init.normal_(with_start.start_embed.weight, std=0.5)
        first = with_start(x, sigma, text, mask, fps)  # default: every window starts its video
        assert torch.equal(first, with_start(x, sigma, text, mask, fps, starts_video=torch.tensor([True, True])))
        assert not torch.allclose(first, with_start(x, sigma, text, mask, fps, starts_video=mid))
