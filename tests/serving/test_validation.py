"""Request validation: every rule has a specific message, and defaults resolve."""

from __future__ import annotations

import math

import pytest

from tessera.models.interface import LatentGeometry, ModelCard, ModelLimits
from tessera.serving.config import LimitsConfig
from tessera.serving.errors import InvalidRequestError
from tessera.serving.jobs.spec import GenerationRequest
from tessera.serving.jobs.validation import resolve_request

CARD = ModelCard(
    family="native",
    name="test",
    version="0",
    geometry=LatentGeometry(
        latent_channels=8, spatial_factor=8, temporal_factor=4, patch_size=(1, 2, 2), native_window=8, decode_context=2
    ),
    limits=ModelLimits(
        min_side=32, max_side=256, max_image_side=512, min_fps=4, max_fps=24, default_fps=8,
        default_width=64, default_height=64, default_steps=25, max_steps=200, default_guidance_scale=4.0,
        max_prompt_tokens=128,
    ),
)
LIMITS = LimitsConfig()


def resolve(**fields):
    return resolve_request(GenerationRequest(**{"prompt": "a red circle moving right", **fields}), CARD, LIMITS)


def test_defaults_resolve():
    spec = resolve()
    assert (spec.width, spec.height, spec.fps, spec.steps, spec.guidance_scale) == (64, 64, 8, 25, 4.0)
    assert spec.num_frames == 16 and spec.duration_s == 2.0
    assert 0 <= spec.seed < 2**63 and spec.expand_prompt


def test_explicit_values_are_kept():
    spec = resolve(duration_s=3.5, width=96, height=48, fps=12, seed=7, steps=10, guidance_scale=0.0,
                   skip_prompt_expansion=True, priority=-3)
    assert (spec.num_frames, spec.width, spec.height, spec.seed, spec.steps) == (42, 96, 48, 7, 10)
    assert spec.guidance_scale == 0.0 and not spec.expand_prompt and spec.priority == -3


def test_num_frames_and_single_image():
    assert resolve(num_frames=1, width=512, height=512).num_frames == 1  # images may be larger than videos
    assert resolve(num_frames=480).num_frames == 480


@pytest.mark.parametrize(
    "fields,message",
    [
        (dict(prompt=""), "prompt is empty"),
        (dict(prompt="   \n"), "prompt is empty"),
        (dict(prompt="x" * 2001), "prompt has 2001 characters; the limit is 2000"),
        (dict(negative_prompt="x" * 2001), "negative_prompt has 2001 characters"),
        (dict(prompt="a\x00b"), "NUL"),
        (dict(duration_s=2, num_frames=16), "set duration_s or num_frames, not both"),
        (dict(duration_s=-1), "duration_s must be positive"),
        (dict(duration_s=61), "duration_s 61 is above the maximum of 60 s"),
        (dict(duration_s=math.nan), "duration_s must be a finite number"),
        (dict(duration_s=math.inf), "duration_s must be a finite number"),
        (dict(num_frames=-5), "num_frames must be at least 1"),
        (dict(num_frames=481), "above the maximum of 60 s"),
        (dict(fps=2), "fps 2 is out of range: this model renders 4 to 24 fps"),
        (dict(fps=120), "fps 120 is out of range"),
        (dict(width=-64), "width must be a positive number of pixels"),
        (dict(width=100), "width 100 is not a multiple of 16 (the model's size multiple); try 96 or 112"),
        (dict(height=8), "height 8 is not a multiple of 16"),
        (dict(height=16), "height 16 is below the model's minimum of 32 px"),
        (dict(width=272), "width 272 is above the model's maximum of 256 px"),
        (dict(num_frames=1, width=528), "width 528 is above the model's maximum of 512 px"),
        (dict(steps=-1), "steps must be between 1 and 200"),
        (dict(steps=201), "steps must be between 1 and 200"),
        (dict(guidance_scale=-1), "guidance_scale must be between 0 and 30"),
        (dict(guidance_scale=math.nan), "guidance_scale must be a finite number"),
        (dict(seed=-1), "seed must be between 0 and 2^64-1"),
        (dict(priority=11), "priority must be between -10 and 10"),
        (dict(idempotency_key="has space"), "idempotency_key must be 1 to 128 printable ASCII"),
        (dict(idempotency_key="k" * 129), "idempotency_key must be 1 to 128"),
    ],
)
def test_bad_input_has_a_specific_message(fields, message):
    with pytest.raises(InvalidRequestError) as caught:
        resolve(**fields)
    assert message in caught.value.message
    assert caught.value.code_name == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    "fields,message",
    [
        (dict(fps=math.inf), "fps must be a finite number, got inf (4 <= fps <= 24)"),
        (dict(duration_s=1e308), "duration_s 1e+308 is above the maximum of 60 s"),
        (dict(guidance_scale=-math.inf), "guidance_scale must be a finite number"),
        (dict(character="x" * 2001), "character has 2001 characters; the limit is 2000"),
        (dict(negative_prompt="a\x00b"), "negative_prompt contains a NUL character"),
        (dict(prompt="a\udc80b"), "prompt is not valid Unicode text"),
        (dict(aspect_ratio="1" * 40), "aspect_ratio has 40 characters"),
        (dict(aspect_ratio="x" * 30), "aspect_ratio 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' is not of the form W:H"),
        (dict(short_side=10**6), "short_side 1000000 is above the model's maximum of 512 px"),
        (dict(width=10**9), "width 1000000000 is above the model's maximum of 512 px"),
        (dict(seed=2**64), "seed must be between 0 and 2^64-1"),
        (dict(priority=-(2**31)), "priority must be between -10 and 10"),
        (dict(extend_seconds=1e308), "extend_seconds 1e+308 is above the maximum of 60 s (0 < extend_seconds <= 60 s)"),
        (dict(transition_seconds=math.nan), "transition_seconds must be a finite number, got nan"),
        (dict(strength=math.inf), "strength must be in (0, 1], got inf"),
        (dict(prompt="", shots=[dict(prompt="a", duration_s=1e308)]), "shots[0].duration_s 1e+308 is above the maximum of 60 s"),
        (dict(prompt="", shots=[dict(prompt="a", duration_s=1)] * 17), "17 shots is more than the limit of 16"),
    ],
)
def test_every_field_is_checked_before_any_arithmetic(fields, message):
    """Range checks that run first (check_request), whatever the mode: no OverflowError from round(1e308 * fps)."""
    with pytest.raises(InvalidRequestError) as caught:
        resolve(**fields)
    assert message in caught.value.message
    assert len(caught.value.message) < 300
