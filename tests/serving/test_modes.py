"""Generation modes: request rules (specific messages) and latent layouts, as pure functions."""

from __future__ import annotations

import math

import pytest

from tessera.models.interface import LatentGeometry, ModelCard, ModelLimits
from tessera.serving.config import LimitsConfig
from tessera.serving.errors import InvalidRequestError
from tessera.serving.jobs.layout import edit_schedule
from tessera.serving.jobs.modes import plan_job, resample_indices
from tessera.serving.jobs.modes.multi_shot import segment_windows
from tessera.serving.jobs.planner import TilingOptions, plan_windows
from tessera.serving.jobs.spec import GenerationRequest, MediaInfo, MediaInput, Mode, ShotRequest
from tessera.serving.jobs.validation import resolve_request

GEOMETRY = LatentGeometry(
    latent_channels=8, spatial_factor=8, temporal_factor=4, patch_size=(1, 2, 2), native_window=8, decode_context=4
)


def card(max_image_side: int = 256) -> ModelCard:
    return ModelCard(
        family="native", name="test", version="0", geometry=GEOMETRY,
        limits=ModelLimits(
            min_side=32, max_side=256, max_image_side=max_image_side, min_fps=6, max_fps=12, default_fps=8,
            default_width=64, default_height=64, default_steps=20, max_steps=100, default_guidance_scale=4.0,
            max_prompt_tokens=128,
        ),
    )


LIMITS = LimitsConfig()
OPTIONS = TilingOptions(window=8, min_overlap=2, sync_every=1, decode_tile=8, decode_context=4, fit_windows=False)
INLINE = MediaInput(data=b"stand-in bytes: the media below says what they hold")


def image(width=64, height=48, fmt="png") -> MediaInfo:
    return MediaInfo(kind="image", format=fmt, width=width, height=height, frames=1, fps=0.0, size_bytes=10, sha256="0", source="inline")


def video(frames=17, fps=8.0, width=64, height=48) -> MediaInfo:
    return MediaInfo(kind="video", format="h264", width=width, height=height, frames=frames, fps=fps, size_bytes=10, sha256="0", source="inline")


def resolve(media: dict[str, MediaInfo] | None = None, max_image_side: int = 256, **fields):
    fields = {"prompt": "a red circle moving right", "steps": 10, **fields}
    for name in (media or {}):
        fields.setdefault(name, INLINE)
    return resolve_request(GenerationRequest(**fields), card(max_image_side), LIMITS, media or {})


def rejected(match: str, media=None, **fields) -> None:
    with pytest.raises(InvalidRequestError, match=match):
        resolve(media, **fields)


def check_plan(spec):
    """Every plan: windows cover the latent grid with weights summing to one; placements fit in it."""
    plan = plan_job(spec, GEOMETRY, OPTIONS)
    frames = plan.render.latent_frames
    totals = [0.0] * frames
    for window in plan.render.windows:
        for j, weight in enumerate(window.weights):
            totals[window.start + j] += weight
    assert all(math.isclose(t, 1.0) for t in totals)
    for placement in plan.given:
        assert 0 <= placement.latent_start < placement.latent_stop <= frames
    assert plan.render.decode_tiles[-1].first_frame + plan.render.decode_tiles[-1].num_frames == spec.num_frames
    return plan


# -- which mode ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "media", "mode"),
    [
        ({}, {}, Mode.TEXT_TO_VIDEO),
        ({"image": True}, {}, Mode.IMAGE),
        ({}, {"from_image": image()}, Mode.IMAGE_TO_VIDEO),
        ({"extend_seconds": 1}, {"extend_video": video()}, Mode.EXTEND),
        ({"strength": 0.5}, {"edit_video": video()}, Mode.EDIT),
        ({}, {"transition_from": video(), "transition_to": video()}, Mode.TRANSITION),
        ({"loop": True}, {}, Mode.LOOP),
        ({"shots": [ShotRequest(prompt="moving left", duration_s=1)]}, {}, Mode.MULTI_SHOT),
    ],
)
def test_each_mode_is_recognised_and_plannable(fields, media, mode):
    spec = resolve(media, **fields)
    assert spec.mode == mode
    check_plan(spec)


def test_two_modes_at_once_are_rejected():
    rejected("set one generation mode at a time; the request sets image and from_image", {"from_image": image()}, image=True)
    rejected("loop and shots", loop=True, shots=[ShotRequest(prompt="x", duration_s=1)])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"image_is_last_frame": True}, "image_is_last_frame applies only with from_image"),
        ({"extend_seconds": 2.0}, "extend_seconds applies only with extend_video"),
        ({"backward": True}, "backward applies only with extend_video"),
        ({"strength": 0.5}, "strength applies only with edit_video"),
        ({"transition_seconds": 1.0}, "transition_seconds applies only with transition_from and transition_to"),
        ({"character": "a red circle"}, "character applies only with shots"),
    ],
)
def test_a_mode_option_without_its_mode_is_rejected(fields, message):
    rejected(message, **fields)


def test_inline_data_and_uri_together_are_rejected():
    with pytest.raises(InvalidRequestError, match="set data or uri, not both"):
        resolve_request(
            GenerationRequest(prompt="x", from_image=MediaInput(uri="s3://b/default/a.png", data=b"x")), card(), LIMITS,
            {"from_image": image()},
        )


# -- image ---------------------------------------------------------------------------------


def test_image_is_one_frame_up_to_the_models_image_limit():
    spec = resolve(image=True, width=256, height=128)
    assert (spec.num_frames, spec.width, spec.height) == (1, 256, 128)
    rejected("width 512 is above the model's maximum of 256 px", image=True, width=512, height=512)
    large = resolve(image=True, width=2048, height=2048, max_image_side=2048)  # a large model's limit
    plan = check_plan(large)
    assert plan.render.latent_shape == (8, 1, 256, 256) and len(plan.render.decode_tiles) == 1
    rejected("leave duration_s and num_frames unset for image", image=True, duration_s=2)


# -- image to video ------------------------------------------------------------------------


def test_image_to_video_takes_the_images_size_and_places_it_first_or_last():
    spec = resolve({"from_image": image(96, 64)}, duration_s=2)
    assert (spec.width, spec.height, spec.num_frames) == (96, 64, 16)
    [first] = check_plan(spec).given
    assert (first.input, first.latent_start, first.latent_count, first.group_aligned) == ("from_image", 0, 1, False)
    last_spec = resolve({"from_image": image(96, 64)}, duration_s=2, image_is_last_frame=True)
    [last] = check_plan(last_spec).given
    assert (last.latent_start, last.latent_count, last.group_aligned) == (4, 1, True)


def test_image_inputs_of_the_wrong_size_or_kind_are_rejected():
    rejected(r"from_image is 100x60, which is not a size this model renders .* set width and height",
             {"from_image": image(100, 60)})
    assert resolve({"from_image": image(100, 60)}, width=64, height=64).width == 64  # scaled to cover instead
    rejected("from_image must be a PNG, JPEG or WebP image; got a gif image", {"from_image": image(fmt="gif")})
    rejected("from_image must be a PNG, JPEG or WebP image; got a h264 video", {"from_image": video()})
    rejected("extend_video must be a video; got a png image", {"extend_video": image()}, extend_seconds=1)


# -- extend --------------------------------------------------------------------------------


def test_extend_forward_keeps_whole_latent_groups_of_the_input():
    spec = resolve({"extend_video": video(frames=19)}, extend_seconds=1.5)
    [item] = spec.inputs
    assert item.frame_indices == tuple(range(17)), "19 frames: the last 2 do not fill a latent group"
    assert (spec.extend_frames, spec.num_frames) == (12, 29)
    [given] = check_plan(spec).given
    assert (given.latent_start, given.latent_count, given.group_aligned) == (0, 5, False)


def test_extend_backward_puts_the_whole_input_after_a_group_aligned_start():
    spec = resolve({"extend_video": video(frames=19)}, extend_seconds=1.5, backward=True)
    assert spec.extend_frames == 13, "12 new frames rounded up to 1 + 4k"
    assert spec.num_frames == 13 + 19
    plan = check_plan(spec)
    [given] = plan.given
    assert (given.latent_start, given.latent_count, given.group_aligned) == (4, 5, True)
    assert given.latent_stop == plan.render.latent_frames


def test_extend_resamples_the_input_to_the_output_rate_and_checks_the_total():
    spec = resolve({"extend_video": video(frames=48, fps=24.0)}, extend_seconds=1, fps=8)
    assert spec.inputs[0].frame_indices[:4] == (0, 3, 6, 9) and len(spec.inputs[0].frame_indices) == 13
    assert resolve({"extend_video": video(frames=20, fps=10.0)}, extend_seconds=1).fps == 10.0, "the input's own rate"
    rejected(r"the input \(60.125 s\) plus extend_seconds makes 62.125 s \(497 frames at 8 fps\), above the maximum of 60 s",
             {"extend_video": video(frames=481)}, extend_seconds=2)
    rejected("extend_seconds is required", {"extend_video": video()})
    rejected("extend_seconds must be a positive number of seconds, got -1", {"extend_video": video()}, extend_seconds=-1)
    rejected("leave duration_s and num_frames unset for extend", {"extend_video": video()}, extend_seconds=1, duration_s=3)


# -- edit ----------------------------------------------------------------------------------


def test_edit_noises_the_input_to_its_strength_and_runs_the_levels_below():
    spec = resolve({"edit_video": video(frames=17)}, strength=0.35)
    assert spec.num_frames == 17 and spec.strength == 0.35
    plan = check_plan(spec)
    assert plan.start_sigma == 0.35 and plan.given == ()
    assert plan.init.latent_count == plan.render.latent_frames
    schedule = [1.0, 0.8, 0.6, 0.4, 0.3, 0.2, 0.0]
    assert plan.schedule(schedule) == [0.35, 0.3, 0.2, 0.0]
    assert edit_schedule(schedule, 1.0) == [1.0, 0.8, 0.6, 0.4, 0.3, 0.2, 0.0], "full strength: the whole schedule"
    assert edit_schedule(schedule, 0.05) == [0.05, 0.0], "always at least one step"
    assert check_plan(resolve()).schedule(schedule) == schedule, "other modes use the model's schedule"


def test_edit_strength_and_length_rules():
    assert resolve({"edit_video": video()}).strength == 0.7
    for bad in (0.0, 1.5, -0.2, float("nan")):
        rejected("strength must be in \\(0, 1\\]", {"edit_video": video()}, strength=bad)
    assert resolve({"edit_video": video(frames=40)}, duration_s=2).num_frames == 16
    rejected("edit_video is 2.125 s; duration_s/num_frames can only shorten it", {"edit_video": video()}, duration_s=3)


# -- transition ----------------------------------------------------------------------------


def test_transition_keeps_both_videos_around_a_bridge():
    media = {"transition_from": video(frames=19), "transition_to": video(frames=10)}
    spec = resolve(media, transition_seconds=1.1)
    assert spec.transition_frames == 8
    assert spec.num_frames == 17 + 8 + 10
    first, second = check_plan(spec).given
    assert (first.latent_start, first.latent_count, first.group_aligned) == (0, 5, False)
    assert (second.latent_start, second.latent_count, second.group_aligned) == (7, 3, True)
    assert resolve(media).transition_frames == 16, "2 s by default"
    rejected("a transition needs both transition_from and transition_to; transition_to is missing",
             {"transition_from": video()})
    rejected(r"the inputs differ in size .* set width and height",
             {"transition_from": video(width=64), "transition_to": video(width=96)})


# -- loop ----------------------------------------------------------------------------------


def test_loop_is_a_circle_of_whole_groups_rolled_every_step():
    spec = resolve(loop=True, duration_s=3)
    assert spec.num_frames == 24
    plan = check_plan(spec)
    assert plan.render.latent_shape[1] == 6 and plan.given == () and plan.loop_context == 4
    assert plan.step_groups(10) == [(i, i + 1) for i in range(10)], "one step at a time, so the seam can move"
    rolls = [plan.roll(i) for i in range(6)]
    assert rolls[0] == 0 and len(set(rolls)) >= 3, rolls
    [tile] = plan.render.decode_tiles  # decoded after 4 groups of wrapped-around context
    assert (tile.input_start, tile.start, tile.stop, tile.first_frame, tile.num_frames) == (0, 4, 10, 0, 24)
    assert 23 in plan.seam_frame_pairs(4), "the last frame, then the first, is a seam"
    assert resolve(loop=True, duration_s=0.5).num_frames == 8, "at least two groups"
    long = check_plan(resolve(loop=True, duration_s=20))
    assert len(long.render.windows) > 1 and [t.first_frame for t in long.render.decode_tiles] == [0, 32, 64, 96, 128]
    assert plan_job(resolve(), GEOMETRY, OPTIONS).roll(3) == 0, "other modes never roll"


# -- multi-shot ----------------------------------------------------------------------------


def shots(*items):
    return [ShotRequest(prompt=p, duration_s=d, transition=t) for p, d, t in items]


def test_multi_shot_texts_and_frames():
    spec = resolve(prompt="", character="a red circle",
                   shots=shots(("moving to the left", 2, "CUT"), ("moving to the right", 3, "BLEND")))
    assert [s.text for s in spec.shots] == ["a red circle, moving to the left", "a red circle, moving to the right"]
    assert [s.num_frames for s in spec.shots] == [17, 24]
    assert spec.num_frames == 41 and spec.character == "a red circle"


def test_a_cut_keeps_windows_apart_and_a_blend_overlaps_them():
    cut = check_plan(resolve(shots=shots(("left", 4, "CUT"), ("right", 4, "CUT"))))
    first, second = cut.shots
    assert (first.latent_start, first.latent_stop, second.latent_start, second.latent_stop) == (0, 9, 9, 17)
    for window in cut.render.windows:
        owner = cut.shots[cut.prompt_of(window)]
        assert owner.latent_start <= window.start and window.stop <= owner.latent_stop, "no window crosses a cut"
    blend = check_plan(resolve(shots=shots(("left", 4, "CUT"), ("right", 4, "BLEND"))))
    crossing = [w for w in blend.render.windows if w.start < 9 < w.stop]
    assert {blend.prompt_of(w) for w in crossing} == {0, 1}, "both shots' windows reach across the boundary"


def test_multi_shot_rules():
    rejected("17 shots is more than the limit of 16", shots=shots(*[("left", 1, "CUT")] * 17))
    rejected(r"the shots together makes 62.* above the maximum of 60 s", shots=shots(("left", 31, "CUT"), ("right", 31, "CUT")))
    rejected(r"shots\[1\].prompt is empty", shots=shots(("left", 1, "CUT"), (" ", 1, "CUT")))
    rejected(r"shots\[0\].duration_s is required", shots=shots(("left", 0, "CUT")))
    rejected("leave duration_s and num_frames unset for multi_shot", shots=shots(("left", 1, "CUT")), duration_s=2)
    rejected("prompt is empty", prompt="")  # only multi-shot may leave the prompt empty


def test_segment_windows_of_one_segment_are_the_planners_windows():
    for frames in (1, 5, 8, 9, 23, 41):
        windows, owners = segment_windows([(0, frames)], 8, 2)
        assert windows == plan_windows(frames, 8, 2) and set(owners) == {0}


# -- size and rate -------------------------------------------------------------------------


def test_aspect_ratio_and_short_side():
    spec = resolve(aspect_ratio="16:9", short_side=64)
    assert (spec.width, spec.height) == (112, 64)
    spec = resolve(aspect_ratio="9:16", short_side=48)
    assert (spec.width, spec.height) == (48, 80)
    assert (resolve(aspect_ratio="2:1").width, resolve(aspect_ratio="2:1").height) == (128, 64)
    spec = resolve({"from_image": image(96, 64)}, short_side=32)  # keeps the image's aspect
    assert (spec.width, spec.height) == (48, 32)
    rejected("aspect_ratio 'wide' is not of the form W:H", aspect_ratio="wide")
    rejected("set width/height or aspect_ratio/short_side, not both", aspect_ratio="1:1", width=64)


def test_resample_indices_keep_the_duration():
    assert resample_indices(5, 8.0, 8.0) == (0, 1, 2, 3, 4)
    assert resample_indices(24, 24.0, 8.0) == tuple(range(0, 24, 3))
    assert resample_indices(4, 4.0, 8.0) == (0, 0, 1, 1, 2, 2, 3, 3)
