"""Shapes world, captions and prompt expansion."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.models.shapes.captions import (
    detailed_caption,
    expand,
    parse_prompt,
    random_attributes,
    short_caption,
    training_captions,
)
from tessera.models.shapes.world import (
    DIRECTIONS,
    COLOURS,
    HELD_OUT,
    ClipSpec,
    centre_track,
    render,
    sample_spec,
)


def test_render_shape_dtype_and_colours():
    spec = ClipSpec("red", "square", "large", "fast", "right", "white", width=80, height=48, fps=8.0,
                    num_frames=7, start=(0.5, 0.5))
    video = render(spec)
    assert video.shape == (7, 48, 80, 3) and video.dtype == np.uint8
    centre = video[0, 24, 40]
    assert tuple(centre) == COLOURS["red"]
    assert tuple(video[0, 0, 0]) == (240, 240, 240)


def test_directional_motion_wraps_around_the_frame():
    spec = ClipSpec("blue", "circle", "small", "fast", "left", "black", width=64, height=64, fps=8.0,
                    num_frames=40, start=(0.1, 0.5))
    track = centre_track(spec)
    assert np.all((track[:, 0] >= 0) & (track[:, 0] < 64))
    steps = np.diff(track[:, 0])
    wrapped = np.mod(steps + 32, 64) - 32
    assert np.allclose(wrapped, -spec.speed_px_per_frame)
    # Drawn split across the edge when it crosses it: both sides of the frame show the object.
    video = render(spec)
    crossing = int(np.argmin(np.abs(track[:, 0] - 0)))
    frame = video[crossing]
    assert frame[32, 0].max() > 0 and frame[32, 63].max() > 0


def test_bounce_stays_inside_and_reflects():
    spec = ClipSpec("green", "square", "medium", "fast", "bounce", "grey", width=48, height=64, fps=6.0,
                    num_frames=60, start=(0.5, 0.5), bounce_signs=(1, -1))
    track = centre_track(spec)
    radius = spec.diameter_px / 2
    assert track[:, 0].min() >= radius - 1e-6 and track[:, 0].max() <= 48 - radius + 1e-6
    assert (np.diff(np.sign(np.diff(track[:, 0]))) != 0).any()


def test_held_out_combinations_never_in_training_split():
    rng = np.random.default_rng(0)
    for _ in range(500):
        spec = sample_spec(rng, split="train")
        assert not spec.is_held_out
    for _ in range(50):
        assert sample_spec(rng, split="heldout").is_held_out
    assert len(HELD_OUT) == 6 and {c for c, _, _ in HELD_OUT} == set(COLOURS)


def test_short_captions_parse_back_to_their_attributes():
    rng = np.random.default_rng(1)
    full = {"colour": "cyan", "shape": "square", "size": "large", "speed": "slow", "motion": "down", "background": "grey"}
    for motion in ("left", "right", "up", "down", "bounce"):
        for _ in range(40):
            attributes = random_attributes({**full, "motion": motion}, rng)
            caption = short_caption(attributes, rng)
            assert parse_prompt(caption) == attributes, caption


def test_detailed_caption_parses_back_and_expand_is_deterministic():
    attributes = {"colour": "yellow", "shape": "circle", "size": "small", "speed": "fast", "motion": "up", "background": "black"}
    caption = detailed_caption(attributes)
    assert parse_prompt(caption) == attributes
    assert expand("a tiny golden ball rising quickly on black") == caption
    assert expand(caption) == caption
    assert expand("red box going left") == expand("red box going left")


def test_expand_keeps_unknown_words_and_synonyms_map():
    expanded = expand("a purple disc sliding right under a starry sky")
    assert expanded.startswith("A magenta circle moves to the right")
    assert "starry sky" in expanded
    assert parse_prompt("Crimson cube heading towards the top")["motion"] == "up"


@pytest.mark.parametrize("count", [1, 5, 7])
def test_training_captions_are_varied_and_consistent(count):
    rng = np.random.default_rng(2)
    full = {"colour": "red", "shape": "circle", "size": "medium", "speed": "medium", "motion": "left", "background": "white"}
    captions = training_captions(full, rng, count)
    assert len(captions) == count
    for caption in captions:
        parsed = parse_prompt(caption)
        assert all(full[key] == value for key, value in parsed.items()), caption


def test_entering_objects_start_on_the_side_they_move_away_from():
    rng = np.random.default_rng(3)
    for motion in ("left", "right", "up", "down"):
        for _ in range(50):
            spec = sample_spec(rng, split="all", motions=(motion,), start_policy="entering")
            dx, dy = DIRECTIONS[motion]
            along = spec.start[0] if dx else spec.start[1]
            trailing = along if (dx + dy) > 0 else 1.0 - along
            # Trailing 30% of the frame, or up to 10% past the edge (wrapped onto the far side).
            assert trailing <= 0.3 + 1e-9 or trailing >= 0.9 - 1e-9, (motion, spec.start)
    bounce = sample_spec(rng, split="all", motions=("bounce",), start_policy="entering")
    radius = bounce.diameter_px / 2
    assert radius <= bounce.start[0] * bounce.width <= bounce.width - radius
    with pytest.raises(ValueError, match="start_policy"):
        sample_spec(rng, start_policy="middle")
