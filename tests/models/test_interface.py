"""The interface's shared tensor helper: given frames put back exactly (frame-mask conditioning)."""

from __future__ import annotations

import pytest
import torch

from tessera.models.interface import FrameCondition, keep_given


def reference(latents: torch.Tensor, known: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Frame by frame, by indexing: what every caller wants."""
    out = latents.clone()
    given = mask.bool()
    out[..., given, :, :] = known[..., given, :, :].to(latents.dtype)
    return out


def test_given_frames_come_back_bit_exact_and_the_rest_untouched():
    generator = torch.Generator().manual_seed(0)
    latents, known = torch.randn(4, 6, 3, 5, generator=generator), torch.randn(4, 6, 3, 5, generator=generator)
    mask = torch.tensor([1.0, 0, 0, 1, 1, 0])
    before = latents.clone()
    out = keep_given(latents, known, mask)
    assert torch.equal(out, reference(latents, known, mask))
    assert torch.equal(out[:, [0, 3, 4]], known[:, [0, 3, 4]]) and torch.equal(out[:, [1, 2, 5]], latents[:, [1, 2, 5]])
    assert torch.equal(latents, before), "a new tensor; the input is not changed"
    assert torch.equal(keep_given(latents, known, mask.bool()), out), "bool masks too"
    assert torch.equal(keep_given(latents, known, torch.zeros(6)), latents)


def test_a_batch_with_one_mask_per_video():
    generator = torch.Generator().manual_seed(1)
    latents, known = torch.randn(2, 4, 5, 2, 2, generator=generator), torch.randn(2, 4, 5, 2, 2, generator=generator)
    mask = torch.tensor([[1.0, 0, 0, 0, 0], [0, 0, 0, 1, 1]])  # (B, T)
    out = keep_given(latents, known, mask)
    for b in range(2):
        assert torch.equal(out[b], reference(latents[b], known[b], mask[b]))


def test_in_the_latents_dtype():
    latents = torch.randn(2, 3, 2, 2).to(torch.bfloat16)
    known = torch.randn(2, 3, 2, 2)
    out = keep_given(latents, known, torch.tensor([0.0, 1, 0]))
    assert out.dtype == torch.bfloat16 and torch.equal(out[:, 1], known[:, 1].to(torch.bfloat16))


def test_frame_condition_apply_is_keep_given():
    generator = torch.Generator().manual_seed(2)
    condition = FrameCondition(torch.randn(4, 5, 2, 3, generator=generator), torch.tensor([0.0, 0, 1, 1, 0]))
    latents = torch.randn(4, 5, 2, 3, generator=generator)
    assert torch.equal(condition.apply(latents), keep_given(latents, condition.latents, condition.mask))


def test_shapes_must_match():
    with pytest.raises(ValueError, match="do not match"):
        keep_given(torch.zeros(4, 5, 2, 2), torch.zeros(4, 4, 2, 2), torch.zeros(5))
    with pytest.raises(ValueError, match="mask"):
        keep_given(torch.zeros(4, 5, 2, 2), torch.zeros(4, 5, 2, 2), torch.zeros(4))
