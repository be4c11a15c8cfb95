"""A pure-noise job's first step group sends each window's noise as a recipe (WindowNoise), drawn
by the Denoiser replica: it must be the slice of the whole video's noise the JobRunner would
have sent, bit for bit."""

from __future__ import annotations

import torch

from tessera.models.native import sampler
from tessera.models.interface import frame_noise
from tessera.serving.jobs.planner import plan_windows
from tessera.serving.stages import WindowNoise


def test_each_window_draws_exactly_its_slice_of_the_video_noise():
    seed, sigma, shape = 11, 0.97, (4, 6, 10)  # (C, H, W)
    windows = plan_windows(61, 21, 2, fit=True)
    assert len(windows) > 2
    video = frame_noise(seed, 0, 61, shape)
    whole = sampler.add_noise(torch.zeros_like(video), video, sigma)  # what the JobRunner draws and slices
    for window in windows:
        drawn = WindowNoise(seed, window.start, window.stop, shape, sigma).latents(sampler.add_noise)
        assert torch.equal(drawn, whole[:, window.start : window.stop])
