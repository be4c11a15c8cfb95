"""The least-loaded router's bookkeeping (serving/routing.py), as plain data."""

from __future__ import annotations

import random

from tessera.serving.config import DeploymentConfig
from tessera.serving.routing import InFlight


def test_a_burst_spreads_one_call_per_replica_then_two():
    book = InFlight()
    rng = random.Random(0)
    chosen = [book.choose(["a", "b", "c", "d"], now=0.0, call=i, rng=rng) for i in range(8)]
    assert sorted(chosen[:4]) == ["a", "b", "c", "d"]  # before any replica answered
    assert sorted(chosen) == ["a", "a", "b", "b", "c", "c", "d", "d"]


def test_calls_sharing_a_request_id_are_each_counted_until_they_finish():
    # A JobRunner's calls for one job all carry its request's internal id: the count is per call.
    book = InFlight()
    rng = random.Random(2)
    chosen = [book.choose(["a", "b"], now=0.0, call=i, rng=rng) for i in range(4)]
    for i, replica in enumerate(chosen):
        book.routed(replica, i, "job-request", now=0.1)
    assert [book.load(r, now=0.2) for r in "ab"] == [2, 2]
    nxt = book.choose(["a", "b"], now=0.3, call=9, rng=rng)
    book.routed(nxt, 9, "job-request", now=0.3)
    assert book.load(nxt, now=0.3) == 3
    for replica in chosen + [nxt]:
        book.completed(replica, "job-request", now=1.0)
    assert [book.load(r, now=1.0) for r in "ab"] == [0, 0]


def test_asking_again_for_a_call_replaces_its_claim():
    # Serve asks again when its probe of the chosen replica timed out: the retry must not count
    # the first choice, or a burst piles on the replicas that answered their probes.
    book = InFlight()
    rng = random.Random(1)
    for i in range(4):
        for _ in range(3):  # three tries each
            book.choose(["a", "b", "c", "d"], now=0.0, call=i, rng=rng)
    assert [book.load(r, now=0.0) for r in "abcd"] == [1, 1, 1, 1]


def test_a_replica_handed_to_another_call_drops_one_of_its_claims():
    book = InFlight()
    chosen = book.choose(["a"], now=0.0, call=1)
    book.routed(chosen, 2, "r", now=0.0)  # Serve fulfilled the queue's other call with it
    assert book.load("a", now=0.0) == 1
    book.completed("a", "r", now=0.5)
    assert book.load("a", now=0.5) == 0


def test_a_rejected_call_counts_nothing_and_its_retry_replaces_its_claim():
    book = InFlight()
    chosen = book.choose(["a", "b"], now=0.0, call=1)
    book.completed(chosen, "r", now=0.1)  # rejected: Serve reports it complete, never accepted
    assert book.load(chosen, now=0.1) == 1  # its claim, until Serve asks again for the call
    again = book.choose(["a", "b"], now=0.2, call=1)
    book.routed(again, 1, "r", now=0.2)
    assert [book.load(r, now=0.3) for r in "ab"].count(1) == 1


def test_unconfirmed_claims_expire_and_a_dead_replica_is_forgotten():
    book = InFlight(claim_ttl_s=5.0)
    book.choose(["a"], now=0.0, call=0)
    assert book.load("a", now=4.0) == 1 and book.load("a", now=6.0) == 0
    book.choose(["a"], now=10.0, call=1)
    book.routed("a", 1, "r", now=10.0)
    book.forget("a")
    assert book.load("a", now=10.0) == 0


def test_config_selects_the_router():
    default = DeploymentConfig(num_cpus=1).serve_options()
    assert "request_router_config" not in default
    options = DeploymentConfig(num_cpus=1, request_router="least_loaded").serve_options()
    assert options["request_router_config"] == {"request_router_class": "tessera.serving.routing:LeastLoadedRouter"}
