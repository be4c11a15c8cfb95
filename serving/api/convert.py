"""Between the wire (``tessera.v1`` protobuf messages) and Tessera's plain records."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import ValidationError

from tessera.serving.api import tessera_pb2 as pb
from tessera.serving.errors import InvalidRequestError, validation_message
from tessera.serving.jobs.records import JobRecord, JobState, Progress, Stage
from tessera.serving.jobs.spec import GenerationRequest, MediaInput, Mode, ShotRequest, ShotTransition
from tessera.serving.storage import ObjectStore


_MEDIA_FIELDS = ("from_image", "extend_video", "edit_video", "transition_from", "transition_to")


def _media_from_proto(message: pb.GenerateRequest, name: str) -> MediaInput | None:
    if not message.HasField(name):
        return None
    media = getattr(message, name)
    if not media.uri and not media.data:
        return None
    return MediaInput(uri=media.uri, data=media.data if media.data else None)


MAX_WIRE_SHOTS = 1024
"""Most shots converted at all; the deployment's own limit (``limits.max_shots``) is checked in
validation. This only keeps a message packed with millions of empty shots from costing seconds."""

_TRANSITIONS = {
    pb.SHOT_TRANSITION_UNSPECIFIED: ShotTransition.CUT,
    pb.CUT: ShotTransition.CUT,
    pb.BLEND: ShotTransition.BLEND,
}


def _transition(index: int, value: int) -> ShotTransition:
    try:
        return _TRANSITIONS[value]
    except KeyError:  # proto3 enums are open: an unknown number arrives as itself
        raise InvalidRequestError(f"shots[{index}].transition {value} is not a known value (CUT=1 or BLEND=2)") from None


def request_from_proto(message: pb.GenerateRequest) -> GenerationRequest:
    """proto3 scalars have no 'unset': zero means 'use the default' except where the field is optional.

    Raises :class:`InvalidRequestError` (never a pydantic ValidationError) for what cannot be
    represented: unknown enum values, absurdly many shots. Ranges are checked by validation."""
    if len(message.shots) > MAX_WIRE_SHOTS:
        raise InvalidRequestError(f"{len(message.shots)} shots is more than this API accepts ({MAX_WIRE_SHOTS})")
    try:
        return GenerationRequest(
            aspect_ratio=message.aspect_ratio,
            short_side=message.short_side or None,
            image=message.image,
            image_is_last_frame=message.image_is_last_frame,
            extend_seconds=message.extend_seconds or None,
            backward=message.backward,
            strength=message.strength if message.HasField("strength") else None,
            transition_seconds=message.transition_seconds or None,
            loop=message.loop,
            shots=tuple(
                ShotRequest(prompt=shot.prompt, duration_s=shot.duration_s, transition=_transition(index, shot.transition))
                for index, shot in enumerate(message.shots)
            ),
            character=message.character,
            **{name: _media_from_proto(message, name) for name in _MEDIA_FIELDS},
            prompt=message.prompt,
            negative_prompt=message.negative_prompt,
            duration_s=message.duration_s or None,
            num_frames=message.num_frames or None,
            width=message.width or None,
            height=message.height or None,
            fps=message.fps or None,
            seed=message.seed if message.HasField("seed") else None,
            steps=message.steps or None,
            guidance_scale=message.guidance_scale if message.HasField("guidance_scale") else None,
            idempotency_key=message.idempotency_key,
            priority=message.priority,
            skip_prompt_expansion=message.skip_prompt_expansion,
        )
    except ValidationError as error:
        raise InvalidRequestError(validation_message(error, "the request")) from None


def request_to_proto(request: GenerationRequest) -> pb.GenerateRequest:
    """The request as a message; inline media carries its bytes when it still has them, else only their SHA-256."""
    fields = request.model_dump(exclude_none=True, exclude={*_MEDIA_FIELDS, "shots"})
    message = pb.GenerateRequest(**fields)
    for name in _MEDIA_FIELDS:
        media: MediaInput | None = getattr(request, name)
        if media is not None and media.is_set:
            target = getattr(message, name)
            target.uri = media.uri
            if media.data is not None:
                target.data = media.data
            elif media.sha256:
                target.sha256 = media.sha256
    for shot in request.shots:
        message.shots.add(prompt=shot.prompt, duration_s=shot.duration_s, transition=pb.ShotTransition.Value(shot.transition.value))
    return message


def mode_to_proto(mode: Mode) -> int:
    return pb.GenerationMode.Value(f"MODE_{mode.name}")


def state_to_proto(state: JobState) -> int:
    return pb.JobState.Value(state.value)


def state_from_proto(value: int) -> JobState | None:
    if value == pb.JOB_STATE_UNSPECIFIED:
        return None
    return JobState(pb.JobState.Name(value))


def progress_to_proto(progress: Progress, store: ObjectStore) -> pb.Progress:
    message = pb.Progress(
        stage=pb.Stage.Value(f"STAGE_{progress.stage.value}"),
        step=progress.step,
        total_steps=progress.total_steps,
        segments_done=progress.segments_done,
        total_segments=progress.total_segments,
        fraction=progress.fraction,
    )
    if progress.segment_key:
        message.segment_uri = store.uri(progress.segment_key)
        message.segment_url = store.presign_get(progress.segment_key)
    return message


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def job_to_proto(record: JobRecord, store: ObjectStore) -> pb.Job:
    """A job for the caller; presigned URLs are signed afresh on every answer."""
    spec = record.spec
    job = pb.Job(
        job_id=record.job_id,
        state=state_to_proto(record.state),
        progress=progress_to_proto(record.progress, store),
        expanded_prompt=record.expanded_prompt,
        seed=spec.seed,
        timings=pb.StageTimings(**record.timings.model_dump()),
        request=request_to_proto(record.request),
        created_at=_timestamp(record.created_at),
        updated_at=_timestamp(record.updated_at),
        model=record.model,
        width=spec.width,
        height=spec.height,
        num_frames=spec.num_frames,
        fps=spec.fps,
        duration_s=spec.duration_s,
        mode=mode_to_proto(spec.mode),
    )
    if record.state == JobState.SUCCEEDED:
        if record.video_key:
            job.video_uri = store.uri(record.video_key)
            job.video_url = store.presign_get(record.video_key)
        if record.image_key:
            job.image_uri = store.uri(record.image_key)
            job.image_url = store.presign_get(record.image_key)
        job.poster_uri = store.uri(record.poster_key)
        job.poster_url = store.presign_get(record.poster_key)
        job.manifest_uri = store.uri(record.manifest_key)
    if record.state == JobState.FAILED:
        job.error.code = record.error_code
        job.error.message = record.error_message
    return job


def stage_name(value: int) -> str:
    return Stage(pb.Stage.Name(value).removeprefix("STAGE_")).value if value else "UNSPECIFIED"
