"""Render one job: the async control loop around the pure planner.

It only moves data between stages; all model work happens in the stages, all shape decisions
in the plan:

1. conditioning: the PromptExpander re-captions and encodes the prompt (each shot's, for
   multi-shot); media inputs are encoded to latents by a Decoder replica and laid out as the
   whole video's frame condition (``serving/jobs/layout.py`` decides where);
2. co-denoising: one shared noise tensor for the whole video; each step group advances every
   window concurrently with its slice of the frame condition (in batched calls spread over the
   Denoiser's replicas, whichever is free takes each; a lone window is one streamed call), then
   overlaps are fused with the plan's weights and given frames put back exactly;
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
from collections.abc import Awaitable, Callable, Sequence

import torch

from tessera.models.interface import DenoiseWork, FrameCondition, VideoModel, frame_noise
from tessera.serving.errors import CancelledError
from tessera.serving.jobs.inputs import read_input
from tessera.serving.jobs.layout import JobPlan, Placement
from tessera.serving.jobs.modes import shot_text
from tessera.serving.jobs.planner import RenderPlan, Window, window_batches
from tessera.serving.jobs.records import JobRecord, Progress, Stage, Timings
from tessera.serving.jobs.spec import Mode
from tessera.serving.stages import Conditioning, DecodeTileRequest, EncodeRequest, Stages
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
    image_key: str = ""
    """Image mode: the image's key (video_key is then empty)."""


@dataclasses.dataclass(frozen=True)
class OutputKeys:
    video: str
    poster: str
    manifest: str

    segments_prefix: str
    image: str

    @classmethod
    def for_job(cls, tenant: str, job_id: str) -> OutputKeys:
        root = f"{tenant}/{job_id}"
        return cls(f"{root}/video.mp4", f"{root}/poster.png", f"{root}/manifest.json", f"{root}/segments/", f"{root}/image.png")

    def segment(self, index: int) -> str:
        return f"{self.segments_prefix}{index:04d}.mp4"


class Renderer:
    """Renders jobs through :class:`Stages` into an :class:`ObjectStore`."""

    def __init__(
        self, model: VideoModel, stages: Stages, store: ObjectStore, decode_ahead: int,
        denoiser_replicas: int = 1, max_windows_per_call: int = 1, step_progress_s: float = 0.0,
    ):
        self.model = model
        self.stages = stages
        self.store = store
        self.decode_ahead = decode_ahead
        self.denoiser_replicas = denoiser_replicas
        """The most Denoiser replicas there can be: a long video's windows go out in at least this many calls."""
        self.max_windows_per_call = max_windows_per_call
        self.step_progress_s = step_progress_s
        """Shortest interval between the step updates a single-window video streams back."""

    async def render(
        self,
        job: JobRecord,
        job_plan: JobPlan,
        report: Callable[[Progress], None],
        check_cancelled: Callable[[], Awaitable[None]],
    ) -> RenderResult:
        spec = job.spec
        plan = job_plan.render
        keys = OutputKeys.for_job(job.tenant, job.job_id)
        timings = Timings()
        started = time.monotonic()
        written: list[str] = []
        try:
            report(Progress(stage=Stage.EXPANDING_PROMPT, total_steps=spec.steps, total_segments=len(plan.decode_tiles)))
            t0 = time.monotonic()
            # One conditioning per prompt: the prompt, or each shot's with the shared character (the
            # expander carries the character into every caption; unexpanded, it leads the text).
            if spec.shots and spec.expand_prompt:
                calls = [(shot_text("", spec.prompt, shot.prompt), spec.character) for shot in spec.shots]
            else:
                calls = [(shot.text, "") for shot in spec.shots] or [(spec.prompt, "")]
            conditionings = await gather_or_cancel(
                self.stages.condition(text, spec.negative_prompt, spec.expand_prompt, character) for text, character in calls
            )
            conditioning = conditionings[0]
            timings.expand_s = time.monotonic() - t0

            t0 = time.monotonic()
            latents = await self._denoise(job, job_plan, conditionings, report, check_cancelled)
            timings.denoise_s = time.monotonic() - t0

            t0 = time.monotonic()
            if job_plan.loop_context:
                # The circle's last groups become the causal context of its first: the decode tiles index this.
                groups = latents.shape[1]
                wrap = [(groups - job_plan.loop_context + i) % groups for i in range(job_plan.loop_context)]
                latents = torch.cat([latents[:, wrap], latents], dim=1)
            if spec.mode == Mode.IMAGE:
                poster = await self._decode_image(job, plan, latents, keys, written, report)
            else:
                poster = await self._decode_and_upload(job, plan, latents, keys, written, report, check_cancelled)
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
            manifest.update(self._mode_manifest(job, job_plan, conditionings, keys))
            if job_plan.loop_context:
                manifest["plan"]["seam_frame_pairs"] = job_plan.seam_frame_pairs(self.model.card.geometry.temporal_factor)
            await asyncio.to_thread(
                self.store.put_bytes, keys.manifest, json.dumps(manifest, indent=2).encode(), "application/json"
            )
            caption = "\n".join(c.caption for c in conditionings)
            if spec.mode == Mode.IMAGE:
                return RenderResult(caption, conditioning.expander, "", keys.poster, keys.manifest, timings, image_key=keys.image)
            return RenderResult(caption, conditioning.expander, keys.video, keys.poster, keys.manifest, timings)
        except BaseException:
            for key in written:
                try:
                    await asyncio.to_thread(self.store.delete, key)
                except Exception:  # the job already failed; report the first error, log this one
                    logger.exception("could not delete %s while cleaning up job %s", key, job.job_id)
            raise

    async def _denoise(self, job, job_plan: JobPlan, conditionings: Sequence[Conditioning], report, check_cancelled) -> torch.Tensor:
        spec = job.spec
        plan = job_plan.render
        channels, frames, height, width = plan.latent_shape
        sigmas = job_plan.schedule(self.model.sigmas(spec.steps))  # SDEdit: only the levels below its strength
        noise = frame_noise(spec.seed, 0, frames, (channels, height, width))  # (C, T, H, W)
        total = len(sigmas) - 1

        def progress(step: int) -> Progress:
            return Progress(
                stage=Stage.DENOISING, step=step, total_steps=total, total_segments=len(plan.decode_tiles),
                fraction=_EXPAND_SHARE + _DENOISE_SHARE * step / total,
            )

        report(progress(0))
        given = await self._given_frames(job, job_plan)
        if job_plan.init is not None:
            # SDEdit: the input's latents noised to the level where the schedule is entered.
            [clean] = await self._encode([job_plan.init], job)
            latents = self.model.add_noise(clean, noise, sigmas[0])
        else:
            latents = self.model.add_noise(torch.zeros_like(noise), noise, sigmas[0])
        if given is not None:
            latents = keep_given(latents, given)
        return await self._sample(
            spec, job_plan, [conditionings[job_plan.prompt_of(w)] for w in plan.windows], latents, given, sigmas,
            lambda step: report(progress(step)), check_cancelled,
        )

    async def _sample(
        self, spec, job_plan: JobPlan, window_conditionings: Sequence[Conditioning], latents: torch.Tensor,
        given: FrameCondition | None, sigmas: list[float], on_step, check_cancelled,
    ) -> torch.Tensor:
        """Advance ``latents`` through the step groups: every window in parallel, then fusion.

        A loop's circle is rotated by the plan's roll before each group and rotated back after,
        so its end and its start are denoised as neighbours."""
        windows = job_plan.render.windows
        for index, (first, last) in enumerate(job_plan.step_groups(len(sigmas) - 1)):
            await check_cancelled()
            group_sigmas = tuple(sigmas[first : last + 1])
            roll = job_plan.roll(index)
            latents = torch.roll(latents, shifts=-roll, dims=1) if roll else latents

            def work_of(window: Window, conditioning: Conditioning) -> DenoiseWork | None:
                """The window's work item; None when all its frames are given (nothing to generate)."""
                frames = None
                if given is not None:
                    mask = given.mask[window.start : window.stop]
                    if bool(mask.all()):
                        return None
                    if bool(mask.any()):
                        frames = FrameCondition(given.latents[:, window.start : window.stop].contiguous(), mask.contiguous())
                return DenoiseWork(
                    latents=latents[:, window.start : window.stop].contiguous(),
                    sigmas=group_sigmas,
                    text=conditioning.text,
                    negative_text=conditioning.negative_text,
                    guidance_scale=spec.guidance_scale,
                    fps=spec.fps,
                    frames=frames,
                )

            works = [work_of(w, c) for w, c in zip(windows, window_conditionings, strict=True)]
            outputs: list[torch.Tensor | None] = [
                None if work is not None else given.latents[:, w.start : w.stop].clone() for w, work in zip(windows, works)
            ]
            todo = [i for i, work in enumerate(works) if work is not None]
            if len(windows) == 1 and todo:
                # One window: one streamed call, with progress as steps finish (coalesced when fast).
                async for update in self.stages.advance(works[0], self.step_progress_s):
                    on_step(first + update.steps_done)
                    await check_cancelled()
                    if update.latents is not None:
                        outputs[0] = update.latents
                if outputs[0] is None:
                    raise RuntimeError("denoiser stream ended without latents")
            elif todo:
                # Several windows: batched calls, spread over the Denoiser's replicas.
                batches = [[todo[i] for i in batch] for batch in window_batches(len(todo), self.denoiser_replicas, self.max_windows_per_call)]
                results = await gather_or_cancel(self.stages.advance_batch([works[i] for i in batch]) for batch in batches)
                for batch, batch_results in zip(batches, results, strict=True):
                    if len(batch_results) != len(batch):
                        raise RuntimeError(f"the denoiser returned {len(batch_results)} windows for a batch of {len(batch)}")
                    for i, result in zip(batch, batch_results):
                        outputs[i] = result

            if len(windows) == 1:
                latents = outputs[0]
            else:
                latents = fuse_windows(windows, outputs, latents.shape[1])
                if given is not None:  # fusion is exact only up to rounding; given frames stay bit-exact
                    latents = keep_given(latents, given)
            if roll:
                latents = torch.roll(latents, shifts=roll, dims=1)
            if len(windows) > 1:
                on_step(last)
        return latents

    async def _encode(self, placements: Sequence[Placement], job) -> list[torch.Tensor]:
        """Each placement's frames encoded by a Decoder replica: ``(C, latent_count, H, W)`` each."""
        spec = job.spec

        async def encode(placement: Placement) -> torch.Tensor:
            data = await asyncio.to_thread(read_input, self.store, job.tenant, job.job_id, placement.input)
            request = EncodeRequest(
                spec.width, spec.height, media=data, frame_indices=placement.frame_indices, group_aligned=placement.group_aligned,
            )
            latents = await self.stages.encode(request)
            if latents.shape[1] < placement.latent_count:
                raise RuntimeError(f"{placement.input} encoded to {latents.shape[1]} latent frames, expected {placement.latent_count}")
            return latents[:, : placement.latent_count]

        return await gather_or_cancel(encode(p) for p in placements)

    async def _given_frames(self, job, job_plan: JobPlan) -> FrameCondition | None:
        """The whole video's frame condition: given latent frames and their mask, or None."""
        if not job_plan.given:
            return None
        channels, frames, height, width = job_plan.render.latent_shape
        known = torch.zeros(channels, frames, height, width)  # (C, T, H, W)
        mask = torch.zeros(frames)
        for placement, latents in zip(job_plan.given, await self._encode(job_plan.given, job), strict=True):
            known[:, placement.latent_start : placement.latent_stop] = latents
            mask[placement.latent_start : placement.latent_stop] = 1
        return FrameCondition(known, mask)

    async def _decode_image(self, job, plan: RenderPlan, latents, keys: OutputKeys, written, report) -> bytes:
        """Image mode: the single latent frame to ``image.png`` (spatially tiled in the VAE when large)."""
        spec = job.spec
        decoded = await self.stages.decode_tile(DecodeTileRequest(
            index=0, latents=latents[:, :1].contiguous(), context_frames=0, first_frame=0, num_frames=1, fps=spec.fps,
            poster_frame=0, encode_video=False,
        ))
        if decoded.poster_png is None:
            raise RuntimeError("the decoder returned no image")
        await asyncio.to_thread(self.store.put_bytes, keys.image, decoded.poster_png, "image/png")
        written.append(keys.image)
        report(Progress(stage=Stage.DECODING, step=spec.steps, total_steps=spec.steps, segments_done=1, total_segments=1,
                        fraction=_EXPAND_SHARE + _DENOISE_SHARE + _DECODE_SHARE))
        return decoded.poster_png

    async def _decode_and_upload(self, job, plan: RenderPlan, latents, keys: OutputKeys, written, report, check_cancelled) -> bytes:
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
        writer = await asyncio.to_thread(self.store.open_multipart, keys.video, "video/mp4")
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
                # Each time tile is also a standalone MP4: a preview the client can play while
                # later segments are still being denoised or decoded.
                segment_key = keys.segment(decoded.index)
                await asyncio.to_thread(self.store.put_bytes, segment_key, decoded.mp4, "video/mp4")
                written.append(segment_key)
                report(Progress(
                    stage=Stage.DECODING, step=spec.steps, total_steps=spec.steps, segments_done=done + 1,
                    total_segments=len(tiles), segment_key=segment_key,
                    fraction=_EXPAND_SHARE + _DENOISE_SHARE + _DECODE_SHARE * (done + 1) / len(tiles),
                ))
            await asyncio.to_thread(muxer.close)
            await asyncio.to_thread(writer.close)
            written.append(keys.video)
        except BaseException:
            for task in pending:
                task.cancel()
            await asyncio.to_thread(writer.abort)
            raise
        if poster is None:
            raise RuntimeError("no decode tile returned the poster frame")
        return poster

    def _mode_manifest(self, job: JobRecord, job_plan: JobPlan, conditionings: Sequence[Conditioning], keys: OutputKeys) -> dict:
        """The manifest's mode entries: the mode, its inputs, where they went, and the shots."""
        spec = job.spec
        fps = spec.fps
        entries: dict = {
            "mode": spec.mode.value,
            "inputs": [
                {"name": item.name, **item.info.model_dump(mode="json"), "frames_used": len(item.frame_indices),
                 "first_source_frame": item.frame_indices[0], "last_source_frame": item.frame_indices[-1]}
                for item in spec.inputs
            ],
            "layout": job_plan.summary(self.model.card.geometry.temporal_factor),
        }
        if spec.mode == Mode.EXTEND:
            entries["extend"] = {"new_frames": spec.extend_frames, "backward": spec.backward}
        if spec.mode == Mode.EDIT:
            entries["edit"] = {"strength": spec.strength, "sigmas": job_plan.schedule(self.model.sigmas(spec.steps))}
        if spec.mode == Mode.TRANSITION:
            entries["transition"] = {"bridge_frames": spec.transition_frames, "bridge_s": spec.transition_frames / fps}
        if spec.shots:
            entries["shots"] = [
                {"index": r.index, "prompt": shot.prompt, "text": shot.text, "caption": c.caption, "expander": c.expander,
                 "transition": r.transition, "first_frame": r.first_frame, "num_frames": r.num_frames,
                 "start_s": r.first_frame / fps, "end_s": (r.first_frame + r.num_frames) / fps,
                 "latents": [r.latent_start, r.latent_stop]}
                for r, shot, c in zip(job_plan.shots, spec.shots, conditionings, strict=True)
            ]
            entries["character"] = spec.character
        if spec.mode == Mode.IMAGE:
            entries["outputs"] = {"image": self.store.uri(keys.image), "poster": self.store.uri(keys.poster),
                                  "manifest": self.store.uri(keys.manifest)}
            entries["video"] = {"width": spec.width, "height": spec.height, "num_frames": 1, "format": "png"}
            entries["segments"] = []
        return entries

    def _manifest(self, job: JobRecord, plan: RenderPlan, conditioning: Conditioning, keys: OutputKeys, timings: Timings) -> dict:
        card = self.model.card
        return {
            "job_id": job.job_id,
            "tenant": job.tenant,
            "mode": job.spec.mode.value,
            "request": job.request.model_dump(mode="json"),
            "resolved": job.spec.model_dump(mode="json"),
            "prompt": {"original": job.spec.prompt, "caption": conditioning.caption, "expander": conditioning.expander,
                       "expansion_note": conditioning.expansion_note},
            "seed": job.spec.seed,
            "model": {"family": card.family, "name": card.name, "version": card.version},
            "video": {
                "width": job.spec.width, "height": job.spec.height, "fps": job.spec.fps,
                "num_frames": job.spec.num_frames, "duration_s": job.spec.duration_s, "codec": "h264",
            },
            "plan": {**plan.summary(), "seam_frame_pairs": plan.seam_frame_pairs(card.geometry.temporal_factor)},
            "outputs": {"video": self.store.uri(keys.video), "poster": self.store.uri(keys.poster),
                        "manifest": self.store.uri(keys.manifest)},
            "segments": [
                {"index": tile.index, "uri": self.store.uri(keys.segment(tile.index)),
                 "first_frame": tile.first_frame, "num_frames": tile.num_frames,
                 "start_s": tile.first_frame / job.spec.fps, "duration_s": tile.num_frames / job.spec.fps}
                for tile in plan.decode_tiles
            ],
            "timings": timings.model_dump(),
            "created_at": job.created_at,
            "finished_at": time.time(),
        }


def keep_given(latents: torch.Tensor, given: FrameCondition) -> torch.Tensor:
    """``latents`` with the given frames put back exactly."""
    mask = given.mask.bool().view(1, -1, 1, 1)
    return torch.where(mask, given.latents.to(latents.dtype), latents)


def fuse_windows(windows: Sequence[Window], outputs: Sequence[torch.Tensor], latent_frames: int) -> torch.Tensor:
    """Blend each window's ``(C, t, H, W)`` output into the whole ``(C, T, H, W)`` video.

    The plan's weights sum to one per frame, so frames every window agrees on come out
    unchanged, and overlapping frames are convex combinations of the windows covering them."""
    first = outputs[0]
    fused = first.new_zeros((first.shape[0], latent_frames, *first.shape[2:]))  # (C, T, H, W)
    for window, output in zip(windows, outputs, strict=True):
        weights = torch.tensor(window.weights, dtype=output.dtype).view(1, -1, 1, 1)
        fused[:, window.start : window.stop] += output * weights
    return fused


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
