"""Flow-matching schedule and steps (pure functions)."""

from __future__ import annotations

import pytest
import torch

from tessera.models.native.sampler import add_noise, flow_sigmas, guided, sample


@pytest.mark.parametrize("steps,shift", [(1, 1.0), (25, 1.0), (10, 3.0)])
def test_sigmas_descend_from_one_to_zero(steps, shift):
    sigmas = flow_sigmas(steps, shift)
    assert len(sigmas) == steps + 1 and sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert all(a > b for a, b in zip(sigmas, sigmas[1:]))
    if shift > 1:
        assert sigmas[steps // 2] > flow_sigmas(steps)[steps // 2]


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_exact_velocity_recovers_the_clean_sample(method):
    torch.manual_seed(0)
    x0, noise = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 3, 2, 2)
    calls = []

    def velocity(x, sigma):
        calls.append(sigma)
        return noise - x0  # the true rectified-flow velocity is constant along the path

    out = sample(velocity, add_noise(x0, noise, 1.0), flow_sigmas(6), method=method)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-5)
    assert len(calls) == (6 if method == "euler" else 11)


def test_partial_schedule_lands_on_the_interpolant():
    torch.manual_seed(1)
    x0, noise = torch.randn(1, 2, 2, 2, 2), torch.randn(1, 2, 2, 2, 2)
    sigmas = flow_sigmas(10)[3:7]
    out = sample(lambda x, s: noise - x0, add_noise(x0, noise, sigmas[0]), sigmas)
    torch.testing.assert_close(out, add_noise(x0, noise, sigmas[-1]), rtol=0, atol=1e-6)


def test_given_frames_are_kept_exactly():
    torch.manual_seed(2)
    x = torch.randn(1, 4, 5, 2, 2)
    known = torch.randn(1, 4, 5, 2, 2)
    mask = torch.tensor([[1.0, 0, 0, 1, 0]])
    seen = []

    def velocity(latents, sigma):
        seen.append(latents[:, :, 0].clone())
        return torch.randn_like(latents)

    out = sample(velocity, x, flow_sigmas(4), method="heun", known=known, mask=mask)
    assert torch.equal(out[:, :, [0, 3]], known[:, :, [0, 3]])
    assert all(torch.equal(s, known[:, :, 0]) for s in seen)  # the model always sees them clean


def test_guidance_and_validation():
    cond, uncond = torch.ones(2), torch.zeros(2)
    assert torch.equal(guided(cond, uncond, 1.0), cond)
    assert torch.equal(guided(cond, uncond, 3.0), torch.full((2,), 3.0))
    with pytest.raises(ValueError, match="must not increase"):
        sample(lambda x, s: x, torch.zeros(1), [0.5, 0.7])
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(lambda x, s: x, torch.zeros(1), [1.0, 0.0], method="dpm")
