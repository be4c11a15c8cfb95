"""Render one job: the async control loop around the pure planner.

It only moves data between stages; all model work happens in the stages, all shape decisions
in the plan:

1. conditioning: the PromptExpander re-captions and encodes the prompt;
2. co-denoising: one shared noise tensor for the whole video; each step group advances every
   window concurrently (whichever Denoiser replica is free takes it), then overlaps are fused
   with the plan's weights;
3. decoding: time tiles go to Decoder replicas a few at a time; finished tiles are stitched in
   order into one MP4 that streams into an S3 multipart upload;
4. finalising: the poster, then the manifest, last, so a manifest means the outputs are whole.

If anything fails or the job is cancelled, the multipart upload is aborted and outputs already
written are deleted: a job's objects appear whole or not at all.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable

import torch

from tessera.models.interface import DenoiseWork, VideoModel, frame_noise
from tessera.serving.errors import CancelledError
from tessera.serving.jobs.planner import RenderPlan
from tessera.serving.jobs.records import JobRecord, Progress, Stage, Timings
from tessera.serving.stages import Conditioning, DecodeTileRequest, Stages
from tessera.serving.storage import ObjectStore
from tessera.serving.video import EncodedTile, TileMuxer

logger = logging.getLogger(__name__)

# Share of the progress bar per stage (denoising dominates the work); the last 1% is finalising.
_EXPAND_SHARE, _DENOISE_SHARE, _DECODE_SHARE = 0.05, 0.75, 0.19


@dataclasses.dataclass
class RenderResult:
    caption: str
    expander: str
    video_key: str
    poster_key: str
    manifest_key: str
    timings: Timings


@dataclasses.dataclass(frozen=True)
class OutputKeys:
    video: str
    poster: str
    manifest: str

    @classmethod
    def for_job(cls, tenant: str, job_id: str) -> OutputKeys:
        return cls(f"{tenant}/{job_id}/video.mp4", f"{tenant}/{job_id}/poster.png", f"{tenant}/{job_id}/manifest.json")


class Renderer:
    """Renders jobs through :class:`Stages` into an :class:`ObjectStore`."""

    def __init__(self, model: VideoModel, stages: Stages, store: ObjectStore, decode_ahead: int):
        self.model = model
        self.stages = stages
        self.store = store
        self.decode_ahead = decode_ahead

    async def render(
        self,
        job: JobRecord,
        plan: RenderPlan,
        report: Callable[[Progress], None],
        check_cancelled: Callable[[], Awaitable[None]],
    ) -> RenderResult:
        spec = job.spec
        keys = OutputKeys.for_job(job.tenant, job.job_id)
        timings = Timings()
        started = time.monotonic()
        written: list[str] = []
        try:
            report(Progress(stage=Stage.EXPANDING_PROMPT, total_steps=spec.steps, total_segments=len(plan.decode_tiles)))
            t0 = time.monotonic()
            conditioning = await self.stages.condition(spec.prompt, spec.negative_prompt, spec.expand_prompt)
            timings.expand_s = time.monotonic() - t0

            t0 = time.monotonic()
            latents = await self._denoise(job, plan, conditioning, report, check_cancelled)
            timings.denoise_s = time.monotonic() - t0

            t0 = time.monotonic()
            poster = await self._decode_and_upload(job, plan, latents, keys.video, written, report, check_cancelled)
            timings.decode_s = time.monotonic() - t0

            await check_cancelled()
            report(Progress(stage=Stage.FINALIZING, step=spec.steps, total_steps=spec.steps,
                            segments_done=len(plan.decode_tiles), total_segments=len(plan.decode_tiles), fraction=0.99))
            t0 = time.monotonic()
            await asyncio.to_thread(self.store.put_bytes, keys.poster, poster, "image/png")
            written.append(keys.poster)
            timings.finalize_s = time.monotonic() - t0
            timings.queued_s = max(0.0, (job.started_at or job.created_at) - job.created_at)
            timings.total_s = timings.queued_s + (time.monotonic() - started)
            manifest = self._manifest(job, plan, conditioning, keys, timings)
            await asyncio.to_thread(
                self.store.put_bytes, keys.manifest, json.dumps(manifest, indent=2).encode(), "application/json"
            )
            return RenderResult(conditioning.caption, conditioning.expander, keys.video, keys.poster, keys.manifest, timings)
        except BaseException:
            for key in written:
                try:
                    await asyncio.to_thread(self.store.delete, key)
                except Exception:  # the job already failed; report the first error, log this one
                    logger.exception("could not delete %s while cleaning up job %s", key, job.job_id)
            raise

    async def _denoise(self, job, plan: RenderPlan, conditioning: Conditioning, report, check_cancelled) -> torch.Tensor:
        spec = job.spec
        channels, frames, height, width = plan.latent_shape
        sigmas = self.model.sigmas(spec.steps)
        noise = frame_noise(spec.seed, 0, frames, (channels, height, width))
        latents = self.model.add_noise(torch.zeros_like(noise), noise, sigmas[0])  # (C, T, H, W)
        total = spec.steps

        def progress(step: int) -> Progress:
            return Progress(
                stage=Stage.DENOISING, step=step, total_steps=total, total_segments=len(plan.decode_tiles),
                fraction=_EXPAND_SHARE + _DENOISE_SHARE * step / total,
            )

        report(progress(0))
        for first, last in plan.step_groups(total):
            await check_cancelled()
            group_sigmas = tuple(sigmas[first : last + 1])

            async def advance(index: int, start: int, stop: int) -> torch.Tensor:
                work = DenoiseWork(
                    latents=latents[:, start:stop].contiguous(),
                    sigmas=group_sigmas,
                    text=conditioning.text,
                    negative_text=conditioning.negative_text,
                    guidance_scale=spec.guidance_scale,
                    fps=spec.fps,
                )
                result = None
                async for update in self.stages.advance(work):
                    if len(plan.windows) == 1:
                        report(progress(first + update.steps_done))
                        await check_cancelled()
                    if update.latents is not None:
                        result = update.latents
                if result is None:
                    raise RuntimeError(f"denoiser stream for window {index} ended without latents")
                return result

            outputs = await gather_or_cancel(advance(w.index, w.start, w.stop) for w in plan.windows)
            if len(plan.windows) == 1:
                latents = outputs[0]
            else:
                fused = torch.zeros_like(latents)
                for window, output in zip(plan.windows, outputs):
                    weights = torch.tensor(window.weights, dtype=output.dtype).view(1, -1, 1, 1)
                    fused[:, window.start : window.stop] += output * weights
                latents = fused
                report(progress(last))
        return latents

    async def _decode_and_upload(self, job, plan: RenderPlan, latents, video_key, written, report, check_cancelled) -> bytes:
        spec = job.spec
        poster_frame = spec.num_frames // 2
        tiles = plan.decode_tiles

        def request(tile) -> DecodeTileRequest:
            inside = tile.first_frame <= poster_frame < tile.first_frame + tile.num_frames
            return DecodeTileRequest(
                index=tile.index,
                latents=latents[:, tile.input_start : tile.stop].contiguous(),
                context_frames=tile.context,
                first_frame=tile.first_frame,
                num_frames=tile.num_frames,
                fps=spec.fps,
                poster_frame=(poster_frame - tile.first_frame) if inside else None,
            )

        poster: bytes | None = None
        pending: collections.deque[asyncio.Task] = collections.deque()
        next_tile = 0
        writer = await asyncio.to_thread(self.store.open_multipart, video_key, "video/mp4")
        try:
            muxer = TileMuxer(writer, spec.fps)
            for done in range(len(tiles)):
                while next_tile < len(tiles) and len(pending) < self.decode_ahead:
                    pending.append(asyncio.ensure_future(self.stages.decode_tile(request(tiles[next_tile]))))
                    next_tile += 1
                await check_cancelled()
                decoded = await pending.popleft()
                poster = decoded.poster_png or poster
                await asyncio.to_thread(
                    muxer.add, EncodedTile(decoded.index, decoded.first_frame, decoded.num_frames, decoded.mp4)
                )
                report(Progress(
                    stage=Stage.DECODING, step=spec.steps, total_steps=spec.steps, segments_done=done + 1,
                    total_segments=len(tiles),
                    fraction=_EXPAND_SHARE + _DENOISE_SHARE + _DECODE_SHARE * (done + 1) / len(tiles),
                ))
            await asyncio.to_thread(muxer.close)
            await asyncio.to_thread(writer.close)
            written.append(video_key)
        except BaseException:
            for task in pending:
                task.cancel()
            await asyncio.to_thread(writer.abort)
            raise
        if poster is None:
            raise RuntimeError("no decode tile returned the poster frame")
        return poster

    def _manifest(self, job: JobRecord, plan: RenderPlan, conditioning: Conditioning, keys: OutputKeys, timings: Timings) -> dict:
        card = self.model.card
        return {
            "job_id": job.job_id,
            "tenant": job.tenant,
            "mode": "text_to_video",
            "request": job.request.model_dump(mode="json"),
            "resolved": job.spec.model_dump(mode="json"),
            "prompt": {"original": job.spec.prompt, "caption": conditioning.caption, "expander": conditioning.expander},
            "seed": job.spec.seed,
            "model": {"family": card.family, "name": card.name, "version": card.version},
            "video": {
                "width": job.spec.width, "height": job.spec.height, "fps": job.spec.fps,
                "num_frames": job.spec.num_frames, "duration_s": job.spec.duration_s, "codec": "h264",
            },
            "plan": plan.summary(),
            "outputs": {"video": self.store.uri(keys.video), "poster": self.store.uri(keys.poster),
                        "manifest": self.store.uri(keys.manifest)},
            "timings": timings.model_dump(),
            "created_at": job.created_at,
            "finished_at": time.time(),
        }


async def gather_or_cancel(coroutines) -> list:
    """Like ``asyncio.gather``, but the first failure cancels the rest and is raised as is."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class JobCancelled(CancelledError):
    """Raised inside a render when its job is cancelled."""

    def __init__(self, job_id: str):
        super().__init__(f"job {job_id} was cancelled")
