"""Denoiser stage: a stateless step server that batches sampler steps across windows and jobs.

A call carries one time window of one video (latents, noise levels, a reference to the job's
text conditioning, guidance, given frames, the job's priority) and streams back progress as
sampler steps finish (at most one update per ``report_every_s``, since each streamed item is a
hop of its own), then the advanced latents; or several windows of one step group at once
(``advance_batch``: one reply for the lot).

Inside the replica every window is split into its sampler steps, and one batching loop runs
them: before each forward it asks :func:`~tessera.serving.step_scheduling.next_batch` which
pending steps go together (compatible shape, any noise level and guidance scale, most urgent
first, capped by the config and the model's memory bound), so windows of one long job and steps
of several short jobs share forwards, and interactive work goes ahead of batch work at every
step boundary.

Nothing a job needs stays on the replica between calls (the text conditioning is cached by
content key only to save the transfer), so any replica can take any window of any job at any
step: long videos spread over all replicas, and a new replica helps in-flight jobs at once.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Hashable

import torch
from ray import serve

from tessera.models.config import ModelConfig
from tessera.models.interface import DenoiseWork, StepResult
from tessera.models.registry import load_model
from tessera.serving.config import StepBatchingConfig
from tessera.serving.logs import configure_replica_logging
from tessera.serving.metrics import record_denoiser_batch, record_denoiser_queue
from tessera.serving.stages import DenoiseUpdate, ModelThread, StepWork, TextCache
from tessera.serving.step_scheduling import BatchPolicy, PendingStep, WaitUntil, next_batch

logger = logging.getLogger(__name__)


class _Window:
    """A window in the batcher: its latents after the steps done so far, and where to report."""

    def __init__(self, work: DenoiseWork, text_key: str, priority: int):
        self.work = work
        self.latents = work.latents
        self.solver_state = work.solver_state
        self.steps_done = 0
        self.text_key = text_key
        self.priority = priority
        self.key = None
        self.updates: asyncio.Queue[tuple[int, StepResult] | BaseException] = asyncio.Queue()
        """(steps done, latents and solver state) after every step; an exception if the window failed."""

    @property
    def steps(self) -> int:
        return len(self.work.sigmas) - 1

    def next_step(self) -> DenoiseWork:
        index = self.steps_done
        return dataclasses.replace(self.work, latents=self.latents, sigmas=tuple(self.work.sigmas[index : index + 2]),
                                   solver_state=self.solver_state)


@dataclasses.dataclass(frozen=True)
class Forward:
    """What one batched forward held (kept for tests, benches and metrics)."""

    size: int
    jobs: int
    """Distinct text conditionings in it (a proxy for distinct jobs)."""
    priorities: tuple[int, ...]
    seconds: float
    started_at: float = 0.0
    """Wall-clock time (``time.time()``) the forward started: benches line forwards of several replicas up."""


class StepBatcher:
    """Advances windows step by step in batched forwards, in the order :func:`next_batch` decides.

    The batcher moves each window on to its next step itself, right after a forward and before
    the next decision, so a window in flight is always a candidate for the next batch."""

    def __init__(self, model, thread: ModelThread, policy: BatchPolicy, history: int = 4096):
        self.model = model
        self._thread = thread
        self.policy = policy
        self._pending: dict[int, tuple[PendingStep, _Window]] = {}
        self._windows: set[_Window] = set()
        self._ids = itertools.count()
        self._arrived = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._capacity: dict[Hashable, int | None] = {}
        self.forwards: collections.deque[Forward] = collections.deque(maxlen=history)
        self.forwards_run = 0
        self.steps_run = 0
        card = model.card
        self._model_name = f"{card.family}/{card.name}"
        self._patch_cells = math.prod(card.geometry.patch_size)
        self._queue_priorities: set[str] = set()
        self._batch_run_at: float | None = None
        """When this replica last started a forward of batch steps (monotonic), for the scheduler's starvation bound."""

    @property
    def pending(self) -> int:
        return len(self._pending)

    def backlog(self, interactive_min_priority: int) -> dict[str, float]:
        """Windows held (waiting or in a forward) and their outstanding window-steps, per class."""
        out = {"interactive_windows": 0.0, "batch_windows": 0.0, "interactive_window_steps": 0.0, "batch_window_steps": 0.0}
        for window in self._windows:
            job_class = "interactive" if window.priority >= interactive_min_priority else "batch"
            out[f"{job_class}_windows"] += 1
            out[f"{job_class}_window_steps"] += window.steps - window.steps_done
        return out

    def pending_by_priority(self) -> dict[int, int]:
        return dict(collections.Counter(step.priority for step, _ in self._pending.values()))

    async def advance(self, work: DenoiseWork, text_key: str, priority: int) -> AsyncIterator[tuple[int, StepResult]]:
        """``work`` through all its noise levels: (steps done, latents and solver state) after every step."""
        if self._loop_task is None or self._loop_task.done():  # first call, or a new event loop (in-process use)
            self._arrived = asyncio.Event()
            self._loop_task = asyncio.ensure_future(self._loop())
        window = _Window(work, text_key, priority)
        self._windows.add(window)
        self._enqueue(window, fresh=True)
        try:
            while True:
                update = await window.updates.get()
                if isinstance(update, BaseException):
                    raise update
                yield update
                if update[0] == window.steps:
                    return
        finally:  # done, failed, or its caller went away: its steps stop here
            self._windows.discard(window)
            for step_id in [i for i, (_, w) in self._pending.items() if w is window]:
                del self._pending[step_id]

    def _enqueue(self, window: _Window, fresh: bool) -> None:
        work = window.next_step()
        if window.key is None:
            window.key = (self.model.batch_key(work), len(work.sigmas))
            if window.key not in self._capacity:
                self._capacity[window.key] = self.model.max_batch_items(work)
        step = PendingStep(next(self._ids), window.key, window.priority, time.monotonic(), fresh)
        self._pending[step.id] = (step, window)
        self._arrived.set()

    async def _loop(self) -> None:
        try:
            await self._schedule()
        except Exception as error:  # a bug here must not leave callers waiting forever
            logger.exception("the step batching loop failed; failing its pending windows")
            for _, window in list(self._pending.values()):
                window.updates.put_nowait(error)
            raise

    async def _schedule(self) -> None:
        while True:
            self._arrived.clear()
            decision = next_batch([step for step, _ in self._pending.values()], time.monotonic(), self.policy,
                                  self._capacity, self._batch_run_at)
            if decision is None:
                await self._arrived.wait()
                continue
            if isinstance(decision, WaitUntil):
                try:
                    await asyncio.wait_for(self._arrived.wait(), max(0.0, decision.deadline - time.monotonic()))
                except TimeoutError:
                    pass
                continue
            windows = [self._pending.pop(step_id)[1] for step_id in decision.ids]
            if any(window.priority < self.policy.interactive_min_priority for window in windows):
                self._batch_run_at = time.monotonic()
            record_denoiser_queue(self._model_name, self.pending_by_priority(), self._queue_priorities)
            await self._forward(windows)

    async def _forward(self, windows: list[_Window]) -> None:
        started, started_at = time.monotonic(), time.time()
        try:
            outputs = await self._thread.run(self.model.step_with_state, [window.next_step() for window in windows])
        except Exception as error:
            if len(windows) == 1:
                windows[0].updates.put_nowait(error)
                return
            # One bad window must not fail its batch mates: run each alone to find it.
            for window in windows:
                await self._forward([window])
            return
        seconds = time.monotonic() - started
        self.steps_run += len(windows)
        self.forwards_run += 1
        self.forwards.append(Forward(
            size=len(windows), jobs=len({window.text_key for window in windows}),
            priorities=tuple(window.priority for window in windows), seconds=seconds, started_at=started_at,
        ))
        tokens = sum(math.prod(window.latents.shape[1:]) // self._patch_cells for window in windows)
        record_denoiser_batch(self._model_name, len(windows), tokens, seconds,
                              collections.Counter(window.priority for window in windows))
        for window, output in zip(windows, outputs, strict=True):
            if window not in self._windows:  # its caller went away during the forward
                continue
            window.latents, window.solver_state = output.latents, output.solver_state
            window.steps_done += 1
            window.updates.put_nowait((window.steps_done, output))
            if window.steps_done < window.steps:
                self._enqueue(window, fresh=False)


class DenoiserEngine:
    def __init__(self, model_config: ModelConfig, threads: int | None = None,
                 batching: StepBatchingConfig = StepBatchingConfig(), interactive_min_priority: int = 0):
        self.model = load_model(model_config, parts={"denoiser"})
        self.texts = TextCache()
        self.conditionings = TextCache(capacity=16)
        """The families' own conditionings (image to video), by content key, like the texts."""
        policy = BatchPolicy(batching.max_batch_items, batching.max_wait_s, batching.aging_s, interactive_min_priority,
                             batching.mix_classes, batching.starvation_s)
        self.batcher = StepBatcher(self.model, ModelThread(threads), policy)

    async def _resolve(self, work: StepWork) -> DenoiseWork:
        if work.latents is None:  # a first step group from pure noise: drawn here, not shipped
            if work.noise is None:
                raise ValueError("a work item needs latents or the noise to draw them from")
            work = dataclasses.replace(work, latents=await asyncio.to_thread(work.noise.latents, self.model.add_noise))
        conditioning = await self.conditionings.get(work.conditioning) if work.conditioning is not None else None
        work_item = work.resolve(*await self.texts.get(work.text), conditioning)
        if len(work_item.sigmas) < 2:
            raise ValueError(f"a work item needs at least two noise levels, got {work_item.sigmas}")
        return work_item

    async def _steps(self, step_work: StepWork) -> AsyncIterator[tuple[int, StepResult]]:
        """``step_work`` through all its noise levels, one batched step at a time: (steps done, result)."""
        work = await self._resolve(step_work)
        async for update in self.batcher.advance(work, step_work.text.key, step_work.priority):
            yield update

    async def _advance_all(self, step_work: StepWork) -> StepResult:
        result = None  # a work item has at least one step (checked when resolved)
        async for _, result in self._steps(step_work):
            pass
        return result

    async def advance(self, step_work: StepWork, report_every_s: float = 0.0) -> AsyncIterator[DenoiseUpdate]:
        """Steps done so far after each sampler step, or after the first step that ends at least
        ``report_every_s`` after the previous update (0: every step); the last update carries the latents."""
        if report_every_s < 0:
            raise ValueError(f"report_every_s must be >= 0, got {report_every_s}")
        steps = len(step_work.sigmas) - 1
        reported = time.monotonic()
        async for done, result in self._steps(step_work):
            last = done == steps
            if last or time.monotonic() - reported >= report_every_s:
                reported = time.monotonic()
                yield DenoiseUpdate(steps_done=done, latents=result.latents if last else None,
                                    solver_state=result.solver_state if last else None)

    async def advance_batch(self, step_works: list[StepWork]) -> list[StepResult]:
        """Several windows through the same noise levels; each step of theirs is batched with
        whatever else is pending on this replica."""
        if not step_works:
            raise ValueError("advance_batch needs at least one work item")
        sigmas = step_works[0].sigmas
        if len(sigmas) < 2 or any(work.sigmas != sigmas for work in step_works):
            raise ValueError("every window of a batch must share the same noise levels (at least two)")
        tasks = [asyncio.ensure_future(self._advance_all(work)) for work in step_works]
        try:
            return list(await asyncio.gather(*tasks))
        finally:  # one failure (or the caller going away) stops the others' steps
            for task in tasks:
                task.cancel()

    def batch_stats(self, last: int | None = None) -> dict:
        """Recent forwards (size, distinct jobs, priorities, seconds) and what is pending now."""
        forwards = list(self.batcher.forwards)[-last:] if last else list(self.batcher.forwards)
        return {
            "forwards": [dataclasses.asdict(forward) for forward in forwards],
            "forwards_run": self.batcher.forwards_run,
            "steps_run": self.batcher.steps_run,
            "pending": self.batcher.pending,
            "pending_by_priority": self.batcher.pending_by_priority(),
        }


@serve.deployment
class Denoiser:
    """Serve shim around :class:`DenoiserEngine`."""

    def __init__(self, model_config: ModelConfig, threads: int | None = None,
                 batching: StepBatchingConfig = StepBatchingConfig(), interactive_min_priority: int = 0):
        configure_replica_logging()
        self.engine = DenoiserEngine(model_config, threads, batching, interactive_min_priority)
        self.interactive_min_priority = interactive_min_priority

    async def advance(self, work: StepWork, report_every_s: float = 0.0) -> AsyncIterator[DenoiseUpdate]:
        async for update in self.engine.advance(work, report_every_s):
            yield update

    async def advance_batch(self, works: list[StepWork]) -> list[StepResult]:
        return await self.engine.advance_batch(works)

    async def batch_stats(self, last: int | None = None) -> dict:
        """The engine's :meth:`DenoiserEngine.batch_stats` and which replica answered."""
        return {**self.engine.batch_stats(last), "replica": serve.get_replica_context().replica_id.unique_id}

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Custom autoscaling metrics (Ray Serve; serving/autoscaling.py): the windows this replica
        holds and their outstanding steps, per priority class."""
        return self.engine.batcher.backlog(self.interactive_min_priority)
