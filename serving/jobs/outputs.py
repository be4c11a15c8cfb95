"""A job's outputs: decoded tiles muxed into one MP4, previews, poster, manifest; staged, then committed.

A lease holder writes everything under its own staging prefix
(``_tessera/staging/{tenant}/{job_id}/{token}/``), never under the job's final keys:

1. decoding: time tiles go to Decoder replicas a few at a time; finished tiles are stitched in
   order into one MP4 that streams into an S3 multipart upload, and each tile is also kept as
   a standalone preview segment the client can play before the job ends;
2. the poster, then the manifest (which names the final keys);
3. the engine records a :class:`~tessera.serving.jobs.records.Commit` (a fenced record write):
   from then on the outputs are decided; only then are they copied to ``{tenant}/{job_id}/``,
   manifest last, so a manifest under the final prefix means every output beside it is whole.

A holder that lost its lease fails at step 3 and its staging objects are deleted; they never
reach the final keys. A failed or cancelled job's staging prefix and multipart upload go too.

Segment previews are the exception: clients play them while the job runs, from the job's final
prefix. Each is written fenced by itself (:func:`put_fenced`): create-only, carrying the
writer's lease token in its metadata, and replaced only by a writer with a newer token, so a
stale holder can never overwrite the new owner's preview (it learns it is stale instead).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable, Sequence

import torch

from tessera.models.interface import VideoModel
from tessera.serving.jobs.layout import JobPlan
from tessera.serving.jobs.modes import rules_for
from tessera.serving.jobs.records import Commit, JobRecord, JobStore, Progress, Stage, Timings
from tessera.serving.jobs.retry import retry_storage
from tessera.serving.stages import Conditioning, DecodeTileRequest, Stages
from tessera.serving.storage import (
    ConditionFailedError,
    ObjectExistsError,
    ObjectNotFoundError,
    ObjectStore,
    StorageError,
)
from tessera.serving.video import EncodedTile, TileMuxer

# Share of the progress bar per stage (denoising dominates the work); the last 1% is finalising.
EXPAND_SHARE, DENOISE_SHARE, DECODE_SHARE = 0.05, 0.75, 0.19


@dataclasses.dataclass(frozen=True)
class OutputKeys:
    """Where a job's outputs go, under one root (the final ``{tenant}/{job_id}`` or a staging prefix)."""

    root: str

    @classmethod
    def final(cls, tenant: str, job_id: str) -> OutputKeys:
        return cls(f"{tenant}/{job_id}")

    @classmethod
    def staging(cls, tenant: str, job_id: str, token: int) -> OutputKeys:
        return cls(JobStore.staging_prefix(tenant, job_id, token).rstrip("/"))

    @property
    def video(self) -> str:
        return f"{self.root}/video.mp4"

    @property
    def poster(self) -> str:
        return f"{self.root}/poster.png"

    @property
    def manifest(self) -> str:
        return f"{self.root}/manifest.json"

    @property
    def image(self) -> str:
        return f"{self.root}/image.png"

    def segment(self, index: int) -> str:
        return f"{self.root}/segments/{index:04d}.mp4"


TOKEN_METADATA = "lease-token"


class StaleWriterError(Exception):
    """An object this writer meant to write was already written by a newer lease holder."""


def put_fenced(store: ObjectStore, key: str, data: bytes, content_type: str, token: int) -> None:
    """Write ``key`` unless a newer lease holder already did (blocking).

    Create-only first; if the key exists, it is replaced (``If-Match`` on its etag) only when
    its ``lease-token`` metadata is older than ``token``; a newer one raises StaleWriterError."""
    metadata = {TOKEN_METADATA: str(token)}
    for _ in range(8):
        try:
            store.put_bytes(key, data, content_type, metadata, if_absent=True)
            return
        except ObjectExistsError:
            pass
        try:
            existing = store.head(key)
        except ObjectNotFoundError:
            continue  # deleted meanwhile: create again
        written_by = int(existing.metadata.get(TOKEN_METADATA, "0") or 0)
        if written_by > token:
            raise StaleWriterError(f"{key} was written by lease {written_by}, newer than {token}")
        if written_by == token:
            store.put_bytes(key, data, content_type, metadata, if_match=existing.etag)
            return
        try:
            store.put_bytes(key, data, content_type, metadata, if_match=existing.etag)
            return
        except (ConditionFailedError, ObjectNotFoundError):
            continue  # someone wrote it meanwhile: look again
    raise StorageError(f"could not write {key}: it kept changing")


def commit_copies(staged: OutputKeys, final: OutputKeys, image: bool) -> list[tuple[str, str]]:
    """The copies that publish a job's staged outputs, in order: the video (or image), the
    poster, and the manifest last."""
    copies = [(staged.image, final.image) if image else (staged.video, final.video)]
    copies.append((staged.poster, final.poster))
    copies.append((staged.manifest, final.manifest))
    return copies


async def publish(store: ObjectStore, commit: Commit, budget_s: float) -> None:
    """Copy a commit's staged objects to their final keys (idempotent: the same bytes each time)."""
    for source, destination in commit.copies:
        await retry_storage(store.copy, source, destination, budget_s=budget_s, what=f"publishing {destination}")


def delete_prefix(store: ObjectStore, prefix: str) -> int:
    """Delete every object under ``prefix`` and abort its unfinished multipart uploads (blocking)."""
    removed = 0
    for key in list(store.iter_keys(prefix)):
        store.delete(key)
        removed += 1
    store.abort_uploads(prefix)
    return removed


class OutputWriter:
    """Decodes a job's latents and writes its outputs under a staging prefix."""

    def __init__(self, model: VideoModel, stages: Stages, store: ObjectStore, decode_ahead: int, storage_budget_s: float):
        self.model = model
        self.stages = stages
        self.store = store
        self.decode_ahead = decode_ahead
        self.storage_budget_s = storage_budget_s

    async def _put(self, key: str, data: bytes, content_type: str) -> None:
        await retry_storage(self.store.put_bytes, key, data, content_type, budget_s=self.storage_budget_s, what=f"writing {key}")

    async def decode_image(self, job: JobRecord, latents: torch.Tensor, keys: OutputKeys,
                           report: Callable[[Progress], None]) -> bytes:
        """Image mode: the single latent frame to ``image.png`` (spatially tiled in the VAE when large)."""
        spec = job.spec
        decoded = await self.stages.decode_tile(DecodeTileRequest(
            index=0, latents=latents[:, :1].contiguous(), context_frames=0, first_frame=0, num_frames=1, fps=spec.fps,
            poster_frame=0, encode_video=False, priority=spec.priority,
        ))
        if decoded.poster_png is None:
            raise RuntimeError("the decoder returned no image")
        await self._put(keys.image, decoded.poster_png, "image/png")
        report(Progress(stage=Stage.DECODING, step=spec.steps, total_steps=spec.steps, segments_done=1, total_segments=1,
                        fraction=EXPAND_SHARE + DENOISE_SHARE + DECODE_SHARE))
        return decoded.poster_png

    async def decode_video(self, job: JobRecord, job_plan: JobPlan, latents: torch.Tensor, keys: OutputKeys,
                           previews: OutputKeys, token: int, report: Callable[[Progress], None],
                           check: Callable[[], Awaitable[None]]) -> bytes:
        """Every time tile decoded, muxed into ``keys.video`` and kept as a preview under ``previews``
        (fenced by ``token``); returns the poster PNG."""
        spec = job.spec
        tiles = job_plan.render.decode_tiles
        poster_frame = spec.num_frames // 2

        def request(tile) -> DecodeTileRequest:
            inside = tile.first_frame <= poster_frame < tile.first_frame + tile.num_frames
            return DecodeTileRequest(
                index=tile.index, latents=latents[:, tile.input_start : tile.stop].contiguous(), context_frames=tile.context,
                first_frame=tile.first_frame, num_frames=tile.num_frames, fps=spec.fps,
                poster_frame=(poster_frame - tile.first_frame) if inside else None, priority=spec.priority,
            )

        poster: bytes | None = None
        pending: collections.deque[asyncio.Task] = collections.deque()
        next_tile = 0
        writer = await retry_storage(self.store.open_multipart, keys.video, "video/mp4", budget_s=self.storage_budget_s,
                                     what="starting the video upload")
        try:
            muxer = TileMuxer(writer, spec.fps)
            for done in range(len(tiles)):
                while next_tile < len(tiles) and len(pending) < self.decode_ahead:
                    pending.append(asyncio.ensure_future(self.stages.decode_tile(request(tiles[next_tile]))))
                    next_tile += 1
                await check()
                decoded = await pending.popleft()
                poster = decoded.poster_png or poster
                await retry_storage(muxer.add, EncodedTile(decoded.index, decoded.first_frame, decoded.num_frames, decoded.mp4),
                                    budget_s=self.storage_budget_s, what="uploading the video")
                segment_key = previews.segment(decoded.index)
                await retry_storage(put_fenced, self.store, segment_key, decoded.mp4, "video/mp4", token,
                                    budget_s=self.storage_budget_s, what=f"writing {segment_key}")
                report(Progress(
                    stage=Stage.DECODING, step=spec.steps, total_steps=spec.steps, segments_done=done + 1,
                    total_segments=len(tiles), segment_key=segment_key,
                    fraction=EXPAND_SHARE + DENOISE_SHARE + DECODE_SHARE * (done + 1) / len(tiles),
                ))
            await retry_storage(muxer.close, budget_s=self.storage_budget_s, what="uploading the video")
            await retry_storage(writer.close, budget_s=self.storage_budget_s, what="completing the video upload")
        except (Exception, asyncio.CancelledError):  # cancellation included, then re-raised: no decode call or upload may outlive the job
            for task in pending:
                task.cancel()
            try:
                await asyncio.to_thread(writer.abort)
            except Exception:  # the store is away: the engine's cleanup aborts the prefix's uploads later
                pass
            raise
        if poster is None:
            raise RuntimeError("no decode tile returned the poster frame")
        return poster

    async def write_manifest(self, keys: OutputKeys, manifest: dict) -> None:
        await self._put(keys.manifest, json.dumps(manifest, indent=2).encode(), "application/json")

    async def write_poster(self, keys: OutputKeys, poster: bytes) -> None:
        await self._put(keys.poster, poster, "image/png")


def build_manifest(
    model: VideoModel, store: ObjectStore, job: JobRecord, job_plan: JobPlan, conditionings: Sequence[Conditioning],
    keys: OutputKeys, timings: Timings,
) -> dict:
    """The manifest of a finished job, naming its final keys."""
    card = model.card
    spec = job.spec
    plan = job_plan.render
    conditioning = conditionings[0]
    temporal = card.geometry.temporal_factor
    manifest = {
        "job_id": job.job_id,
        "tenant": job.tenant,
        "mode": spec.mode.value,
        "request": job.request.model_dump(mode="json"),
        "resolved": spec.model_dump(mode="json"),
        "prompt": {"original": spec.prompt, "caption": conditioning.caption, "expander": conditioning.expander,
                   "expansion_note": conditioning.expansion_note},
        "seed": spec.seed,
        "model": {"family": card.family, "name": card.name, "version": card.version},
        "video": {
            "width": spec.width, "height": spec.height, "fps": spec.fps,
            "num_frames": spec.num_frames, "duration_s": spec.duration_s, "codec": "h264",
        },
        "plan": {**plan.summary(), "seam_frame_pairs": plan.seam_frame_pairs(temporal)},
        "outputs": {"video": store.uri(keys.video), "poster": store.uri(keys.poster), "manifest": store.uri(keys.manifest)},
        "segments": [
            {"index": tile.index, "uri": store.uri(keys.segment(tile.index)),
             "first_frame": tile.first_frame, "num_frames": tile.num_frames,
             "start_s": tile.first_frame / spec.fps, "duration_s": tile.num_frames / spec.fps}
            for tile in plan.decode_tiles
        ],
        "timings": timings.model_dump(),
        "attempts": job.attempts,
        "lease_token": job.lease.token if job.lease else 0,
        "takeovers": job.takeovers,
        "resumed_from_step_groups": job.resumed_from_groups,
        "created_at": job.created_at,
        "finished_at": time.time(),
    }
    manifest.update(_mode_entries(model, store, job, job_plan, conditionings, keys))
    if job_plan.loop_context:
        manifest["plan"]["seam_frame_pairs"] = job_plan.seam_frame_pairs(temporal)
    return manifest


def _mode_entries(model: VideoModel, store: ObjectStore, job: JobRecord, job_plan: JobPlan,
                  conditionings: Sequence[Conditioning], keys: OutputKeys) -> dict:
    """The manifest's mode entries: the mode, its inputs, where they went, and what the mode adds (e.g. its shots)."""
    spec = job.spec
    rules = rules_for(spec.mode)
    entries: dict = {
        "mode": spec.mode.value,
        "inputs": [
            {"name": item.name, **item.info.model_dump(mode="json"), "frames_used": len(item.frame_indices),
             "first_source_frame": item.frame_indices[0], "last_source_frame": item.frame_indices[-1]}
            for item in spec.inputs
        ],
        "layout": job_plan.summary(model.card.geometry.temporal_factor),
        **rules.manifest(spec, job_plan, model, conditionings),
    }
    if rules.writes_image:
        entries["outputs"] = {"image": store.uri(keys.image), "poster": store.uri(keys.poster),
                              "manifest": store.uri(keys.manifest)}
        entries["video"] = {"width": spec.width, "height": spec.height, "num_frames": 1, "format": "png"}
        entries["segments"] = []
    return entries
