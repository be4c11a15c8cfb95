"""The evaluator scores real shapes-world clips ~perfectly and broken ones near chance; its
motion metrics (path direction, stillness, latent-group jump ratio, window seams) read rendered
clips with known motion right and would catch the failures they are meant to catch."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.models.shapes.evaluate import (
    group_jumps,
    latent_boundary_pairs,
    psnr,
    score_clip,
    seam_jumps,
    summarize,
    track_object,
    window_seam_pairs,
)
from tessera.models.shapes.world import ClipSpec, render, sample_spec


def _clips(count: int, seed: int):
    rng = np.random.default_rng(seed)
    return [sample_spec(rng, split="all", num_frames=21) for _ in range(count)]


def _at(xs, ys, *, width=64, height=64, colour="red", shape="square", size="medium", background="black") -> np.ndarray:
    """A clip showing the object centred at the given pixel positions, one frame each."""
    frames = [
        render(ClipSpec(colour, shape, size, "medium", "right", background, width=width, height=height, fps=8.0,
                        num_frames=1, start=((x % width) / width, (y % height) / height)))[0]
        for x, y in zip(xs, ys)
    ]
    return np.stack(frames)


def test_ground_truth_scores_perfectly():
    specs = _clips(40, 0)
    scores = [score_clip(render(s), expected=s.attributes(), true_speed=s.speed_px_per_frame) for s in specs]
    summary = summarize(scores)
    assert summary["colour_accuracy"] == 1.0
    assert summary["direction_accuracy"] == 1.0
    assert summary["shape_accuracy"] >= 0.95
    assert summary["visibility"] == 1.0
    assert 0.97 < summary["mean_jump_ratio"] < 1.03
    assert summary["stillness"] == 0.0 and summary["static_clips"] == 0
    assert 0.97 < summary["mean_progress_ratio"] < 1.03
    assert 0.85 < summary["median_group_jump_ratio"] < 1.15


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
    assert score_clip(blank).direction == "static"
    spec = ClipSpec("red", "circle", "large", "fast", "right", "black", width=48, height=32, fps=8.0,
                    num_frames=12, start=(0.9, 0.5))
    track = track_object(render(spec))
    assert track.visible.all()
    steps = track.displacements()[:, 0]
    assert np.allclose(steps, spec.speed_px_per_frame, atol=0.5)  # no jump when it crosses the edge


@pytest.mark.parametrize("motion", ["left", "right", "up", "down"])
def test_path_direction_follows_the_object_round_the_torus(motion):
    # 4.8 px/frame for 28 steps = 134 px: the object wraps round a 64 px frame twice, so its
    # first and last positions say nothing about the way it went; the summed path does.
    spec = ClipSpec("green", "circle", "medium", "fast", motion, "white", width=64, height=64, fps=6.0,
                    num_frames=29, start=(0.3, 0.6))
    score = score_clip(render(spec), expected=spec.attributes(), true_speed=spec.speed_px_per_frame)
    assert score.direction == motion and score.direction_correct
    assert score.progress == pytest.approx(spec.speed_px_per_frame * 28, rel=0.03)
    assert score.progress_ratio == pytest.approx(1.0, abs=0.03)


def test_path_direction_is_the_sum_of_steps_not_the_median_step():
    # Three steps of 2 px right, then a 9 px jump left, per group: the median step is "right",
    # but the object drifts 3 px left per group (27 px over the clip), as a jumpy decoder's can.
    xs = [20.0]
    for index in range(28):
        xs.append(xs[-1] + (-9.0 if index % 4 == 3 else 2.0))
    clip = _at(xs, [32.0] * len(xs))
    score = score_clip(clip, expected={"motion": "right"})
    assert score.median_direction == "right"
    assert score.direction == "left" and score.direction_correct is False
    assert score.path[0] == pytest.approx(-21.0, abs=1.0) and score.progress < 0
    assert summarize([score])["direction_accuracy"] == 0.0


def test_stillness_counts_frame_pairs_without_motion():
    spec = ClipSpec("blue", "square", "small", "slow", "down", "grey", width=64, height=96, fps=12.0,
                    num_frames=29, start=(0.5, 0.1))
    video = render(spec)
    assert score_clip(video).stillness == 0.0
    still = np.repeat(video[:1], len(video), axis=0)
    score = score_clip(still, expected={"motion": "down"})
    assert score.stillness == 1.0 and score.direction == "static" and score.direction_correct is False
    # Half the clip frozen: half the pairs still.
    half = video.copy()
    half[15:] = video[14]
    assert score_clip(half).stillness == pytest.approx(14 / 28)


def _group_held(video: np.ndarray, factor: int = 4) -> np.ndarray:
    """Each latent group (frames f*(k-1)+1 .. f*k) shows its last frame: still, then a jump."""
    held = video.copy()
    for stop in range(factor, len(video), factor):
        held[stop - factor + 1 : stop + 1] = video[stop]
    return held


def test_group_jump_ratio_sees_groups_held_still():
    spec = ClipSpec("red", "square", "large", "medium", "right", "black", width=64, height=64, fps=8.0,
                    num_frames=29, start=(0.2, 0.5))
    video = render(spec)
    smooth = group_jumps(video)
    assert 0.9 < smooth["ratio"] < 1.1 and smooth["inside_stillness"] == 0.0
    held = group_jumps(_group_held(video))
    assert held["inside_stillness"] == 1.0 and held["ratio"] > 10
    assert held["boundary_mean"] == pytest.approx(4 * spec.speed_px_per_frame, rel=0.05)
    score = score_clip(_group_held(video), expected=spec.attributes())
    assert score.direction == "right" and score.stillness == pytest.approx(21 / 28) and score.group_jump_ratio > 10


def test_group_jump_ratio_sees_motion_squeezed_inside_groups():
    # What the v1 VAE does: inside each group the object moves at half speed around the group's
    # mean position, so it catches up with a jump at every boundary (ratio (4 - 1.5) / 0.5 = 5).
    speed, xs = 3.0, [10.0]
    for stop in range(4, 29, 4):
        frames = np.arange(stop - 3, stop + 1) * speed + 10.0
        xs += list(frames.mean() + 0.5 * (frames - frames.mean()))
    clip = _at(xs, [30.0] * len(xs), width=96, height=64, shape="circle", background="white", colour="magenta")
    result = group_jumps(clip)
    assert result["ratio"] == pytest.approx(5.0, rel=0.15)
    # The ratio reads the latent grid: the same jumps two frames off the grid fall inside groups.
    assert group_jumps(clip[2:])["ratio"] < 0.6
    assert score_clip(clip, expected={"motion": "right"}).direction_correct


def test_pair_indices_follow_the_causal_latent_grid():
    assert latent_boundary_pairs(29) == [0, 4, 8, 12, 16, 20, 24]
    assert latent_boundary_pairs(9, temporal_factor=2) == [0, 2, 4, 6]
    # Latent frame k >= 1 starts at pixel frame 1 + 4(k-1): the seam is the pair before it.
    assert window_seam_pairs([0, 8, 15], num_frames=61) == [28, 56]
    assert window_seam_pairs([20], num_frames=61) == []


def test_seam_metric_sees_an_injected_jump():
    spec = ClipSpec("cyan", "square", "medium", "slow", "down", "grey", width=64, height=64, fps=8.0,
                    num_frames=24, start=(0.5, 0.2))
    video = render(spec)
    smooth = seam_jumps(video, [11])
    assert 0.8 < smooth["ratio"] < 1.2
    broken = video.copy()
    broken[12:] = np.roll(video[12:], 10, axis=2)
    assert seam_jumps(broken, [11])["ratio"] > 3
    # Against the latent-group boundaries only: a seam at a window start, in a clip whose groups
    # are held still (every boundary jumps), adds nothing; an extra jump there does.
    long = render(ClipSpec("cyan", "square", "medium", "slow", "down", "grey", width=64, height=64, fps=8.0,
                           num_frames=61, start=(0.5, 0.2)))
    held = _group_held(long)
    seams = window_seam_pairs([8], len(held))
    boundaries = latent_boundary_pairs(len(held))
    assert 0.9 < seam_jumps(held, seams, control_pairs=boundaries)["ratio"] < 1.1
    held[seams[0] + 1 :] = np.roll(held[seams[0] + 1 :], 8, axis=1)
    assert seam_jumps(held, seams, control_pairs=boundaries)["ratio"] > 2


def test_psnr():
    a = np.zeros((4, 4, 3), dtype=np.uint8)
    b = a.copy()
    assert psnr(a, b) == float("inf")
    b[0, 0, 0] = 255
    assert abs(psnr(a, b) - 10 * np.log10(48)) < 1e-9
