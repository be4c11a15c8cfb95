"""The pure planner: every duration from one frame to 60 s at several fps."""

from __future__ import annotations

import itertools

import pytest

from tessera.models.interface import LatentGeometry, TimeGrid
from tessera.serving.jobs.planner import (
    TilingOptions,
    fused_windows,
    plan_decode_tiles,
    plan_render,
    plan_windows,
    ramp_weights,
    window_batches,
)

GEOMETRY = LatentGeometry(
    latent_channels=8, spatial_factor=8, temporal_factor=4, patch_size=(1, 2, 2), native_window=8, decode_context=2
)
OPTIONS = TilingOptions(window=8, min_overlap=2, sync_every=1, decode_tile=8, decode_context=2, fit_windows=False)


def check_windows(latent_frames: int, window: int, overlap: int, fit: bool = False) -> None:
    windows = plan_windows(latent_frames, window, overlap, fit)
    totals = [0.0] * latent_frames
    for w in windows:
        assert len(w.weights) == w.length
        assert all(weight > 0 for weight in w.weights)
        for j, weight in enumerate(w.weights):
            totals[w.start + j] += weight
    assert totals == pytest.approx([1.0] * latent_frames, abs=1e-9), "fusion weights must sum to one per frame"
    assert windows[0].start == 0 and windows[-1].stop == latent_frames
    if latent_frames <= window:
        assert len(windows) == 1 and windows[0].length == latent_frames
        return
    lengths = {w.length for w in windows}
    assert len(lengths) == 1, "all windows of a video have one length"
    length = lengths.pop()
    if fit:
        count = len(windows)
        assert length <= window and count == len(plan_windows(latent_frames, window, overlap)), "same windows, never longer"
        assert count * (length - 1) - (count - 1) * overlap < latent_frames, "one frame shorter could not cover the video"
    else:
        assert length == window, "every window has the native length"
    for left, right in zip(windows, windows[1:]):
        assert right.start > left.start
        assert left.stop - right.start >= overlap, "neighbours share at least the minimum overlap"
    # Where only two windows meet, the incoming window's weight ramps up monotonically.
    coverage = [sum(w.start <= t < w.stop for w in windows) for t in range(latent_frames)]
    for left, right in zip(windows, windows[1:]):
        if right.start >= left.stop or max(coverage[right.start : left.stop]) > 2:
            continue
        shared = range(right.start, left.stop)
        right_weights = [right.weights[t - right.start] for t in shared]
        assert right_weights == sorted(right_weights)


@pytest.mark.parametrize("fit", [False, True])
@pytest.mark.parametrize("fps", [4, 8, 12, 24])
def test_windows_cover_every_duration(fps, fit):
    for num_frames in range(1, 60 * fps + 1):
        latent_frames = GEOMETRY.latent_frames(num_frames)
        check_windows(latent_frames, 8, 2, fit)


@pytest.mark.parametrize("fit", [False, True])
@pytest.mark.parametrize("window,overlap", [(1, 0), (2, 1), (5, 0), (8, 4), (8, 7), (16, 3)])
def test_windows_any_window_and_overlap(window, overlap, fit):
    for latent_frames in range(1, 130):
        check_windows(latent_frames, window, overlap, fit)


def test_fitted_windows_recompute_less_and_even_out_the_cost_per_second():
    """At 8 fps: 5 s (11 latent frames) in two windows of 7, not 8; 60 s keeps windows of 8."""
    assert [(w.start, w.stop) for w in plan_windows(11, 8, 2, fit=True)] == [(0, 7), (4, 11)]
    assert {w.length for w in plan_windows(21, 8, 2, fit=True)} == {7}
    assert {w.length for w in plan_windows(121, 8, 2, fit=True)} == {8}

    def work_per_second(seconds: int, fit: bool) -> float:
        latent_frames = GEOMETRY.latent_frames(8 * seconds)
        return sum(w.length for w in plan_windows(latent_frames, 8, 2, fit)) / seconds

    seconds = (2, 5, 10, 20, 40, 60)
    native = [work_per_second(s, False) for s in seconds]
    fitted = [work_per_second(s, True) for s in seconds]
    assert all(f <= n for f, n in zip(fitted, native))
    assert fitted == pytest.approx([2.5, 2.8, 2.8, 2.8, 2.8, 160 / 60])  # native: 2.5, 3.2, 3.2, 2.8, 2.8, 2.67


def test_window_count_grows_linearly():
    counts = [len(plan_windows(f, 8, 2)) for f in (61, 121, 241)]
    assert counts == [10, 20, 40]


@pytest.mark.parametrize("fps", [4, 8, 24])
def test_decode_tiles_cover_frames_exactly_once(fps):
    for num_frames in itertools.chain(range(1, 200), range(60 * fps - 20, 60 * fps + 1)):
        latent_frames = GEOMETRY.latent_frames(num_frames)
        tiles = plan_decode_tiles(latent_frames, num_frames, GEOMETRY, tile=8, context=2)
        next_frame = 0
        for tile in tiles:
            assert tile.first_frame == next_frame
            assert tile.num_frames >= 1
            assert 0 <= tile.context <= min(2, tile.start)
            expected = (1 if tile.start == 0 else 0) + GEOMETRY.temporal_factor * (tile.stop - tile.start - (1 if tile.start == 0 else 0))
            assert tile.num_frames <= expected
            next_frame += tile.num_frames
        assert next_frame == num_frames


def test_single_window_takes_all_steps_in_one_call():
    plan = plan_render(16, 64, 64, GEOMETRY, OPTIONS)  # 2 s at 8 fps: 5 latent frames
    assert len(plan.windows) == 1
    assert plan.step_groups(25) == [(0, 25)]


def test_tiled_plan_syncs_every_k_steps():
    plan = plan_render(480, 64, 64, GEOMETRY, TilingOptions(window=8, min_overlap=2, sync_every=3, decode_tile=8, decode_context=2, fit_windows=False))
    assert plan.latent_shape == (8, 121, 8, 8)
    assert len(plan.windows) == 20
    groups = plan.step_groups(10)
    assert groups == [(0, 3), (3, 6), (6, 9), (9, 10)]
    summary = plan.summary()
    assert summary["windows"][0] == [0, 8] and summary["windows"][-1] == [113, 121]
    assert summary["decode_tiles"][-1]["frames"][1] == 480


def test_one_frame_image():
    plan = plan_render(1, 256, 128, GEOMETRY, OPTIONS)
    assert plan.latent_shape == (8, 1, 32, 16)
    assert [(w.start, w.stop) for w in plan.windows] == [(0, 1)]
    assert [(t.first_frame, t.num_frames) for t in plan.decode_tiles] == [(0, 1)]


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(window=0, min_overlap=0, sync_every=1, decode_tile=1, decode_context=0, fit_windows=False), "window"),
        (dict(window=4, min_overlap=4, sync_every=1, decode_tile=1, decode_context=0, fit_windows=False), "min_overlap"),
        (dict(window=4, min_overlap=1, sync_every=0, decode_tile=1, decode_context=0, fit_windows=False), "sync_every"),
        (dict(window=4, min_overlap=1, sync_every=1, decode_tile=0, decode_context=0, fit_windows=False), "decode_tile"),
    ],
)
def test_tiling_options_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TilingOptions(**kwargs)


def test_seam_pairs_mark_window_and_tile_boundaries():
    plan = plan_render(160, 64, 64, GEOMETRY, OPTIONS)  # 20 s at 8 fps: 41 latent frames
    pairs = plan.seam_frame_pairs(GEOMETRY.temporal_factor)
    starts = [w.start for w in plan.windows[1:]] + [t.start for t in plan.decode_tiles[1:]]
    for start in starts:
        assert 1 + GEOMETRY.temporal_factor * (start - 1) - 1 in pairs
    assert all(0 <= i < 159 for i in pairs) and pairs == sorted(set(pairs))
    assert plan_render(16, 64, 64, GEOMETRY, OPTIONS).seam_frame_pairs(4) == []  # one window, one tile


def test_fusion_keeps_agreed_frames_and_blends_overlaps():
    import torch

    from tessera.serving.jobs.sampling import fuse_windows

    windows = plan_windows(20, 8, 3)
    video = torch.randn(2, 20, 3, 3)
    agreed = fuse_windows(windows, [video[:, w.start : w.stop] for w in windows], 20)
    torch.testing.assert_close(agreed, video)  # weights are a partition of unity

    # Each window says a different constant: overlapped frames land between the two values.
    outputs = [torch.full((1, w.length, 1, 1), float(w.index)) for w in windows]
    fused = fuse_windows(windows, outputs, 20)[0, :, 0, 0]
    for t in range(20):
        covering = [w.index for w in windows if w.start <= t < w.stop]
        assert min(covering) - 1e-6 <= fused[t] <= max(covering) + 1e-6
    assert fused.tolist() == sorted(fused.tolist()), "ramps make the blend monotone across overlaps"


@pytest.mark.parametrize("windows", [1, 2, 3, 7, 20, 41])
@pytest.mark.parametrize("replicas", [1, 2, 8])
@pytest.mark.parametrize("max_per_call", [1, 4])
def test_window_batches_cover_each_window_once_within_the_limit(windows, replicas, max_per_call):
    batches = window_batches(windows, replicas, max_per_call)
    assert [i for batch in batches for i in batch] == list(range(windows)), "every window once, neighbours together"
    assert all(1 <= len(batch) <= max_per_call for batch in batches)
    assert len(batches) >= min(windows, replicas), "every replica can get work"
    assert max(map(len, batches)) - min(map(len, batches)) <= 1, "spread evenly"


# --- the shared homes: ramp weights, fused windows, the causal time grid ------------------------


def test_ramp_weights_rise_over_the_lead_and_fall_over_the_trail():
    assert ramp_weights(8, 3, 2) == (0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 2 / 3, 1 / 3)
    assert ramp_weights(5, 0, 0) == (1.0,) * 5, "video edges and cuts get no ramp"
    assert ramp_weights(4, 0, 3) == (1.0, 0.75, 0.5, 0.25)
    assert ramp_weights(3, 2, 2) == (1 / 3, 2 / 3, 1 / 3), "a short window between two overlaps ramps both ways"
    for bad in ((0, 0, 0), (4, -1, 0), (4, 0, -1)):
        with pytest.raises(ValueError):
            ramp_weights(*bad)


def test_fused_windows_are_the_planners_windows_and_keep_touching_windows_apart():
    for latent_frames, window, overlap in ((1, 8, 2), (11, 8, 2), (41, 8, 2), (20, 8, 3), (30, 5, 0)):
        windows = plan_windows(latent_frames, window, overlap)
        assert fused_windows([(w.start, w.stop) for w in windows]) == windows
    touching = fused_windows([(0, 4), (4, 9)])
    assert [w.weights for w in touching] == [(1.0,) * 4, (1.0,) * 5], "windows that only touch do not blend"
    blended = fused_windows([(0, 6), (3, 9)])
    for t in range(9):
        assert sum(w.weights[t - w.start] for w in blended if w.start <= t < w.stop) == pytest.approx(1.0)
    assert blended[1].weights[:3] == tuple(sorted(blended[1].weights[:3]))
    with pytest.raises(ValueError, match="uncovered"):
        fused_windows([(0, 3), (4, 8)])
    with pytest.raises(ValueError, match="order"):
        fused_windows([(4, 8), (0, 5)])
    for bad in ([], [(2, 2)], [(-1, 3)]):
        with pytest.raises(ValueError):
            fused_windows(bad)


def causal_latent_of_frame(frame: int, factor: int) -> int:
    """The reference mapping, frame by frame: frame 0 alone in latent 0, then groups of ``factor``."""
    return 0 if frame == 0 else 1 + (frame - 1) // factor


@pytest.mark.parametrize("factor", [1, 2, 4, 8])
def test_time_grid_matches_the_causal_vae_frame_by_frame(factor):
    grid = TimeGrid(factor)
    frames_of = {}
    for frame in range(400):
        frames_of.setdefault(causal_latent_of_frame(frame, factor), []).append(frame)
    for latent, frames in list(frames_of.items())[:-1]:
        assert grid.pixel_range(latent) == (frames[0], frames[-1] + 1)
        assert grid.pixel_start(latent) == frames[0]
        assert grid.pixel_frames(latent + 1) == frames[-1] + 1
        assert grid.pixel_range(0, latent + 1) == (0, frames[-1] + 1)
    starts = {grid.pixel_frames(k) for k in range(1, 400)}  # the lengths 1 + f*k
    for n in range(1, 300):
        assert grid.latent_frames(n) == causal_latent_of_frame(n - 1, factor) + 1
        assert grid.pixel_frames(grid.latent_frames(n)) >= n > grid.pixel_start(grid.latent_frames(n) - 1)
        assert grid.floor_start(n) == max(s for s in starts if s <= n)
        assert grid.ceil_start(n) == min(s for s in starts if s >= n)
        assert grid.groups(n) * factor >= n > (grid.groups(n) - 1) * factor
        assert grid.round_groups(n) % factor == 0 and grid.round_groups(n) >= factor
        assert abs(grid.round_groups(n) - n) <= factor / 2 or grid.round_groups(n) == factor
        assert grid.round_start(n) in starts and grid.round_start(n) >= 1 + factor
        assert grid.round_groups(n, min_groups=3) >= 3 * factor
    assert grid.ceil_start(0) == 1 and grid.groups(0) == 0 and grid.pixel_range(3, 3) == (grid.pixel_start(3),) * 2


def test_time_grid_rejects_what_is_off_the_grid():
    grid = TimeGrid(4)
    for call in (lambda: grid.latent_frames(0), lambda: grid.pixel_frames(0), lambda: grid.pixel_start(-1),
                 lambda: grid.pixel_range(3, 2), lambda: grid.floor_start(0), lambda: grid.groups(-1), lambda: TimeGrid(0)):
        with pytest.raises(ValueError):
            call()


def test_geometry_frame_arithmetic_is_the_time_grid():
    assert GEOMETRY.time_grid == TimeGrid(GEOMETRY.temporal_factor)
    for n in range(1, 100):
        assert GEOMETRY.latent_frames(n) == GEOMETRY.time_grid.latent_frames(n)
        assert GEOMETRY.pixel_frames(n) == GEOMETRY.time_grid.pixel_frames(n)
    # the decode tiles of the planner sit on the same grid
    for tile in plan_decode_tiles(41, 160, GEOMETRY, tile=8, context=2):
        first, end = GEOMETRY.time_grid.pixel_range(tile.start, tile.stop)
        assert (tile.first_frame, tile.first_frame + tile.num_frames) == (first, min(end, 160))


def test_only_the_window_at_the_first_latent_frame_starts_the_video():
    import torch

    from tessera.serving.jobs.planner import plan_windows
    from tessera.serving.jobs.sampling import Sampler
    from tessera.serving.jobs.spec import GenerationRequest

    windows = plan_windows(20, 8, 2)
    spec = GenerationRequest(prompt="a red circle moving left", duration_s=2)
    latents = torch.zeros(8, 20, 4, 4)
    works = [Sampler._work(spec, w, None, latents, None, (1.0, 0.5)) for w in windows]
    assert len(works) >= 3
    assert [work.starts_video for work in works] == [True] + [False] * (len(works) - 1)
