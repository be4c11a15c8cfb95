"""Which pending sampler steps a Denoiser replica runs together next: pure decisions.

Every window a Denoiser replica is asked to advance is split into its sampler steps; a step is
*pending* from the moment its window's previous step finished (or its call arrived) until it runs.
Before every forward the replica asks :func:`next_batch` which pending steps go in, so windows of
one long job and steps of several short jobs share forwards, each at its own noise level and
guidance scale (continuous batching at step granularity: a window that finishes leaves the batch
at once, a newly arrived one joins at the next step boundary).

The rules, in order:

1. **Class first**: interactive work (priority 0 and up) goes ahead of batch work (negative
   priorities) at every step boundary, unless the replica has run no batch forward for
   ``starvation_s`` while batch steps waited (the caller says when it last ran each class):
   then one batch forward goes first. Batch work is slowed down under load, never starved, and
   how long batch steps waited behind *other batch steps* never lets them pass interactive
   work (with seconds-long forwards it did: a batch step that waited one forward of its own
   class outranked a fresh interactive step, and a 5 s clip's four steps each waited behind
   batch forwards, 15-20 s instead of 2, bench/results/sim_traffic_aging_across_classes.json, commit a4884bd).
   **Urgency** then picks the head within the class: the job's priority plus one level per
   ``aging_s`` seconds the step has waited.
2. The batch is the head and the most urgent steps that can share its forward (equal
   ``key``: same latent shape, sampler and guidance mode), up to ``capacity``: the smaller of
   the config's ``max_batch_items`` and the model's memory bound for that key. Unless
   ``mix_classes``, they are of the head's class only (interactive or batch): a batched forward
   takes longer than a lone one, and interactive steps should not pay for batch work riding
   along (measured on CPU: a third of an interactive job's slowdown beside a batch).
3. **Bounded wait**: when the batch is not full and every pending step has just arrived (a
   first step: the replica has nothing in flight), the replica waits for company until the
   oldest of them has waited ``max_wait_s``. Once any window is in flight its steps never wait:
   work in flight is not slowed down to batch better, and newcomers join it at the next step.

Plain data in, plain data out; no clocks, no tensors (the caller passes ``now``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping, Sequence


@dataclasses.dataclass(frozen=True)
class PendingStep:
    """One sampler step of one window, ready to run."""

    id: int
    key: Hashable
    """Steps with equal keys can share a forward (the model's batch key and schedule length)."""
    priority: int
    """The job's priority: higher first; interactive jobs are >= 0, batch work below."""
    ready_at: float
    """When the step became ready (seconds, the caller's monotonic clock)."""
    fresh: bool
    """True for a window's first step on this replica (its call just arrived)."""


@dataclasses.dataclass(frozen=True)
class BatchPolicy:
    max_batch_items: int
    """Most steps in one forward (the config's limit; the model's memory bound may be lower)."""
    max_wait_s: float
    """Longest a batch of just-arrived steps waits for more to arrive."""
    aging_s: float
    """Seconds of waiting worth one priority level."""
    interactive_min_priority: int = 0
    """Steps of jobs with at least this priority are interactive, the rest batch work."""
    mix_classes: bool = False
    """Whether interactive and batch steps may share a forward (more throughput, slower interactive steps)."""
    starvation_s: float = 10.0
    """Longest batch steps wait while the replica runs only interactive forwards."""

    def __post_init__(self) -> None:
        if self.max_batch_items < 1:
            raise ValueError(f"max_batch_items must be >= 1, got {self.max_batch_items}")
        if self.max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {self.max_wait_s}")
        if self.aging_s <= 0:
            raise ValueError(f"aging_s must be > 0, got {self.aging_s}")
        if self.starvation_s <= 0:
            raise ValueError(f"starvation_s must be > 0, got {self.starvation_s}")


@dataclasses.dataclass(frozen=True)
class RunBatch:
    ids: tuple[int, ...]
    """The steps to run as one forward, most urgent first."""


@dataclasses.dataclass(frozen=True)
class WaitUntil:
    deadline: float
    """Ask again at this time (or as soon as another step arrives)."""


def urgency(step: PendingStep, now: float, policy: BatchPolicy) -> float:
    """The step's priority raised by one level per ``aging_s`` of waiting."""
    return step.priority + max(0.0, now - step.ready_at) / policy.aging_s


def _order(step: PendingStep, now: float, policy: BatchPolicy) -> tuple[float, float, int]:
    return (-urgency(step, now, policy), step.ready_at, step.id)


def next_batch(
    pending: Sequence[PendingStep], now: float, policy: BatchPolicy, capacity: Mapping[Hashable, int | None] | None = None,
    batch_run_at: float | None = None,
) -> RunBatch | WaitUntil | None:
    """The next forward's steps, a time to decide again, or None when nothing is pending.

    ``capacity`` maps a batch key to the model's bound on steps per forward (None or missing:
    only the policy's ``max_batch_items``). ``batch_run_at``: when the replica last started a
    forward of batch steps (None: not yet)."""
    if not pending:
        return None

    def interactive(step: PendingStep) -> bool:
        return step.priority >= policy.interactive_min_priority

    batch_steps = [step for step in pending if not interactive(step)]
    first_class = True  # interactive
    if len(batch_steps) == len(pending):
        first_class = False
    elif batch_steps:
        waiting_since = min(step.ready_at for step in batch_steps)
        if batch_run_at is not None:
            waiting_since = max(waiting_since, batch_run_at)
        first_class = now - waiting_since < policy.starvation_s
    ranked = sorted(pending, key=lambda step: (interactive(step) != first_class, *_order(step, now, policy)))
    head = ranked[0]
    bound = (capacity or {}).get(head.key)
    limit = policy.max_batch_items if bound is None else max(1, min(bound, policy.max_batch_items))
    head_class = head.priority >= policy.interactive_min_priority
    batch = [step for step in ranked if step.key == head.key
             and (policy.mix_classes or (step.priority >= policy.interactive_min_priority) == head_class)][:limit]
    if len(batch) < limit and all(step.fresh for step in pending):
        deadline = min(step.ready_at for step in batch) + policy.max_wait_s
        if now < deadline:
            return WaitUntil(deadline)
    return RunBatch(tuple(step.id for step in batch))
