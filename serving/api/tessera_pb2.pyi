import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ShotTransition(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SHOT_TRANSITION_UNSPECIFIED: _ClassVar[ShotTransition]
    CUT: _ClassVar[ShotTransition]
    BLEND: _ClassVar[ShotTransition]

class GenerationMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODE_UNSPECIFIED: _ClassVar[GenerationMode]
    MODE_TEXT_TO_VIDEO: _ClassVar[GenerationMode]
    MODE_IMAGE: _ClassVar[GenerationMode]
    MODE_IMAGE_TO_VIDEO: _ClassVar[GenerationMode]
    MODE_EXTEND: _ClassVar[GenerationMode]
    MODE_EDIT: _ClassVar[GenerationMode]
    MODE_TRANSITION: _ClassVar[GenerationMode]
    MODE_LOOP: _ClassVar[GenerationMode]
    MODE_MULTI_SHOT: _ClassVar[GenerationMode]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    QUEUED: _ClassVar[JobState]
    RUNNING: _ClassVar[JobState]
    SUCCEEDED: _ClassVar[JobState]
    FAILED: _ClassVar[JobState]
    CANCELLED: _ClassVar[JobState]

class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_UNSPECIFIED: _ClassVar[Stage]
    STAGE_QUEUED: _ClassVar[Stage]
    STAGE_EXPANDING_PROMPT: _ClassVar[Stage]
    STAGE_DENOISING: _ClassVar[Stage]
    STAGE_DECODING: _ClassVar[Stage]
    STAGE_FINALIZING: _ClassVar[Stage]
    STAGE_DONE: _ClassVar[Stage]
SHOT_TRANSITION_UNSPECIFIED: ShotTransition
CUT: ShotTransition
BLEND: ShotTransition
MODE_UNSPECIFIED: GenerationMode
MODE_TEXT_TO_VIDEO: GenerationMode
MODE_IMAGE: GenerationMode
MODE_IMAGE_TO_VIDEO: GenerationMode
MODE_EXTEND: GenerationMode
MODE_EDIT: GenerationMode
MODE_TRANSITION: GenerationMode
MODE_LOOP: GenerationMode
MODE_MULTI_SHOT: GenerationMode
JOB_STATE_UNSPECIFIED: JobState
QUEUED: JobState
RUNNING: JobState
SUCCEEDED: JobState
FAILED: JobState
CANCELLED: JobState
STAGE_UNSPECIFIED: Stage
STAGE_QUEUED: Stage
STAGE_EXPANDING_PROMPT: Stage
STAGE_DENOISING: Stage
STAGE_DECODING: Stage
STAGE_FINALIZING: Stage
STAGE_DONE: Stage

class GenerateRequest(_message.Message):
    __slots__ = ("prompt", "negative_prompt", "duration_s", "num_frames", "width", "height", "fps", "seed", "steps", "guidance_scale", "idempotency_key", "priority", "skip_prompt_expansion", "aspect_ratio", "short_side", "image", "from_image", "image_is_last_frame", "extend_video", "extend_seconds", "backward", "edit_video", "strength", "transition_from", "transition_to", "transition_seconds", "loop", "shots", "character")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    NUM_FRAMES_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    SKIP_PROMPT_EXPANSION_FIELD_NUMBER: _ClassVar[int]
    ASPECT_RATIO_FIELD_NUMBER: _ClassVar[int]
    SHORT_SIDE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    FROM_IMAGE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_IS_LAST_FRAME_FIELD_NUMBER: _ClassVar[int]
    EXTEND_VIDEO_FIELD_NUMBER: _ClassVar[int]
    EXTEND_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BACKWARD_FIELD_NUMBER: _ClassVar[int]
    EDIT_VIDEO_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    TRANSITION_FROM_FIELD_NUMBER: _ClassVar[int]
    TRANSITION_TO_FIELD_NUMBER: _ClassVar[int]
    TRANSITION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LOOP_FIELD_NUMBER: _ClassVar[int]
    SHOTS_FIELD_NUMBER: _ClassVar[int]
    CHARACTER_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    negative_prompt: str
    duration_s: float
    num_frames: int
    width: int
    height: int
    fps: float
    seed: int
    steps: int
    guidance_scale: float
    idempotency_key: str
    priority: int
    skip_prompt_expansion: bool
    aspect_ratio: str
    short_side: int
    image: bool
    from_image: Media
    image_is_last_frame: bool
    extend_video: Media
    extend_seconds: float
    backward: bool
    edit_video: Media
    strength: float
    transition_from: Media
    transition_to: Media
    transition_seconds: float
    loop: bool
    shots: _containers.RepeatedCompositeFieldContainer[Shot]
    character: str
    def __init__(self, prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., duration_s: _Optional[float] = ..., num_frames: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., fps: _Optional[float] = ..., seed: _Optional[int] = ..., steps: _Optional[int] = ..., guidance_scale: _Optional[float] = ..., idempotency_key: _Optional[str] = ..., priority: _Optional[int] = ..., skip_prompt_expansion: _Optional[bool] = ..., aspect_ratio: _Optional[str] = ..., short_side: _Optional[int] = ..., image: _Optional[bool] = ..., from_image: _Optional[_Union[Media, _Mapping]] = ..., image_is_last_frame: _Optional[bool] = ..., extend_video: _Optional[_Union[Media, _Mapping]] = ..., extend_seconds: _Optional[float] = ..., backward: _Optional[bool] = ..., edit_video: _Optional[_Union[Media, _Mapping]] = ..., strength: _Optional[float] = ..., transition_from: _Optional[_Union[Media, _Mapping]] = ..., transition_to: _Optional[_Union[Media, _Mapping]] = ..., transition_seconds: _Optional[float] = ..., loop: _Optional[bool] = ..., shots: _Optional[_Iterable[_Union[Shot, _Mapping]]] = ..., character: _Optional[str] = ...) -> None: ...

class Media(_message.Message):
    __slots__ = ("data", "uri", "sha256")
    DATA_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    uri: str
    sha256: str
    def __init__(self, data: _Optional[bytes] = ..., uri: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class Shot(_message.Message):
    __slots__ = ("prompt", "duration_s", "transition")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    TRANSITION_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    duration_s: float
    transition: ShotTransition
    def __init__(self, prompt: _Optional[str] = ..., duration_s: _Optional[float] = ..., transition: _Optional[_Union[ShotTransition, str]] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("stage", "step", "total_steps", "segments_done", "total_segments", "fraction", "segment_uri", "segment_url")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_URI_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_URL_FIELD_NUMBER: _ClassVar[int]
    stage: Stage
    step: int
    total_steps: int
    segments_done: int
    total_segments: int
    fraction: float
    segment_uri: str
    segment_url: str
    def __init__(self, stage: _Optional[_Union[Stage, str]] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., segments_done: _Optional[int] = ..., total_segments: _Optional[int] = ..., fraction: _Optional[float] = ..., segment_uri: _Optional[str] = ..., segment_url: _Optional[str] = ...) -> None: ...

class StageTimings(_message.Message):
    __slots__ = ("queued_s", "expand_s", "denoise_s", "decode_s", "finalize_s", "total_s")
    QUEUED_S_FIELD_NUMBER: _ClassVar[int]
    EXPAND_S_FIELD_NUMBER: _ClassVar[int]
    DENOISE_S_FIELD_NUMBER: _ClassVar[int]
    DECODE_S_FIELD_NUMBER: _ClassVar[int]
    FINALIZE_S_FIELD_NUMBER: _ClassVar[int]
    TOTAL_S_FIELD_NUMBER: _ClassVar[int]
    queued_s: float
    expand_s: float
    denoise_s: float
    decode_s: float
    finalize_s: float
    total_s: float
    def __init__(self, queued_s: _Optional[float] = ..., expand_s: _Optional[float] = ..., denoise_s: _Optional[float] = ..., decode_s: _Optional[float] = ..., finalize_s: _Optional[float] = ..., total_s: _Optional[float] = ...) -> None: ...

class JobError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "state", "progress", "video_uri", "video_url", "poster_uri", "manifest_uri", "expanded_prompt", "seed", "timings", "error", "request", "created_at", "updated_at", "model", "width", "height", "num_frames", "fps", "duration_s", "poster_url", "image_uri", "image_url", "mode")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    VIDEO_URI_FIELD_NUMBER: _ClassVar[int]
    VIDEO_URL_FIELD_NUMBER: _ClassVar[int]
    POSTER_URI_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_URI_FIELD_NUMBER: _ClassVar[int]
    EXPANDED_PROMPT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    NUM_FRAMES_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    POSTER_URL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_URI_FIELD_NUMBER: _ClassVar[int]
    IMAGE_URL_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: JobState
    progress: Progress
    video_uri: str
    video_url: str
    poster_uri: str
    manifest_uri: str
    expanded_prompt: str
    seed: int
    timings: StageTimings
    error: JobError
    request: GenerateRequest
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    model: str
    width: int
    height: int
    num_frames: int
    fps: float
    duration_s: float
    poster_url: str
    image_uri: str
    image_url: str
    mode: GenerationMode
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., video_uri: _Optional[str] = ..., video_url: _Optional[str] = ..., poster_uri: _Optional[str] = ..., manifest_uri: _Optional[str] = ..., expanded_prompt: _Optional[str] = ..., seed: _Optional[int] = ..., timings: _Optional[_Union[StageTimings, _Mapping]] = ..., error: _Optional[_Union[JobError, _Mapping]] = ..., request: _Optional[_Union[GenerateRequest, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., num_frames: _Optional[int] = ..., fps: _Optional[float] = ..., duration_s: _Optional[float] = ..., poster_url: _Optional[str] = ..., image_uri: _Optional[str] = ..., image_url: _Optional[str] = ..., mode: _Optional[_Union[GenerationMode, str]] = ...) -> None: ...

class GenerateEvent(_message.Message):
    __slots__ = ("job_id", "progress", "job")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    progress: Progress
    job: Job
    def __init__(self, job_id: _Optional[str] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "state")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    state: JobState
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SubmitBatchRequest(_message.Message):
    __slots__ = ("name", "content", "file_uri", "filename", "concurrency", "priority", "output_prefix", "skip_invalid", "max_attempts", "files")
    class FilesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    FILE_URI_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    SKIP_INVALID_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    name: str
    content: bytes
    file_uri: str
    filename: str
    concurrency: int
    priority: int
    output_prefix: str
    skip_invalid: bool
    max_attempts: int
    files: _containers.ScalarMap[str, bytes]
    def __init__(self, name: _Optional[str] = ..., content: _Optional[bytes] = ..., file_uri: _Optional[str] = ..., filename: _Optional[str] = ..., concurrency: _Optional[int] = ..., priority: _Optional[int] = ..., output_prefix: _Optional[str] = ..., skip_invalid: _Optional[bool] = ..., max_attempts: _Optional[int] = ..., files: _Optional[_Mapping[str, bytes]] = ...) -> None: ...

class BatchItem(_message.Message):
    __slots__ = ("line", "id", "state", "attempt", "job_id", "error", "fraction", "video_uri", "video_url", "poster_uri", "poster_url", "video_seconds", "seed", "image_uri")
    LINE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    VIDEO_URI_FIELD_NUMBER: _ClassVar[int]
    VIDEO_URL_FIELD_NUMBER: _ClassVar[int]
    POSTER_URI_FIELD_NUMBER: _ClassVar[int]
    POSTER_URL_FIELD_NUMBER: _ClassVar[int]
    VIDEO_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    IMAGE_URI_FIELD_NUMBER: _ClassVar[int]
    line: int
    id: str
    state: str
    attempt: int
    job_id: str
    error: str
    fraction: float
    video_uri: str
    video_url: str
    poster_uri: str
    poster_url: str
    video_seconds: float
    seed: int
    image_uri: str
    def __init__(self, line: _Optional[int] = ..., id: _Optional[str] = ..., state: _Optional[str] = ..., attempt: _Optional[int] = ..., job_id: _Optional[str] = ..., error: _Optional[str] = ..., fraction: _Optional[float] = ..., video_uri: _Optional[str] = ..., video_url: _Optional[str] = ..., poster_uri: _Optional[str] = ..., poster_url: _Optional[str] = ..., video_seconds: _Optional[float] = ..., seed: _Optional[int] = ..., image_uri: _Optional[str] = ...) -> None: ...

class InvalidBatchLine(_message.Message):
    __slots__ = ("line", "id", "error")
    LINE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    line: int
    id: str
    error: str
    def __init__(self, line: _Optional[int] = ..., id: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class BatchCounts(_message.Message):
    __slots__ = ("total", "pending", "queued", "running", "succeeded", "failed", "cancelled", "invalid", "video_seconds", "eta_s")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    INVALID_FIELD_NUMBER: _ClassVar[int]
    VIDEO_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ETA_S_FIELD_NUMBER: _ClassVar[int]
    total: int
    pending: int
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    invalid: int
    video_seconds: float
    eta_s: float
    def __init__(self, total: _Optional[int] = ..., pending: _Optional[int] = ..., queued: _Optional[int] = ..., running: _Optional[int] = ..., succeeded: _Optional[int] = ..., failed: _Optional[int] = ..., cancelled: _Optional[int] = ..., invalid: _Optional[int] = ..., video_seconds: _Optional[float] = ..., eta_s: _Optional[float] = ...) -> None: ...

class BatchReport(_message.Message):
    __slots__ = ("report_jsonl_uri", "report_jsonl_url", "summary_uri", "summary_url", "contact_sheet_uri", "contact_sheet_url", "html_uri", "html_url")
    REPORT_JSONL_URI_FIELD_NUMBER: _ClassVar[int]
    REPORT_JSONL_URL_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_URI_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_URL_FIELD_NUMBER: _ClassVar[int]
    CONTACT_SHEET_URI_FIELD_NUMBER: _ClassVar[int]
    CONTACT_SHEET_URL_FIELD_NUMBER: _ClassVar[int]
    HTML_URI_FIELD_NUMBER: _ClassVar[int]
    HTML_URL_FIELD_NUMBER: _ClassVar[int]
    report_jsonl_uri: str
    report_jsonl_url: str
    summary_uri: str
    summary_url: str
    contact_sheet_uri: str
    contact_sheet_url: str
    html_uri: str
    html_url: str
    def __init__(self, report_jsonl_uri: _Optional[str] = ..., report_jsonl_url: _Optional[str] = ..., summary_uri: _Optional[str] = ..., summary_url: _Optional[str] = ..., contact_sheet_uri: _Optional[str] = ..., contact_sheet_url: _Optional[str] = ..., html_uri: _Optional[str] = ..., html_url: _Optional[str] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("name", "state", "counts", "items", "invalid_lines", "concurrency", "priority", "max_attempts", "output_prefix_uri", "report", "created_at", "wall_time_s", "created", "source")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    INVALID_LINES_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_PREFIX_URI_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    WALL_TIME_S_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: str
    counts: BatchCounts
    items: _containers.RepeatedCompositeFieldContainer[BatchItem]
    invalid_lines: _containers.RepeatedCompositeFieldContainer[InvalidBatchLine]
    concurrency: int
    priority: int
    max_attempts: int
    output_prefix_uri: str
    report: BatchReport
    created_at: _timestamp_pb2.Timestamp
    wall_time_s: float
    created: bool
    source: str
    def __init__(self, name: _Optional[str] = ..., state: _Optional[str] = ..., counts: _Optional[_Union[BatchCounts, _Mapping]] = ..., items: _Optional[_Iterable[_Union[BatchItem, _Mapping]]] = ..., invalid_lines: _Optional[_Iterable[_Union[InvalidBatchLine, _Mapping]]] = ..., concurrency: _Optional[int] = ..., priority: _Optional[int] = ..., max_attempts: _Optional[int] = ..., output_prefix_uri: _Optional[str] = ..., report: _Optional[_Union[BatchReport, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., wall_time_s: _Optional[float] = ..., created: _Optional[bool] = ..., source: _Optional[str] = ...) -> None: ...

class GetBatchRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListBatchesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListBatchesResponse(_message.Message):
    __slots__ = ("batches",)
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    batches: _containers.RepeatedCompositeFieldContainer[Batch]
    def __init__(self, batches: _Optional[_Iterable[_Union[Batch, _Mapping]]] = ...) -> None: ...

class CancelBatchRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RetryBatchRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...
