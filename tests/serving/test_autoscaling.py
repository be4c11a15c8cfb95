"""The Denoiser's backlog autoscaling decision as pure code, and its config."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tessera.serving.autoscaling import Backlog, BacklogPolicy, desired_replicas
from tessera.serving.config import AutoscalingConfig, DeploymentsConfig


def test_replicas_follow_the_weighted_window_backlog():
    assert desired_replicas(Backlog(), 8, 0.5, current_target=3, running=3) == 0, "idle: Serve raises it to min_replicas"
    assert desired_replicas(Backlog(interactive_windows=1), 8, 0.5, 1, 1) == 1
    assert desired_replicas(Backlog(interactive_windows=40), 8, 0.5, 1, 1) == 5
    assert desired_replicas(Backlog(interactive_windows=16, batch_windows=16), 8, 0.5, 1, 1) == 3
    assert desired_replicas(Backlog(interactive_windows=8, queued_calls=9), 8, 0.5, 1, 1) == 3


def test_batch_work_alone_still_gets_a_replica():
    assert desired_replicas(Backlog(batch_windows=1), 8, 0.0, 0, 0) == 1


def test_replicas_still_starting_are_not_scaled_away():
    assert desired_replicas(Backlog(interactive_windows=1), 8, 0.5, current_target=6, running=2) == 6
    assert desired_replicas(Backlog(interactive_windows=1), 8, 0.5, current_target=6, running=6) == 1


class Context:
    def __init__(self, metrics, queued=0.0, target=1, running=1):
        self.aggregated_metrics = metrics
        self.total_queued_requests = queued
        self.target_num_replicas = target
        self.running_replicas = [object()] * running


def test_the_serve_policy_sums_what_replicas_report():
    policy = BacklogPolicy(windows_per_replica=4, batch_weight=0.25)
    metrics = {"interactive_windows": {"r1": 3.0, "r2": 5.0}, "batch_windows": {"r1": 8.0}}
    replicas, state = policy(Context(metrics))
    assert replicas == 3 and state["backlog"]["interactive_windows"] == 8
    assert policy(Context(None))[0] == 0


def test_config_names_the_policy_for_serve_and_keeps_it_to_the_denoiser():
    scaling = AutoscalingConfig(min_replicas=0, max_replicas=16, policy="backlog", windows_per_replica=4)
    options = scaling.serve_options()
    assert options["policy"] == {"policy_function": "tessera.serving.autoscaling:BacklogPolicy",
                                 "policy_kwargs": {"windows_per_replica": 4.0, "batch_weight": 0.5}}
    assert "windows_per_replica" not in options and options["max_replicas"] == 16
    assert "policy" not in AutoscalingConfig(max_replicas=2).serve_options()
    from ray.serve.config import AutoscalingConfig as ServeAutoscalingConfig

    ServeAutoscalingConfig(**options)  # Serve accepts it
    with pytest.raises(ValidationError, match="denoiser only"):
        DeploymentsConfig(decoder={"num_cpus": 1, "num_replicas": None, "autoscaling": {"max_replicas": 2, "policy": "backlog"}})
