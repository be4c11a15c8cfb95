"""Least-loaded request routing for fan-out calls (``deployments.<name>.request_router: least_loaded``).

Why: every step group of a long video sends all its windows at once, in as many Denoiser calls as
there are replicas. Serve's default router (power of two choices) picks, for each call, the less
loaded of two random replicas by their queue lengths, probed or cached. When N calls are routed
at the same moment, every probe still answers 0 (the calls are in flight: a replica counts a
call once its arguments, megabytes of latents, have arrived), so the choice is random: measured
on the simulated cluster, the busiest of 4 replicas held twice the mean number of windows, of 16
about 2.7x (bench/sim_scaling.py), and a step group lasts as long as its busiest replica.

:class:`LeastLoadedRouter` instead sends each call to the replica with the fewest calls that
*this router* has chosen for it and not seen finish (its own book, :class:`InFlight`, counted at
the moment of choice, before any argument moves), ties broken at random. One router sees every
call of the jobs its JobRunner replica runs, so a burst of N calls over N idle replicas gives one
call each. Routers of other callers (another JobRunner replica) are not seen; Serve's
``max_ongoing_requests`` still bounds every replica.

Ray Serve 2.60's custom request router API (``RequestRouterConfig.request_router_class``,
``ray.serve.request_router.RequestRouter``); the bookkeeping is plain data (:class:`InFlight`).
"""

from __future__ import annotations

import collections
import random
import time
from collections.abc import Hashable, Sequence

from ray.serve.request_router import FIFOMixin, PendingRequest, ReplicaID, RequestRouter, RunningReplica

CLAIM_TTL_S = 10.0
"""A choice that no routed call confirms within this long is forgotten (its call was routed
elsewhere after a rejection, or its replica went away)."""


class InFlight:
    """Calls per replica as one router sees them: chosen (claims, until the replica accepts),
    then running (until they finish). Plain data: ids in, ids out; the caller passes ``now``."""

    def __init__(self, claim_ttl_s: float = CLAIM_TTL_S):
        self.claim_ttl_s = claim_ttl_s
        self._claims: dict[Hashable, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._running: dict[Hashable, Hashable] = {}
        """request id -> replica id, for calls accepted and not finished."""
        self._counts: collections.Counter[Hashable] = collections.Counter()

    def load(self, replica: Hashable, now: float) -> int:
        claims = self._claims[replica]
        while claims and now - claims[0] > self.claim_ttl_s:
            claims.popleft()
        return len(claims) + self._counts[replica]

    def choose(self, replicas: Sequence[Hashable], now: float, rng: random.Random = random) -> Hashable:
        """The least loaded of ``replicas`` (ties at random), claimed at once."""
        best = min(replicas, key=lambda replica: (self.load(replica, now), rng.random()))
        self._claims[best].append(now)
        return best

    def routed(self, replica: Hashable, request: Hashable) -> None:
        """The replica accepted a call: one claim becomes a running call."""
        if self._claims[replica]:
            self._claims[replica].popleft()
        if request not in self._running:
            self._running[request] = replica
            self._counts[replica] += 1

    def completed(self, replica: Hashable, request: Hashable) -> None:
        """A call ended (done, failed, cancelled, or rejected before it ran)."""
        if self._running.pop(request, None) is not None:
            self._counts[replica] -= 1
        elif self._claims[replica]:  # rejected: its claim is void
            self._claims[replica].popleft()

    def forget(self, replica: Hashable) -> None:
        """The replica is gone."""
        self._claims.pop(replica, None)
        self._counts.pop(replica, None)
        for request in [r for r, owner in self._running.items() if owner == replica]:
            del self._running[request]


class LeastLoadedRouter(FIFOMixin, RequestRouter):
    """Serve request router: join the shortest queue, by this router's own count of calls in flight."""

    def initialize_state(self, claim_ttl_s: float = CLAIM_TTL_S, **kwargs) -> None:
        self._in_flight = InFlight(claim_ttl_s)

    def _book(self) -> InFlight:
        if not hasattr(self, "_in_flight"):  # initialize_state not called (older Serve): defaults
            self._in_flight = InFlight()
        return self._in_flight

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        by_id = {replica.replica_id: replica for replica in candidate_replicas}
        return [[by_id[self._book().choose(list(by_id), time.monotonic())]]]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result) -> None:
        self._book().routed(replica_id, pending_request.metadata.internal_request_id)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        self._book().completed(replica_id, internal_request_id)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._book().forget(replica_id)
