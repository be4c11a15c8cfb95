"""Generation modes: one module per mode, and this registry, the one place a mode is looked up.

Each module of this package holds everything one mode does differently (see
:class:`~tessera.serving.jobs.modes.base.ModeRules`): which request fields select it and apply
only with it, the kinds of its inputs, how it resolves into a :class:`RenderSpec` (its checks
and messages), how it is laid out on the latent grid, and what it adds to the manifest. The
rest of serving asks :func:`rules_for` instead of comparing modes, so adding a mode is one new
module here plus its line in :data:`REGISTRY` (and its fields in ``spec.py``, the API's proto
and the model card's list, ``models.interface.MODES``).
"""

from __future__ import annotations

from tessera.models.interface import LatentGeometry, ModelCard, UnsupportedModeError
from tessera.serving.errors import FailedPreconditionError, InvalidRequestError
from tessera.serving.jobs.layout import JobPlan
from tessera.serving.jobs.modes.base import VIDEO, ModeRules, is_set, require_kind, resample_indices
from tessera.serving.jobs.modes.edit import Edit
from tessera.serving.jobs.modes.extend import Extend
from tessera.serving.jobs.modes.image import Image
from tessera.serving.jobs.modes.image_to_video import ImageToVideo
from tessera.serving.jobs.modes.loop import Loop
from tessera.serving.jobs.modes.multi_shot import MultiShot, shot_text
from tessera.serving.jobs.modes.text_to_video import TextToVideo
from tessera.serving.jobs.modes.transition import Transition
from tessera.serving.jobs.planner import TilingOptions, plan_render
from tessera.serving.jobs.spec import GenerationRequest, MediaInfo, Mode, RenderSpec

__all__ = [
    "INPUT_KINDS", "MEDIA_FIELDS", "REGISTRY", "VIDEO_FIELDS", "ModeRules", "check_media", "detect_mode", "plan_job",
    "resample_indices", "rules_for", "select_mode", "shot_text",
]

REGISTRY: dict[Mode, ModeRules] = {
    rules.mode: rules
    for rules in (TextToVideo(), Image(), ImageToVideo(), Extend(), Edit(), Transition(), Loop(), MultiShot())
}
"""Every mode's rules, in the order their fields are checked (and named in messages)."""
DEFAULT_MODE = Mode.TEXT_TO_VIDEO
"""The mode of a request that sets no mode field."""
INPUT_KINDS: dict[str, str] = {name: kind for rules in REGISTRY.values() for name, kind in rules.inputs.items()}
"""Every media field, and the kind of file it must hold."""
MEDIA_FIELDS = tuple(INPUT_KINDS)
VIDEO_FIELDS = tuple(name for name, kind in INPUT_KINDS.items() if kind == VIDEO)


def rules_for(mode: Mode) -> ModeRules:
    return REGISTRY[mode]


def detect_mode(request: GenerationRequest) -> Mode:
    """The mode a request's fields select; two modes at once, or a mode option without its mode, is an error."""
    chosen = [rules for rules in REGISTRY.values() if rules.selected(request)]
    if len(chosen) > 1:
        names = " and ".join("/".join(rules.selected_by) for rules in chosen)
        raise InvalidRequestError(f"set one generation mode at a time; the request sets {names}")
    mode = chosen[0].mode if chosen else DEFAULT_MODE
    for rules in REGISTRY.values():
        for option in rules.options:
            if rules.mode != mode and is_set(request, option):
                raise InvalidRequestError(f"{option} applies only with {' and '.join(rules.selected_by)}")
    for name, item in request.media().items():
        if item.uri and item.data is not None:
            raise InvalidRequestError(f"{name}: set data or uri, not both")
    return mode


def select_mode(request: GenerationRequest, card: ModelCard) -> ModeRules:
    """The rules of the mode ``request`` selects, if the model serves it: the one place a request's
    mode is checked against the registry and the model's card (FAILED_PRECONDITION when not)."""
    mode = detect_mode(request)
    rules = rules_for(mode)
    try:
        card.require_mode(mode.value)
        for option in rules.options:  # an option of the mode the family cannot honour (image_is_last_frame...)
            if is_set(request, option):
                card.require_option(option, mode.value)
    except UnsupportedModeError as error:
        raise FailedPreconditionError(str(error)) from None
    return rules


def check_media(rules: ModeRules, media: dict[str, MediaInfo]) -> None:
    """Each input is of the kind its field needs (an image for from_image, videos elsewhere), and
    the inputs together are what the mode needs."""
    for name, info in media.items():
        require_kind(name, INPUT_KINDS[name], info)
    rules.check_inputs(media)


def plan_job(spec: RenderSpec, geometry: LatentGeometry, options: TilingOptions) -> JobPlan:
    """The full plan of a resolved request: the render plan, laid out by the spec's mode."""
    render = plan_render(spec.num_frames, spec.height, spec.width, geometry, options)
    return rules_for(spec.mode).plan(spec, render, geometry.time_grid, options)
