"""Decoder stage: latent time tiles to pixels (video VAE) to H.264 (PyAV); and the way back,
input images and videos to latents (the VAE's encoder), for the modes that start from them, or to
the family's own conditioning (``VideoModel.encode_conditioning``: Wan's image channels and CLIP
tokens, LTX-Video's first frame), which the image encoders loaded beside the VAE compute.

A replica decodes one tile at a time (one model thread); the tiles waiting for it go highest
priority first (:class:`PriorityGate`), so an interactive clip's tile does not wait behind the
tiles a batch video keeps in flight (``tiling.decode_ahead`` per job)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time

import torch
from ray import serve

from tessera.models.config import ModelConfig
from tessera.models.interface import ConditioningRequest, ModelConditioning
from tessera.models.registry import load_model
from tessera.serving.logs import configure_replica_logging
from tessera.serving.media import decode_media, fit_frames
from tessera.serving.metrics import record_tile
from tessera.serving.stages import ConditionRequest, DecodedTile, DecodeTileRequest, EncodeRequest, ModelThread
from tessera.serving.video import VideoEncodingConfig, encode_mp4, encode_png


class PriorityGate:
    """One holder at a time; waiters enter highest ``priority`` first, in arrival order within a
    priority. Used as ``async with gate.hold(priority):``."""

    def __init__(self):
        self._held = False
        self._waiting: list[tuple[int, int, asyncio.Future]] = []
        self._order = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(1 for *_, future in self._waiting if not future.done())

    async def acquire(self, priority: int) -> None:
        if not self._held and not self.waiting:
            self._held = True
            return
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (-priority, next(self._order), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # handed the gate as it was cancelled: pass it on
                self.release()
            raise

    def release(self) -> None:
        while self._waiting:
            *_, future = heapq.heappop(self._waiting)
            if not future.done():
                future.set_result(None)  # the gate passes straight to it: still held
                return
        self._held = False

    def hold(self, priority: int):
        gate = self

        class _Held:
            async def __aenter__(self):
                await gate.acquire(priority)

            async def __aexit__(self, *exc):
                gate.release()

        return _Held()


class DecoderEngine:
    def __init__(self, model_config: ModelConfig, video: VideoEncodingConfig, threads: int | None = None):
        self._thread = ModelThread(threads)
        self._gate = PriorityGate()
        self._video = video
        self.model = load_model(model_config, parts={"vae"})

    def _decode(self, request: DecodeTileRequest) -> DecodedTile:
        started = time.monotonic()
        frames = self.model.decode_latents(request.latents, context_frames=request.context_frames)
        if frames.shape[0] < request.num_frames:
            raise ValueError(
                f"tile {request.index} decoded to {frames.shape[0]} frames, expected at least {request.num_frames}"
            )
        frames = frames[: request.num_frames].numpy()  # (T, H, W, 3) uint8
        poster = None
        if request.poster_frame is not None:
            poster = encode_png(frames[request.poster_frame])
        tile = DecodedTile(
            index=request.index,
            first_frame=request.first_frame,
            num_frames=request.num_frames,
            mp4=encode_mp4(frames, request.fps, self._video) if request.encode_video else b"",
            poster_png=poster,
        )
        record_tile(time.monotonic() - started)
        return tile

    async def decode_tile(self, request: DecodeTileRequest) -> DecodedTile:
        async with self._gate.hold(request.priority):
            return await self._thread.run(self._decode, request)

    def _encode(self, request: EncodeRequest) -> torch.Tensor:
        sources = [x is not None for x in (request.media, request.frames, request.latents)]
        if sum(sources) != 1:
            raise ValueError("an encode request needs exactly one of media, frames and latents")
        indices = list(request.frame_indices) if request.frame_indices is not None else None
        if request.media is not None:
            frames = torch.from_numpy(decode_media(request.media, indices, size=(request.width, request.height)))
        else:
            frames = request.frames if request.frames is not None else self.model.decode_latents(request.latents)
            if indices is not None:
                frames = frames[torch.tensor(indices).clamp(max=frames.shape[0] - 1)]
        frames = fit_frames(frames, request.width, request.height)  # (T, H, W, 3) uint8
        if not request.group_aligned:
            return self.model.encode_video(frames)
        # Whole groups: the first frame once more in front becomes latent 0, which is dropped.
        return self.model.encode_video(torch.cat([frames[:1], frames]))[:, 1:]

    async def encode(self, request: EncodeRequest) -> torch.Tensor:
        return await self._thread.run(self._encode, request)

    def _condition(self, request: ConditionRequest) -> ModelConditioning:
        size = (request.width, request.height)
        images = {frame: fit_frames(torch.from_numpy(decode_media(data, [0], size=size)), *size)[0]
                  for frame, data in request.images.items()}  # (H, W, 3) uint8 each
        return self.model.encode_conditioning(ConditioningRequest(images, request.num_frames, request.height, request.width,
                                                                  request.seed))

    async def encode_conditioning(self, request: ConditionRequest) -> ModelConditioning:
        """The family's own conditioning from the job's given images (the VAE, and any image encoder, are here)."""
        return await self._thread.run(self._condition, request)


@serve.deployment
class Decoder:
    """Serve shim around :class:`DecoderEngine`."""

    def __init__(self, model_config: ModelConfig, video: VideoEncodingConfig, threads: int | None = None):
        configure_replica_logging()
        self.engine = DecoderEngine(model_config, video, threads)

    async def decode_tile(self, request: DecodeTileRequest) -> DecodedTile:
        return await self.engine.decode_tile(request)

    async def encode(self, request: EncodeRequest) -> torch.Tensor:
        return await self.engine.encode(request)

    async def encode_conditioning(self, request: ConditionRequest) -> ModelConditioning:
        return await self.engine.encode_conditioning(request)
