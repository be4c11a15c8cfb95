"""The evaluator scores real shapes-world clips ~perfectly and broken ones near chance."""

from __future__ import annotations

import numpy as np

from tessera.models.shapes.evaluate import psnr, score_clip, seam_jumps, summarize, track_object
from tessera.models.shapes.world import ClipSpec, render, sample_spec


def _clips(count: int, seed: int):
    rng = np.random.default_rng(seed)
    return [sample_spec(rng, split="all", num_frames=21) for _ in range(count)]


def test_ground_truth_scores_perfectly():
    specs = _clips(40, 0)
    scores = [score_clip(render(s), expected=s.attributes(), true_speed=s.speed_px_per_frame) for s in specs]
    summary = summarize(scores)
    assert summary["colour_accuracy"] == 1.0
    assert summary["direction_accuracy"] == 1.0
    assert summary["shape_accuracy"] >= 0.95
    assert summary["visibility"] == 1.0
    assert 0.97 < summary["mean_jump_ratio"] < 1.03


def test_shuffled_data_scores_near_chance():
    specs = _clips(48, 1)
    other = _clips(48, 2)
    rng = np.random.default_rng(3)
    scores = []
    for spec, wrong in zip(specs, other):
        video = render(spec)
        video = video[rng.permutation(len(video))]  # frames out of order: no consistent motion
        scores.append(score_clip(video, expected=wrong.attributes(), true_speed=spec.speed_px_per_frame))
    summary = summarize(scores)
    assert summary["colour_accuracy"] < 0.45
    assert summary["direction_accuracy"] < 0.55
    assert summary["mean_jump_ratio"] > 2.0


def test_empty_frames_are_invisible_and_centroid_wraps():
    blank = np.zeros((5, 32, 48, 3), dtype=np.uint8)
    assert not track_object(blank).visible.any()
    spec = ClipSpec("red", "circle", "large", "fast", "right", "black", width=48, height=32, fps=8.0,
                    num_frames=12, start=(0.9, 0.5))
    track = track_object(render(spec))
    assert track.visible.all()
    steps = track.displacements()[:, 0]
    assert np.allclose(steps, spec.speed_px_per_frame, atol=0.5)  # no jump when it crosses the edge


def test_seam_metric_sees_an_injected_jump():
    spec = ClipSpec("cyan", "square", "medium", "slow", "down", "grey", width=64, height=64, fps=8.0,
                    num_frames=24, start=(0.5, 0.2))
    video = render(spec)
    smooth = seam_jumps(video, [11])
    assert 0.8 < smooth["ratio"] < 1.2
    broken = video.copy()
    broken[12:] = np.roll(video[12:], 10, axis=2)
    assert seam_jumps(broken, [11])["ratio"] > 3


def test_psnr():
    a = np.zeros((4, 4, 3), dtype=np.uint8)
    b = a.copy()
    assert psnr(a, b) == float("inf")
    b[0, 0, 0] = 255
    assert abs(psnr(a, b) - 10 * np.log10(48)) < 1e-9
