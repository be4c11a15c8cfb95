"""Multi-shot (``shots``, ``character``): one video, one seed, a prompt per shot.

Each shot is captioned with the shared character (:func:`shot_text`) and is a segment of
windows conditioned on its own prompt. The first shot starts the video (``1 + f*k`` frames),
later ones are whole groups of f. A CUT keeps segments apart (no window or fusion crosses it);
a BLEND lets the two shots' windows overlap across the boundary so fusion mixes them."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from tessera.models.interface import TimeGrid, VideoModel
from tessera.serving.errors import InvalidRequestError
from tessera.serving.jobs.layout import JobPlan, ShotRange
from tessera.serving.jobs.modes.base import Length, ModeRules, ResolveContext, check_total, seconds_to_frames
from tessera.serving.jobs.planner import RenderPlan, TilingOptions, Window, fused_windows, plan_windows
from tessera.serving.jobs.spec import GenerationRequest, Mode, RenderSpec, ShotSpec, ShotTransition
from tessera.serving.stages import Conditioning


class MultiShot(ModeRules):
    mode = Mode.MULTI_SHOT
    selected_by = ("shots",)
    options = ("character",)
    length = Length.OWN
    own_length_reason = "the output is the sum of the shots' durations"
    prompt_required = False  # each shot has its own

    def resolve(self, request: GenerationRequest, context: ResolveContext) -> dict:
        grid, fps, limits = context.grid, context.fps, context.limits
        if len(request.shots) > limits.max_shots:
            raise InvalidRequestError(f"{len(request.shots)} shots is more than the limit of {limits.max_shots}")
        shots = []
        for index, shot in enumerate(request.shots):
            if not shot.prompt.strip():
                raise InvalidRequestError(f"shots[{index}].prompt is empty: describe what happens in the shot")
            if len(shot.prompt) > limits.max_prompt_chars:
                raise InvalidRequestError(
                    f"shots[{index}].prompt has {len(shot.prompt)} characters; the limit is {limits.max_prompt_chars}"
                )
            wanted = seconds_to_frames(f"shots[{index}].duration_s", shot.duration_s or None, None, fps)
            # The first shot starts the video (1 + f*k frames), later ones are whole groups of f.
            frames = grid.round_start(wanted) if index == 0 else grid.round_groups(wanted)
            shots.append(ShotSpec(
                prompt=shot.prompt, text=shot_text(request.character, request.prompt, shot.prompt),
                num_frames=frames, transition=shot.transition,
            ))
        total = sum(s.num_frames for s in shots)
        check_total(total, fps, limits, "the shots together")
        if len(request.character) > limits.max_prompt_chars:
            raise InvalidRequestError(f"character has {len(request.character)} characters; the limit is {limits.max_prompt_chars}")
        return {"num_frames": total, "shots": tuple(shots), "character": request.character}

    def plan(self, spec: RenderSpec, render: RenderPlan, grid: TimeGrid, options: TilingOptions) -> JobPlan:
        ranges, segments = [], []
        first_frame, latent = 0, 0
        for index, shot in enumerate(spec.shots):
            count = grid.latent_frames(shot.num_frames) if index == 0 else grid.groups(shot.num_frames)
            ranges.append(ShotRange(index, first_frame, shot.num_frames, latent, latent + count, shot.transition.value))
            first_frame += shot.num_frames
            latent += count
        # A blended boundary: each side's windows reach `half` latent frames into the other shot.
        half = max(1, min(options.min_overlap, (options.window - options.min_overlap) // 2))
        for index, shot_range in enumerate(ranges):
            start, stop = shot_range.latent_start, shot_range.latent_stop
            if index > 0 and spec.shots[index].transition == ShotTransition.BLEND:
                start = max(ranges[index - 1].latent_start, start - half)
            if index + 1 < len(ranges) and spec.shots[index + 1].transition == ShotTransition.BLEND:
                stop = min(ranges[index + 1].latent_stop, stop + half)
            segments.append((start, stop))
        windows, owners = segment_windows(segments, options.window, options.min_overlap)
        return JobPlan(self.mode, dataclasses.replace(render, windows=windows), window_prompts=owners, shots=tuple(ranges))

    def manifest(self, spec: RenderSpec, plan: JobPlan, model: VideoModel, conditionings: Sequence[Conditioning]) -> dict:
        fps = spec.fps
        shots = [
            {"index": r.index, "prompt": shot.prompt, "text": shot.text, "caption": c.caption, "expander": c.expander,
             "transition": r.transition, "first_frame": r.first_frame, "num_frames": r.num_frames,
             "start_s": r.first_frame / fps, "end_s": (r.first_frame + r.num_frames) / fps,
             "latents": [r.latent_start, r.latent_stop]}
            for r, shot, c in zip(plan.shots, spec.shots, conditionings, strict=True)
        ]
        return {"shots": shots, "character": spec.character}


def shot_text(character: str, prompt: str, shot_prompt: str) -> str:
    """What a shot is conditioned on: the shared description first, then the shot's own prompt."""
    return ", ".join(part.strip().rstrip(".,;") for part in (character, prompt, shot_prompt) if part.strip())


def segment_windows(segments: list[tuple[int, int]], window: int, min_overlap: int) -> tuple[tuple[Window, ...], tuple[int, ...]]:
    """Windows over each segment ``[start, stop)`` (spread like :func:`plan_windows`), with fusion
    weights over all of them, and the segment each window belongs to.

    Weights ramp across a window's overlap with the previous and next window (whichever
    segment they belong to) and are normalised to sum to one per frame, so segments that
    overlap blend there and segments that only touch stay apart (:func:`fused_windows`)."""
    spans: list[tuple[int, int, int]] = []
    for owner, (start, stop) in enumerate(segments):
        for w in plan_windows(stop - start, window, min_overlap):
            spans.append((start + w.start, start + w.stop, owner))
    spans.sort()
    windows = fused_windows([(start, stop) for start, stop, _ in spans])
    return windows, tuple(owner for _, _, owner in spans)
