"""One attempt at a job by its lease holder: conditioning, sampling, outputs staged, a Commit returned.

1. conditioning: the PromptExpander re-captions and encodes the prompt (each shot's, for
   multi-shot); the text tensors are then shared by reference, once per job;
2. sampling (``sampling.py``), from noise or from the job's checkpoint;
3. outputs (``outputs.py``) under this holder's staging prefix, manifest last.

The engine turns the returned :class:`Commit` into the job's final outputs with a fenced
record write; nothing here touches the job's final keys or its record.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable

import torch

from tessera.models.interface import VideoModel
from tessera.serving.jobs.layout import JobPlan
from tessera.serving.jobs.modes import rules_for, shot_text
from tessera.serving.jobs.outputs import (
    DENOISE_SHARE,
    EXPAND_SHARE,
    OutputKeys,
    OutputWriter,
    build_manifest,
    commit_copies,
)
from tessera.serving.jobs.records import Commit, JobRecord, Progress, Stage, Timings
from tessera.serving.jobs.sampling import Sampler, SamplingHooks, SamplingSettings, gather_or_cancel
from tessera.serving.metrics import StepMeter
from tessera.serving.stages import Stages
from tessera.serving.storage import ObjectStore


@dataclasses.dataclass
class AttemptControl:
    """What the lease holder gives the attempt."""

    report: Callable[[Progress], None]
    check: Callable[[], Awaitable[None]]
    after_group: Callable[[int, torch.Tensor], Awaitable[None]]
    resume: tuple[int, torch.Tensor] | None = None
    """(step groups done, latents) from the job's checkpoint."""


class JobRenderer:
    def __init__(self, model: VideoModel, stages: Stages, store: ObjectStore, sampling: SamplingSettings,
                 decode_ahead: int, storage_budget_s: float):
        self.model = model
        self.stages = stages
        self.store = store
        self.sampler = Sampler(model, stages, store, sampling)
        self.outputs = OutputWriter(model, stages, store, decode_ahead, storage_budget_s)

    async def render(self, job: JobRecord, token: int, job_plan: JobPlan, control: AttemptControl) -> Commit:
        spec = job.spec
        plan = job_plan.render
        staged = OutputKeys.staging(job.tenant, job.job_id, token)
        final = OutputKeys.final(job.tenant, job.job_id)
        timings = Timings()
        started = time.monotonic()
        tiles = len(plan.decode_tiles)

        control.report(Progress(stage=Stage.EXPANDING_PROMPT, total_steps=spec.steps, total_segments=tiles))
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
        texts = [self.stages.share(c) for c in conditionings]
        timings.expand_s = time.monotonic() - t0

        t0 = time.monotonic()
        total = len(job_plan.noise_levels(self.model, spec.steps)) - 1
        # Steps a checkpoint already holds are not done again, so they are not counted again.
        groups_done = control.resume[0] if control.resume else 0
        steps = StepMeter(job_plan.step_groups(total)[groups_done - 1][1] if groups_done else 0)

        def on_step(step: int) -> None:
            steps.update(step)
            control.report(Progress(stage=Stage.DENOISING, step=step, total_steps=total, total_segments=tiles,
                                    fraction=EXPAND_SHARE + DENOISE_SHARE * step / total))

        on_step(0)
        hooks = SamplingHooks(on_step=on_step, check=control.check, after_group=control.after_group)
        latents = await self.sampler.denoise(job, job_plan, texts, hooks, resume=control.resume)
        timings.denoise_s = time.monotonic() - t0

        t0 = time.monotonic()
        if job_plan.loop_context:
            latents = await asyncio.to_thread(with_loop_context, latents, job_plan.loop_context)
        image = rules_for(spec.mode).writes_image
        if image:
            poster = await self.outputs.decode_image(job, latents, staged, control.report)
        else:
            poster = await self.outputs.decode_video(job, job_plan, latents, staged, final, token, control.report, control.check)
        timings.decode_s = time.monotonic() - t0

        await control.check()
        control.report(Progress(stage=Stage.FINALIZING, step=spec.steps, total_steps=spec.steps,
                                segments_done=tiles, total_segments=tiles, fraction=0.99))
        t0 = time.monotonic()
        await self.outputs.write_poster(staged, poster)
        timings.finalize_s = time.monotonic() - t0
        timings.queued_s = max(0.0, (job.started_at or job.created_at) - job.created_at)
        timings.total_s = timings.queued_s + (time.monotonic() - started)
        await self.outputs.write_manifest(staged, build_manifest(self.model, self.store, job, job_plan, conditionings, final, timings))
        return Commit(
            token=token,
            copies=commit_copies(staged, final, image=image),
            video_key="" if image else final.video,
            image_key=final.image if image else "",
            poster_key=final.poster,
            manifest_key=final.manifest,
            expanded_prompt="\n".join(c.caption for c in conditionings),
            timings=timings,
        )


def with_loop_context(latents: torch.Tensor, context: int) -> torch.Tensor:
    """A loop's circle with its last ``context`` groups in front, as the causal context of its
    first: the decode tiles of a loop index latents laid out this way."""
    groups = latents.shape[1]
    wrap = [(groups - context + i) % groups for i in range(context)]
    return torch.cat([latents[:, wrap], latents], dim=1)
