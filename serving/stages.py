"""The three model stages as the job runner sees them.

The runner only moves plain data between stages. It reaches them through :class:`Stages`:

* :class:`ServeStages` calls the Ray Serve deployments through their handles (production);
* :class:`LocalStages` calls the same engines in this process (benchmarks of serving
  overhead, and tests of the runner's maths without a cluster).

Both run the very same engine code (``PromptExpanderEngine``, ``DenoiserEngine``,
``DecoderEngine``), so the only difference between them is the hop.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal, Protocol, TypeVar

import torch

from tessera.models.interface import DenoiseWork, FrameCondition, ModelConditioning, StepResult, TextConditioning, frame_noise

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclasses.dataclass
class Conditioning:
    """A prompt turned into what the denoiser needs."""

    caption: str
    """The caption the model sees (the expanded prompt, or the prompt itself)."""
    expander: str
    """Which backend produced the caption ('builtin', 'hf_causal_lm', 'openai', 'none', or
    'builtin (fallback from <backend>)')."""
    text: TextConditioning
    negative_text: TextConditioning
    expansion_note: str = ""
    """Why the configured backend fell back to the built-in expander; empty when it did not."""


@dataclasses.dataclass(frozen=True)
class SharedText:
    """A job's text conditioning (prompt and negative prompt), shipped to the Denoiser by reference.

    Work items carry this instead of the tensors: ``ref`` is a Ray object reference under Serve
    (the engine puts the tensors in Ray's object store once per job) or the pair itself in
    process, and ``key`` (a content hash) lets a Denoiser replica keep the tensors it already
    fetched, so they cross to each replica once per job, not once per step (an open model's
    text embeddings are megabytes)."""

    key: str
    ref: Any

    @staticmethod
    def content_key(text: TextConditioning, negative: TextConditioning | None) -> str:
        digest = hashlib.sha256()

        def add(part: TextConditioning) -> None:
            digest.update(str(tuple(part.tokens.shape)).encode())
            digest.update(part.tokens.contiguous().numpy().tobytes())
            digest.update(part.mask.contiguous().numpy().tobytes())
            for name in sorted(part.extra):  # other encoders' outputs (TextConditioning.extra)
                digest.update(f"+{name}".encode())
                add(part.extra[name])

        for part in (text, negative):
            if part is None:
                digest.update(b"-")
                continue
            add(part)
        return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class SharedConditioning:
    """One window's share of a job's :class:`ModelConditioning` (the family's own payload: Wan's
    image channels and CLIP tokens, LTX-Video's given first frame), shipped to the Denoiser by
    reference like :class:`SharedText`: put once per job and window, fetched once per replica."""

    key: str
    ref: Any

    @staticmethod
    def content_key(conditioning: ModelConditioning) -> str:
        digest = hashlib.sha256()

        def add(name: str, tensor: torch.Tensor) -> None:
            digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(tensor.contiguous().numpy().tobytes())

        if conditioning.frames is not None:
            add("frames", conditioning.frames.latents)
            add("mask", conditioning.frames.mask)
        for group, tensors in (("per_frame.", conditioning.per_frame), ("shared.", conditioning.shared)):
            for name in sorted(tensors):
                add(group + name, tensors[name])
        return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class WindowNoise:
    """A window's starting latents, drawn by the Denoiser replica that advances it: the job's noise
    for latent frames ``start .. stop - 1`` at the first noise level. ``frame_noise`` draws every
    latent frame from its own generator, so this is the slice of the whole video's noise bit for
    bit. A job that starts from pure noise sends this in its first step group instead of the
    latents, so no noise crosses the network (an 832x480 window of 21 latent frames is 8.4 MB, a
    150 s video's 32 windows 268 MB through the JobRunner)."""

    seed: int
    start: int
    stop: int
    frame_shape: tuple[int, int, int]
    """(C, H, W) of one latent frame."""
    sigma: float

    def latents(self, add_noise: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> torch.Tensor:
        """``(C, stop - start, H, W)``, with the model's ``add_noise`` (from zeros: pure noise at ``sigma``)."""
        noise = frame_noise(self.seed, self.start, self.stop, self.frame_shape)
        return add_noise(torch.zeros_like(noise), noise, self.sigma)


@dataclasses.dataclass
class StepWork:
    """One time window to advance, as sent to the Denoiser: :class:`DenoiseWork` with the text
    conditioning by reference (see :class:`SharedText`)."""

    latents: torch.Tensor | None  # (C, T, H, W) at noise level sigmas[0]; None: drawn from ``noise``
    sigmas: tuple[float, ...]
    text: SharedText
    guidance_scale: float
    fps: float
    frames: FrameCondition | None = None
    sampler: Literal["euler", "heun"] = "euler"
    priority: int = 0
    """The job's priority: the Denoiser's step scheduler runs higher first (interactive >= 0, batch < 0)."""
    solver_state: dict[str, Any] | None = None
    """A multistep solver's history at ``sigmas[0]`` (see :class:`DenoiseWork`), as the previous call returned it."""
    conditioning: SharedConditioning | None = None
    """The window's share of the family's own conditioning (modes in the card's ``conditioned_modes``);
    its given frames, if any, travel inside it rather than in ``frames``."""
    noise: WindowNoise | None = None
    """Where ``latents`` is None: the pure noise the window starts from, drawn on the replica."""
    starts_video: bool = True
    """The window's first latent frame is the video's first (see :class:`DenoiseWork`)."""

    def resolve(self, text: TextConditioning, negative: TextConditioning | None,
                conditioning: ModelConditioning | None = None) -> DenoiseWork:
        frames = self.frames if self.frames is not None or conditioning is None else conditioning.frames
        return DenoiseWork(latents=self.latents, sigmas=self.sigmas, text=text, negative_text=negative,
                           guidance_scale=self.guidance_scale, fps=self.fps, frames=frames, sampler=self.sampler,
                           solver_state=self.solver_state, conditioning=conditioning, starts_video=self.starts_video)


class TextCache:
    """A Denoiser replica's recently used conditionings (text pairs, or a family's
    :class:`ModelConditioning`), by content key (LRU)."""

    def __init__(self, capacity: int = 64):
        self._entries: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self.capacity = capacity
        self.fetches = 0
        """How many times a conditioning had to be fetched (a miss), for benches and tests."""

    async def get(self, shared: SharedText | SharedConditioning) -> Any:
        entry = self._entries.get(shared.key)
        if entry is None:
            value = shared.ref
            if inspect.isawaitable(value):  # a Ray ObjectRef: fetched from the object store once
                value = await value
            self.fetches += 1
            entry = value
            self._entries[shared.key] = entry
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(shared.key)
        return entry


@dataclasses.dataclass
class DenoiseUpdate:
    """Streamed back while a window advances: steps done so far, and the latents at the end."""

    steps_done: int
    latents: torch.Tensor | None = None  # (C, T, H, W), only on the last update
    solver_state: dict[str, Any] | None = None
    """The solver's history after the last level (only on the last update; None for stateless samplers)."""


@dataclasses.dataclass
class DecodeTileRequest:
    """Decode one time tile and encode it as H.264."""

    index: int
    latents: torch.Tensor  # (C, context + tile frames, H, W)
    context_frames: int
    first_frame: int
    num_frames: int
    fps: float
    poster_frame: int | None = None
    """Index within this tile of the frame to return as the poster PNG, if any."""
    encode_video: bool = True
    """False for a still image: only the poster PNG comes back (``mp4`` is empty)."""
    priority: int = 0
    """The job's priority: a Decoder replica decodes its waiting tiles highest first (interactive >= 0, batch < 0)."""


@dataclasses.dataclass
class EncodeRequest:
    """Frames to latents with the VAE's encoder (image/video inputs, and the loop's re-encoded start).

    Exactly one source: ``media`` (an image or video file, decoded on the replica), ``frames``,
    or ``latents`` (decoded first). The chosen frames are scaled to cover ``width`` x ``height``
    and centre-cropped. ``group_aligned`` encodes them as whole latent groups, to be placed after
    the first latent frame of a video (see ``serving/jobs/layout.py``)."""

    width: int
    height: int
    media: bytes | None = None
    frames: torch.Tensor | None = None  # (T, H, W, 3) uint8
    latents: torch.Tensor | None = None  # (C, T, h, w)
    frame_indices: tuple[int, ...] | None = None
    """Frames of the source to encode, in order (repeats allowed); None: all."""
    group_aligned: bool = False


@dataclasses.dataclass
class ConditionRequest:
    """A job's given images to the family's own conditioning (``VideoModel.encode_conditioning``,
    on a Decoder replica: it holds the VAE and any image encoder). Each image (file bytes) is
    decoded there and fitted to ``width`` x ``height`` as :class:`EncodeRequest` fits its frames."""

    width: int
    height: int
    num_frames: int
    """Pixel frames the video's latents decode to (on the family's frame-count rule)."""
    seed: int
    images: dict[int, bytes]
    """Pixel frame index -> the image file standing there (0: the first frame)."""


@dataclasses.dataclass
class DecodedTile:
    index: int
    first_frame: int
    num_frames: int
    mp4: bytes
    poster_png: bytes | None = None


class Stages(Protocol):
    """What the job runner needs from the model stages."""

    async def condition(self, prompt: str, negative_prompt: str, expand: bool, character: str = "") -> Conditioning: ...

    def share(self, conditioning: Conditioning) -> SharedText:
        """The conditioning's text tensors made shareable by reference, once per job."""
        ...

    def share_conditioning(self, conditioning: ModelConditioning) -> SharedConditioning:
        """A window's share of the family's own conditioning, made shareable by reference, once per job."""
        ...

    async def encode_conditioning(self, request: ConditionRequest) -> ModelConditioning:
        """The family's own conditioning from the job's given images (on a Decoder replica)."""
        ...

    def advance(self, work: StepWork, report_every_s: float = 0.0) -> AsyncIterator[DenoiseUpdate]:
        """One window through all its noise levels, with progress at most every ``report_every_s``."""
        ...

    async def advance_batch(self, works: list[StepWork]) -> list[StepResult]:
        """Several windows advanced through the same noise levels in one call: latents and solver state of each."""
        ...

    async def decode_tile(self, request: DecodeTileRequest) -> DecodedTile: ...

    async def encode(self, request: EncodeRequest) -> torch.Tensor: ...


def _replica_lost(error: BaseException) -> bool:
    """Whether a stage call failed for want of a replica: it died or went away, or every replica's
    queue is full for now (``max_queued_requests``). Worth a retry: stage calls are stateless."""
    import ray.exceptions
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

    return isinstance(error, (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                              ray.exceptions.NodeDiedError, ReplicaUnavailableError, DeploymentUnavailableError,
                              BackPressureError))


class ServeStages:
    """Stages behind Ray Serve deployment handles.

    Stage calls are stateless, so a call whose replica dies is simply made again (Serve routes
    it to a live replica, or waits for the replacement it starts), and so is one that found every
    replica's queue full, after a backoff: for up to ``retry_budget_s``."""

    def __init__(self, expander, denoiser, decoder, retry_budget_s: float = 120.0):
        self._expander = expander
        self._denoiser_stream = denoiser.options(stream=True)
        self._denoiser = denoiser
        self._decoder = decoder
        self.retry_budget_s = retry_budget_s
        self.retries = 0

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        deadline = time.monotonic() + self.retry_budget_s
        backoff = 0.5
        while True:
            try:
                return await call()
            except Exception as error:
                if not _replica_lost(error) or time.monotonic() >= deadline:
                    raise
                self.retries += 1
                logger.warning("%s: its replica was lost (%s); retrying", what, type(error).__name__)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 4.0)

    async def condition(self, prompt: str, negative_prompt: str, expand: bool, character: str = "") -> Conditioning:
        return await self._retrying(
            "prompt expansion", lambda: self._expander.condition.remote(prompt, negative_prompt, expand, character)
        )

    def share(self, conditioning: Conditioning) -> SharedText:
        import ray

        pair = (conditioning.text, conditioning.negative_text)
        return SharedText(SharedText.content_key(*pair), ray.put(pair))

    def share_conditioning(self, conditioning: ModelConditioning) -> SharedConditioning:
        import ray

        return SharedConditioning(SharedConditioning.content_key(conditioning), ray.put(conditioning))

    async def encode_conditioning(self, request: ConditionRequest) -> ModelConditioning:
        return await self._retrying("conditioning on the inputs", lambda: self._decoder.encode_conditioning.remote(request))

    async def advance(self, work: StepWork, report_every_s: float = 0.0) -> AsyncIterator[DenoiseUpdate]:
        deadline = time.monotonic() + self.retry_budget_s
        while True:
            try:
                async for update in self._denoiser_stream.advance.remote(work, report_every_s):
                    yield update
                return
            except Exception as error:  # a lost replica: the window starts over from its input latents
                if not _replica_lost(error) or time.monotonic() >= deadline:
                    raise
                self.retries += 1
                logger.warning("denoising a window: its replica was lost (%s); retrying", type(error).__name__)
                await asyncio.sleep(0.5)

    async def advance_batch(self, works: list[StepWork]) -> list[StepResult]:
        return await self._retrying("denoising windows", lambda: self._denoiser.advance_batch.remote(works))

    async def decode_tile(self, request: DecodeTileRequest) -> DecodedTile:
        return await self._retrying(f"decoding tile {request.index}", lambda: self._decoder.decode_tile.remote(request))

    async def encode(self, request: EncodeRequest) -> torch.Tensor:
        return await self._retrying("encoding an input", lambda: self._decoder.encode.remote(request))


class LocalStages:
    """The same engines called in this process, one at a time per stage."""

    def __init__(self, expander, denoiser, decoder):
        self._expander = expander
        self._denoiser = denoiser
        self._decoder = decoder

    async def condition(self, prompt: str, negative_prompt: str, expand: bool, character: str = "") -> Conditioning:
        return await self._expander.condition(prompt, negative_prompt, expand, character)

    def share(self, conditioning: Conditioning) -> SharedText:
        pair = (conditioning.text, conditioning.negative_text)
        return SharedText(SharedText.content_key(*pair), pair)

    def share_conditioning(self, conditioning: ModelConditioning) -> SharedConditioning:
        return SharedConditioning(SharedConditioning.content_key(conditioning), conditioning)

    async def encode_conditioning(self, request: ConditionRequest) -> ModelConditioning:
        return await self._decoder.encode_conditioning(request)

    async def advance(self, work: StepWork, report_every_s: float = 0.0) -> AsyncIterator[DenoiseUpdate]:
        async for update in self._denoiser.advance(work, report_every_s):
            yield update

    async def advance_batch(self, works: list[StepWork]) -> list[StepResult]:
        return await self._denoiser.advance_batch(works)

    async def decode_tile(self, request: DecodeTileRequest) -> DecodedTile:
        return await self._decoder.decode_tile(request)

    async def encode(self, request: EncodeRequest) -> torch.Tensor:
        return await self._decoder.encode(request)


class ModelThread:
    """Runs model calls on one dedicated thread.

    torch calls from several threads at once would oversubscribe the replica's CPUs and
    interleave CUDA work; one thread per replica keeps them in order, and the event loop stays
    free to stream results."""

    def __init__(self, threads: int | None):
        from concurrent.futures import ThreadPoolExecutor

        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        if threads is not None:
            self._executor.submit(torch.set_num_threads, threads).result()
            torch.set_num_threads(threads)

    async def run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
