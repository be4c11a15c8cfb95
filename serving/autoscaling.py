"""Backlog-driven autoscaling of the Denoiser: Ray Serve custom policy over custom metrics.

Why this shape (Ray 2.60): Serve accepts a *deployment-level* custom policy (``autoscaling_config.
policy``), called on the controller every ``metrics_interval_s`` with an ``AutoscalingContext``
that carries the custom metrics each replica reports from ``record_autoscaling_stats``; Serve
itself then applies ``min_replicas``/``max_replicas``, ``upscale_delay_s``/``downscale_delay_s``
and scale-from-zero on requests queued at handles. Application-level policies exist but are
marked "under development and not yet supported" in 2.60's schema, so each stage scales on
what reaches it.

What the Denoiser reports is the backlog its step scheduler sees: windows waiting for or
in a forward, and their outstanding window-steps, per priority class. A replica advances up to
``max_batch_items`` windows per forward, so the desired count is the weighted backlog of
windows over ``windows_per_replica``: interactive windows count fully, batch windows by
``batch_weight`` (batch work is allowed to queue deeper before it buys replicas). A replica
that is still starting (loading weights) is never scaled away: while any is, the policy does
not go below the current target. New replicas help jobs already in flight at their next step
group, since every call is a window of any job.

The decision itself is the pure :func:`desired_replicas`.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Backlog:
    """What a Denoiser's replicas report, summed over replicas."""

    interactive_windows: float = 0.0
    batch_windows: float = 0.0
    queued_calls: float = 0.0
    """Calls queued at handles that no replica has taken yet (each at least one window)."""


def desired_replicas(backlog: Backlog, windows_per_replica: float, batch_weight: float, current_target: int,
                     running: int) -> int:
    """Replicas for this backlog: weighted windows over ``windows_per_replica`` (at least 1 while
    anything waits; 0 when idle, which Serve raises to ``min_replicas``). Never below the current
    target while replicas are still starting (``running < current_target``)."""
    if windows_per_replica <= 0:
        raise ValueError(f"windows_per_replica must be > 0, got {windows_per_replica}")
    if not 0 <= batch_weight <= 1:
        raise ValueError(f"batch_weight must lie in [0, 1], got {batch_weight}")
    weighted = backlog.interactive_windows + backlog.queued_calls + batch_weight * backlog.batch_windows
    desired = math.ceil(weighted / windows_per_replica - 1e-9) if weighted > 0 else 0
    if backlog.batch_windows > 0:
        desired = max(desired, 1)  # batch work alone still gets a replica: never starved
    if running < current_target:
        desired = max(desired, current_target)
    return desired


class BacklogPolicy:
    """The Serve policy object (``policy_function: tessera.serving.autoscaling:BacklogPolicy``,
    ``policy_kwargs: {windows_per_replica, batch_weight}``); Serve instantiates it once."""

    def __init__(self, windows_per_replica: float = 8.0, batch_weight: float = 0.5):
        self.windows_per_replica = windows_per_replica
        self.batch_weight = batch_weight

    def __call__(self, ctx) -> tuple[int, dict]:
        metrics = ctx.aggregated_metrics or {}

        def total(name: str) -> float:
            return float(sum(metrics.get(name, {}).values()))

        backlog = Backlog(
            interactive_windows=total("interactive_windows"), batch_windows=total("batch_windows"),
            queued_calls=float(ctx.total_queued_requests or 0.0),
        )
        desired = desired_replicas(backlog, self.windows_per_replica, self.batch_weight, ctx.target_num_replicas,
                                   len(ctx.running_replicas))
        return desired, {"backlog": dataclasses.asdict(backlog)}
