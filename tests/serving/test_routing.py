"""The least-loaded router's bookkeeping (serving/routing.py), as plain data."""

from __future__ import annotations

import random

from tessera.serving.config import DeploymentConfig
from tessera.serving.routing import InFlight


def test_a_burst_spreads_one_call_per_replica_then_two():
    book = InFlight()
    rng = random.Random(0)
    chosen = [book.choose(["a", "b", "c", "d"], now=0.0, rng=rng) for _ in range(8)]
    assert sorted(chosen[:4]) == ["a", "b", "c", "d"]  # before any replica answered
    assert sorted(chosen) == ["a", "a", "b", "b", "c", "c", "d", "d"]


def test_accepted_calls_count_until_they_finish_and_rejections_free_their_claim():
    book = InFlight()
    first = book.choose(["a", "b"], now=0.0)
    book.routed(first, "r1")
    assert book.load(first, now=1.0) == 1
    second = book.choose(["a", "b"], now=1.0)
    assert second != first
    book.completed(second, "r2")  # rejected before it ran: no longer counted
    assert book.load(second, now=1.0) == 0
    book.completed(first, "r1")
    assert book.load(first, now=1.0) == 0


def test_unconfirmed_claims_expire_and_a_dead_replica_is_forgotten():
    book = InFlight(claim_ttl_s=5.0)
    book.choose(["a"], now=0.0)
    assert book.load("a", now=4.0) == 1 and book.load("a", now=6.0) == 0
    book.choose(["a"], now=10.0)
    book.routed("a", "r")
    book.forget("a")
    assert book.load("a", now=10.0) == 0


def test_config_selects_the_router():
    default = DeploymentConfig(num_cpus=1).serve_options()
    assert "request_router_config" not in default
    options = DeploymentConfig(num_cpus=1, request_router="least_loaded").serve_options()
    assert options["request_router_config"] == {"request_router_class": "tessera.serving.routing:LeastLoadedRouter"}
