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
import dataclasses
from collections.abc import AsyncIterator
from typing import Protocol

import torch

from tessera.models.interface import DenoiseWork, TextConditioning


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


@dataclasses.dataclass
class DenoiseUpdate:
    """Streamed back while a window advances: steps done so far, and the latents at the end."""

    steps_done: int
    latents: torch.Tensor | None = None  # (C, T, H, W), only on the last update


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
class DecodedTile:
    index: int
    first_frame: int
    num_frames: int
    mp4: bytes
    poster_png: bytes | None = None


class Stages(Protocol):
    """What the job runner needs from the model stages."""

    async def condition(self, prompt: str, negative_prompt: str, expand: bool, character: str = "") -> Conditioning: ...

    def advance(self, work: DenoiseWork, report_every_s: float = 0.0) -> AsyncIterator[DenoiseUpdate]:
        """One window through all its noise levels, with progress at most every ``report_every_s``."""
        ...

    async def advance_batch(self, works: list[DenoiseWork]) -> list[torch.Tensor]:
        """Several windows advanced through the same noise levels in one call, as one batch."""
        ...

    async def decode_tile(self, request: DecodeTileRequest) -> DecodedTile: ...

    async def encode(self, request: EncodeRequest) -> torch.Tensor: ...


class ServeStages:
    """Stages behind Ray Serve deployment handles."""

    def __init__(self, expander, denoiser, decoder):
        self._expander = expander
        self._denoiser_stream = denoiser.options(stream=True)
        self._denoiser = denoiser
        self._decoder = decoder

    async def condition(self, prompt: str, negative_prompt: str, expand: bool, character: str = "") -> Conditioning:
        return await self._expander.condition.remote(prompt, negative_prompt, expand, character)

    async def advance(self, work: DenoiseWork, report_every_s: float = 0.0) -> AsyncIterator[DenoiseUpdate]:
        async for update in self._denoiser_stream.advance.remote(work, report_every_s):
            yield update

    async def advance_batch(self, works: list[DenoiseWork]) -> list[torch.Tensor]:
        return await self._denoiser.advance_batch.remote(works)

    async def decode_tile(self, request: DecodeTileRequest) -> DecodedTile:
        return await self._decoder.decode_tile.remote(request)

    async def encode(self, request: EncodeRequest) -> torch.Tensor:
        return await self._decoder.encode.remote(request)


class LocalStages:
    """The same engines called in this process, one at a time per stage."""

    def __init__(self, expander, denoiser, decoder):
        self._expander = expander
        self._denoiser = denoiser
        self._decoder = decoder

    async def condition(self, prompt: str, negative_prompt: str, expand: bool, character: str = "") -> Conditioning:
        return await self._expander.condition(prompt, negative_prompt, expand, character)

    async def advance(self, work: DenoiseWork, report_every_s: float = 0.0) -> AsyncIterator[DenoiseUpdate]:
        async for update in self._denoiser.advance(work, report_every_s):
            yield update

    async def advance_batch(self, works: list[DenoiseWork]) -> list[torch.Tensor]:
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
