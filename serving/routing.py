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
    """Calls per replica as one router sees them: chosen (a claim per pending call, until the
    replica accepts it), then running (until it finishes). Plain data: keys in, keys out; the
    caller passes ``now``.

    Two keys, because Serve gives two: a *claim* is keyed by the pending call itself (the router
    passes ``id(pending_request)``), and a running call by ``(replica, request id)``, which is
    all Serve passes when a call completes. The request id is not unique: calls a replica makes
    while serving a request inherit that request's internal id (every Denoiser call of one job
    shares its JobRunner call's), so running calls are counted per ``(replica, id)`` pair, not
    remembered by id (measured, when they were: a 150 s video's 16 calls on one replica of 16).

    A claim belongs to its call: when Serve asks again for the same call (its probe of the chosen
    replica's queue timed out, as it does on a busy machine, or the replica rejected it), the
    earlier claim is dropped before choosing. Counting it would make the replicas slow to answer
    probes look loaded and pile the burst on the few that answered."""

    def __init__(self, claim_ttl_s: float = CLAIM_TTL_S):
        self.claim_ttl_s = claim_ttl_s
        self._claims: dict[Hashable, tuple[Hashable, float]] = {}
        """pending call -> (replica, when chosen), for calls chosen and not yet accepted."""
        self._running: collections.Counter[tuple[Hashable, Hashable]] = collections.Counter()
        """(replica, request id) -> calls accepted and not finished."""
        self._counts: collections.Counter[Hashable] = collections.Counter()

    def _expire(self, now: float) -> None:
        for call in [c for c, (_, at) in self._claims.items() if now - at > self.claim_ttl_s]:
            del self._claims[call]

    def load(self, replica: Hashable, now: float) -> int:
        self._expire(now)
        return sum(1 for owner, _ in self._claims.values() if owner == replica) + self._counts[replica]

    def choose(self, replicas: Sequence[Hashable], now: float, call: Hashable | None = None,
               rng: random.Random = random) -> Hashable:
        """The least loaded of ``replicas`` (ties at random), claimed for ``call`` at once
        (replacing that call's earlier claim). ``call`` None: an anonymous claim."""
        self._claims.pop(call, None)
        self._expire(now)
        loads = collections.Counter(owner for owner, _ in self._claims.values())
        best = min(replicas, key=lambda replica: (loads[replica] + self._counts[replica], rng.random()))
        self._claims[call if call is not None else object()] = (best, now)
        return best

    def routed(self, replica: Hashable, call: Hashable, request: Hashable, now: float) -> None:
        """The replica accepted ``call`` (request id ``request``): its claim becomes a running
        call. (Serve may hand the replica to another pending call than the one it was chosen
        for: then one claim on that replica goes instead.)"""
        if self._claims.pop(call, None) is None:
            for other, (owner, _) in self._claims.items():
                if owner == replica:
                    del self._claims[other]
                    break
        self._running[(replica, request)] += 1
        self._counts[replica] += 1

    def completed(self, replica: Hashable, request: Hashable, now: float) -> None:
        """A call with ``request`` id ended on ``replica`` (done, failed, cancelled, or rejected
        before it ran: then nothing was counted, and its claim stays until Serve asks again for
        it, or it expires). Serve reports a call's completion after its acceptance."""
        key = (replica, request)
        if self._running[key] > 0:
            self._running[key] -= 1
            self._counts[replica] -= 1
            if not self._running[key]:
                del self._running[key]

    def forget(self, replica: Hashable) -> None:
        """The replica is gone."""
        for call in [c for c, (owner, _) in self._claims.items() if owner == replica]:
            del self._claims[call]
        self._counts.pop(replica, None)
        for key in [k for k in self._running if k[0] == replica]:
            del self._running[key]


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
        call = id(pending_request) if pending_request is not None else None
        return [[by_id[self._book().choose(list(by_id), time.monotonic(), call)]]]

    def _fulfill_next_pending_request(self, replica: RunningReplica, request_metadata=None) -> None:
        """Hand the replica to the very call it was chosen for. Serve's FIFO order hands it to the
        oldest pending call instead (FIFOMixin: it cannot match calls by request id when a
        caller's calls share it, as a JobRunner's do), so the claim counted for the chosen replica
        would sit on another call's replica until accepted, and meanwhile the chosen one looks
        free: measured, 16 calls of a step group on 13 of 16 replicas, 3 on one. Serve 2.60's
        routing loop (``_fulfill_pending_requests``) passes the routed call's own metadata here."""
        for pending in self._pending_requests_to_fulfill:
            if pending.metadata is request_metadata and not pending.future.done():
                self._cancel_routing_task_for_pending_request(pending)  # never the task calling this
                self._record_queue_wait_time(pending)
                pending.future.set_result(replica)
                self._remove_pending_request_from_indices(pending)
                return
        super()._fulfill_next_pending_request(replica, request_metadata)

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result) -> None:
        self._book().routed(replica_id, id(pending_request), pending_request.metadata.internal_request_id, time.monotonic())

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        self._book().completed(replica_id, internal_request_id, time.monotonic())

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._book().forget(replica_id)
