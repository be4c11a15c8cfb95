"""The sampling loop of one job: from noise (or a checkpoint) to the whole video's clean latents.

One noise tensor covers the whole video (every latent frame from its own generator); a job that
starts from pure noise does not ship it: each window's Denoiser replica draws its own slice in
the first step group (``WindowNoise``). Each step group advances every window with
its slice of the frame condition (batched calls spread over the Denoiser's replicas, whichever
is free takes each; a lone window is one streamed call with per-step progress), then overlaps
are fused with the plan's weights and given frames put back exactly. After every group the
caller's ``after_group`` hook sees the latents, which is where checkpoints are taken; a job
resumed from a checkpoint enters the loop at the group after it.

Only data moves here; the model work is in the stages, the shape decisions in the plan, and
the tensor arithmetic (noise, fusion) runs in a worker thread, never on the event loop that
serves the engine's calls.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import torch

from tessera.models.interface import FrameCondition, ModelConditioning, VideoModel, frame_noise
from tessera.serving.jobs.inputs import read_input
from tessera.serving.jobs.layout import JobPlan, Placement
from tessera.serving.jobs.planner import Window, window_batches
from tessera.serving.jobs.records import JobRecord
from tessera.serving.stages import ConditionRequest, EncodeRequest, SharedConditioning, SharedText, Stages, StepWork, WindowNoise
from tessera.serving.storage import ObjectStore


@dataclasses.dataclass
class SamplingHooks:
    """How the loop talks to the job's owner."""

    on_step: Callable[[int], None]
    """Sampler steps done so far (of the job's whole schedule)."""
    check: Callable[[], Awaitable[None]]
    """Raises to stop the job (cancelled, lease lost, replica draining); called between calls."""
    after_group: Callable[[int, torch.Tensor], Awaitable[None]]
    """Step groups done so far and the latents after them (checkpoints)."""


@dataclasses.dataclass
class SamplingSettings:
    denoiser_replicas: int = 1
    """The most Denoiser replicas there can be: a long video's windows go out in at least this many calls."""
    max_windows_per_call: int = 1
    step_progress_s: float = 0.0
    """Shortest interval between the step updates a single-window video streams back."""


class Sampler:
    def __init__(self, model: VideoModel, stages: Stages, store: ObjectStore, settings: SamplingSettings):
        self.model = model
        self.stages = stages
        self.store = store
        self.settings = settings

    async def denoise(
        self, job: JobRecord, job_plan: JobPlan, texts: Sequence[SharedText], hooks: SamplingHooks,
        resume: tuple[int, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The clean latents ``(C, T, H, W)`` of the whole video. ``texts``: one per prompt of the
        plan; ``resume``: (step groups done, latents after them) from a checkpoint."""
        spec = job.spec
        sigmas = job_plan.noise_levels(self.model, spec.steps)  # SDEdit: only the levels below its strength
        windows = job_plan.render.windows
        shared: list[SharedConditioning | None] = [None] * len(windows)
        if spec.mode.value in self.model.card.capabilities.conditioned_modes:
            # The family's own conditioning of the given images, made once per job on a Decoder
            # replica and shared by reference per window (its given frames, if any, inside it).
            conditioning = await self.model_conditioning(job, job_plan)
            given = conditioning.frames
            shared = await asyncio.to_thread(
                lambda: [self.stages.share_conditioning(conditioning.window(w.start, w.stop)) for w in windows])
        else:
            given = await self.given_frames(job, job_plan)
        latents: torch.Tensor | None
        if resume is not None:
            groups_done, latents = resume
        elif job_plan.init is None and given is None and job_plan.roll(0) == 0:
            # Pure noise: each window's replica draws its own slice (WindowNoise), nothing shipped.
            groups_done, latents = 0, None
        else:
            groups_done = 0
            clean = (await self.encode([job_plan.init], job))[0] if job_plan.init is not None else None
            latents = await asyncio.to_thread(self._initial_latents, job, job_plan, sigmas[0], clean, given)
        window_texts = [texts[job_plan.prompt_of(w)] for w in windows]
        return await self._sample(spec, job_plan, window_texts, latents, given, sigmas, hooks, groups_done, shared)

    def _initial_latents(self, job: JobRecord, job_plan: JobPlan, sigma: float, clean: torch.Tensor | None,
                         given: FrameCondition | None) -> torch.Tensor:
        channels, frames, height, width = job_plan.render.latent_shape
        noise = frame_noise(job.spec.seed, 0, frames, (channels, height, width))  # (C, T, H, W)
        # SDEdit enters the schedule from the input's latents noised to its first level.
        latents = self.model.add_noise(clean if clean is not None else torch.zeros_like(noise), noise, sigma)
        return given.apply(latents) if given is not None else latents

    async def _sample(
        self, spec, job_plan: JobPlan, window_texts: Sequence[SharedText], latents: torch.Tensor | None,
        given: FrameCondition | None, sigmas: list[float], hooks: SamplingHooks, groups_done: int,
        shared: Sequence[SharedConditioning | None] = (),
    ) -> torch.Tensor:
        """Advance ``latents`` through the step groups from ``groups_done`` on: every window in
        parallel, then fusion. A loop's circle is rotated by the plan's roll before each group
        and rotated back after, so its end and its start are denoised as neighbours. ``latents``
        None: the job's pure noise at ``sigmas[0]``, drawn by the replicas in the first group."""
        windows = job_plan.render.windows
        channels, latent_frames, height, width = job_plan.render.latent_shape
        shared = list(shared) or [None] * len(windows)
        groups = job_plan.step_groups(len(sigmas) - 1)
        if groups_done:
            hooks.on_step(groups[groups_done - 1][1])
        state: SolverState = None  # a multistep solver's history over the whole video; none after a resume
        for index in range(groups_done, len(groups)):
            first, last = groups[index]
            await hooks.check()
            group_sigmas = tuple(sigmas[first : last + 1])
            roll = job_plan.roll(index)
            if roll and any(shared):
                raise ValueError("a family's own conditioning is sliced per window and cannot roll with a loop")
            if latents is None:
                works = [self._work(spec, w, t, None, None, group_sigmas, None, c,
                                    WindowNoise(spec.seed, w.start, w.stop, (channels, height, width), group_sigmas[0]))
                         for w, t, c in zip(windows, window_texts, shared, strict=True)]
            else:
                _, works = await asyncio.to_thread(self._works, spec, windows, window_texts, latents, given, group_sigmas,
                                                   roll, state, shared)
            outputs: list[torch.Tensor | None] = [
                None if work is not None else given.latents[:, w.start : w.stop].clone() for w, work in zip(windows, works)
            ]
            states: list[SolverState] = [None] * len(windows)
            todo = [i for i, work in enumerate(works) if work is not None]
            if len(windows) == 1 and todo:
                # One window: one streamed call, with progress as steps finish (coalesced when fast).
                async for update in self.stages.advance(works[0], self.settings.step_progress_s):
                    hooks.on_step(first + update.steps_done)
                    await hooks.check()
                    if update.latents is not None:
                        outputs[0], states[0] = update.latents, update.solver_state
                if outputs[0] is None:
                    raise RuntimeError("denoiser stream ended without latents")
            elif todo:
                # Several windows: batched calls, spread over the Denoiser's replicas.
                batches = [[todo[i] for i in batch] for batch in window_batches(
                    len(todo), self.settings.denoiser_replicas, self.settings.max_windows_per_call)]
                results = await gather_or_cancel(self.stages.advance_batch([works[i] for i in batch]) for batch in batches)
                for batch, batch_results in zip(batches, results, strict=True):
                    if len(batch_results) != len(batch):
                        raise RuntimeError(f"the denoiser returned {len(batch_results)} windows for a batch of {len(batch)}")
                    for i, result in zip(batch, batch_results):
                        outputs[i], states[i] = result.latents, result.solver_state
            latents = await asyncio.to_thread(self._combine, windows, outputs, latent_frames, given, roll)
            state = await asyncio.to_thread(combine_states, windows, states, latent_frames, roll)
            if len(windows) > 1:
                hooks.on_step(last)
            await hooks.after_group(index + 1, latents)
        return latents

    def _works(self, spec, windows: Sequence[Window], texts: Sequence[SharedText], latents: torch.Tensor,
               given: FrameCondition | None, sigmas: tuple[float, ...], roll: int,
               state: SolverState, shared: Sequence[SharedConditioning | None]) -> tuple[torch.Tensor, list[StepWork | None]]:
        """The step group's work items, sliced from the (rolled) latents and solver state."""
        rolled = torch.roll(latents, shifts=-roll, dims=1) if roll else latents
        rolled_state = map_frames(state, lambda t: torch.roll(t, shifts=-roll, dims=-3)) if roll else state
        return rolled, [
            self._work(spec, w, t, rolled, given, sigmas, map_frames(rolled_state, lambda x, w=w: x[..., w.start : w.stop, :, :].contiguous()),
                       c, starts_video=w.start == 0 and roll == 0)
            for w, t, c in zip(windows, texts, shared, strict=True)
        ]

    @staticmethod
    def _work(spec, window: Window, text: SharedText, latents: torch.Tensor | None, given: FrameCondition | None,
              sigmas: tuple[float, ...], state: SolverState = None, conditioning: SharedConditioning | None = None,
              noise: WindowNoise | None = None, starts_video: bool | None = None) -> StepWork | None:
        """The window's work item; None when all its frames are given (nothing to generate). With
        the family's own conditioning, the given frames travel inside it (by reference). With
        ``noise`` (``latents`` None), the replica draws the window's starting latents. ``starts_video``
        defaults to whether the window starts at latent frame 0."""
        frames = None
        if given is not None:
            mask = given.mask[window.start : window.stop]
            if bool(mask.all()):
                return None
            if bool(mask.any()) and conditioning is None:
                frames = FrameCondition(given.latents[:, window.start : window.stop].contiguous(), mask.contiguous())
        return StepWork(
            latents=latents[:, window.start : window.stop].contiguous() if latents is not None else None, sigmas=sigmas,
            text=text, guidance_scale=spec.guidance_scale, fps=spec.fps, frames=frames, priority=spec.priority,
            solver_state=state, conditioning=conditioning, noise=noise,
            starts_video=window.start == 0 if starts_video is None else starts_video,
        )

    @staticmethod
    def _combine(windows: Sequence[Window], outputs, latent_frames: int, given: FrameCondition | None, roll: int) -> torch.Tensor:
        if len(windows) == 1:
            latents = outputs[0]
        else:
            latents = fuse_windows(windows, outputs, latent_frames)
            if given is not None:  # fusion is exact only up to rounding; given frames stay bit-exact
                latents = given.apply(latents)
        return torch.roll(latents, shifts=roll, dims=1) if roll else latents

    async def encode(self, placements: Sequence[Placement], job: JobRecord) -> list[torch.Tensor]:
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

    async def model_conditioning(self, job: JobRecord, job_plan: JobPlan) -> ModelConditioning:
        """The family's own conditioning of the plan's given images (one frame each), made on a
        Decoder replica: each image stands at the pixel frame its placement gives it (the first
        frame of its latent frame, or the last of a group-aligned one)."""
        spec, render = job.spec, job_plan.render
        grid = self.model.geometry.time_grid
        num_frames = grid.pixel_frames(render.latent_frames)
        images: dict[int, bytes] = {}
        for placement in job_plan.given:
            if len(placement.frame_indices) != 1 or placement.latent_count != 1:
                raise ValueError(f"{placement.input}: a family's own conditioning takes single images, got "
                                 f"{len(placement.frame_indices)} frames over {placement.latent_count} latent frames")
            first, end = grid.pixel_range(placement.latent_start, placement.latent_stop)
            frame = min(end - 1 if placement.group_aligned else first, num_frames - 1)
            images[frame] = await asyncio.to_thread(read_input, self.store, job.tenant, job.job_id, placement.input)
        request = ConditionRequest(spec.width, spec.height, num_frames, spec.seed, images)
        return await self.stages.encode_conditioning(request)

    async def given_frames(self, job: JobRecord, job_plan: JobPlan) -> FrameCondition | None:
        """The whole video's frame condition: given latent frames and their mask, or None."""
        if not job_plan.given:
            return None
        channels, frames, height, width = job_plan.render.latent_shape
        known = torch.zeros(channels, frames, height, width)  # (C, T, H, W)
        mask = torch.zeros(frames)
        for placement, latents in zip(job_plan.given, await self.encode(job_plan.given, job), strict=True):
            known[:, placement.latent_start : placement.latent_stop] = latents
            mask[placement.latent_start : placement.latent_stop] = 1
        return FrameCondition(known, mask)


def fuse_windows(windows: Sequence[Window], outputs: Sequence[torch.Tensor], latent_frames: int) -> torch.Tensor:
    """Blend each window's ``(C, t, H, W)`` output into the whole ``(C, T, H, W)`` video.

    The plan's weights sum to one per frame, so frames every window agrees on come out
    unchanged, and overlapping frames are convex combinations of the windows covering them."""
    first = outputs[0]
    fused = first.new_zeros((*first.shape[:-3], latent_frames, *first.shape[-2:]))  # (..., C, T, H, W)
    for window, output in zip(windows, outputs, strict=True):
        weights = torch.tensor(window.weights, dtype=output.dtype).view(-1, 1, 1)  # (t, 1, 1)
        fused[..., window.start : window.stop, :, :] += output * weights
    return fused


SolverState = dict[str, Any] | None
"""A multistep solver's history (``DenoiseWork.solver_state``): plain data whose tensors of 4 or more
dimensions are laid out like latents, ``(..., C, T, H, W)``, so it is sliced, rolled and fused
along time exactly as the latents are."""


def map_frames(state, fn):
    """``state`` with ``fn`` applied to every latent-shaped tensor in it (dicts, lists, tuples walked)."""
    if isinstance(state, torch.Tensor):
        return fn(state) if state.ndim >= 4 else state
    if isinstance(state, dict):
        return {key: map_frames(value, fn) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(map_frames(value, fn) for value in state)
    return state


def fuse_states(windows: Sequence[Window], states: Sequence, latent_frames: int):
    """The windows' solver states fused into the whole video's with the plan's weights, like the
    latents; what is not latent-shaped (step index, order counters) is the same for every window."""
    first = states[0]
    if isinstance(first, torch.Tensor) and first.ndim >= 4:
        return fuse_windows(windows, states, latent_frames)
    if isinstance(first, dict):
        return {key: fuse_states(windows, [state[key] for state in states], latent_frames) for key in first}
    if isinstance(first, (list, tuple)):
        return type(first)(fuse_states(windows, list(values), latent_frames) for values in zip(*states, strict=True))
    return first


def combine_states(windows: Sequence[Window], states: Sequence[SolverState], latent_frames: int, roll: int) -> SolverState:
    """The whole video's solver state after a step group; None when some window kept none (its
    frames were all given, or the family's sampler has no history): the next step then starts
    its solver from the noise levels alone."""
    if any(state is None for state in states):
        return None
    state = states[0] if len(windows) == 1 else fuse_states(windows, states, latent_frames)
    return map_frames(state, lambda t: torch.roll(t, shifts=roll, dims=-3)) if roll else state


async def gather_or_cancel(coroutines) -> list:
    """Like ``asyncio.gather``, but the first failure cancels the rest and is raised as is."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return await asyncio.gather(*tasks)
    except (Exception, asyncio.CancelledError):  # cancellation included, then re-raised: the sibling calls must not outlive this one
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
