"""A simulated GPU cluster on one machine: several Ray nodes and the Tessera app over ``sim``.

A benchmarking and testing instrument (``bench/sim_*.py``, ``tests/multinode``), never a way to
serve: it exists so that placement, nodes joining and leaving, batching and autoscaling can be
exercised with 16 "GPUs" on a 2-core machine. Everything but the accelerator is real:

* **Ray, several nodes.** :class:`ray.cluster_utils.Cluster` (Ray's own multi-raylet harness)
  starts a head node and GPU nodes, each its own raylet, object store and worker pool, joined
  over the GCS as a real cluster's nodes are. The head declares CPUs only: the JobRunner,
  Gateway and PromptExpander (and Serve's controller and its one proxy) run there. Each GPU node
  declares ``num_gpus`` GPUs and **no CPUs**, so nothing that reserves a CPU can land on it, and
  the ``sim`` Denoiser and Decoder replicas (``num_gpus: 1``, ``num_cpus: 0``) reserve its GPUs
  as they would a real node's. :meth:`SimCluster.add_gpu_node` and
  :meth:`SimCluster.remove_gpu_node` are nodes joining and leaving (removal kills the node's
  raylet and every process on it, as a lost machine would).
* **Serve** with the Tessera application (:func:`tessera.serving.app.build_app`) over the
  ``sim`` model (``models/sim``: its steps and decodes sleep for the time a cost model calibrated
  on published H100/H200 figures predicts, so many replicas share two cores). Its gRPC and HTTP
  proxies run on the head only (``proxy_location: HeadOnly``: one machine has one port 9000).
* **The embedded S3 server** (``cluster/s3_server.py``) for records and outputs, and a
  :class:`~tessera.serving.client.TesseraClient` over gRPC, with an API key of its own.
* **Loopback only**, as the embedded stack (cluster/loopback.py): Ray's single-machine mode gives
  every node the IP 127.0.0.1, the setup hook binds Serve's gRPC servers to loopback, and
  :meth:`SimCluster.check_loopback` lists every listening socket of this process's descendants
  (every raylet, agent, worker and the S3 server) and refuses any that is not on loopback.

One SimCluster per process at a time (Ray allows one driver connection); tests put it behind
the ``multinode`` marker, in a pytest session of its own (``scripts/test.sh``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tessera.cluster.loopback import (
    SETUP_HOOK, Listener, describe, listening_sockets, not_on_loopback, ray_single_machine_mode,
)
from tessera.cluster.s3_server import EmbeddedS3Config, EmbeddedS3Server
from tessera.cluster.stack import pick_free_port
from tessera.serving.auth import hash_api_key, new_api_key
from tessera.serving.config import TesseraConfig

logger = logging.getLogger(__name__)

BUCKET = "tessera"
DEPLOYMENTS = ("Gateway", "JobRunner", "PromptExpander", "Denoiser", "Decoder")

SIM_MODEL: dict = {"family": "sim", "variant": "wan2.1-1.3b-480p", "time_scale": 1.0, "torch_threads": 1}
"""The simulated Wan 2.1 1.3B at 480p (models/sim/cost.py), in real time: a benchmark lowers
``time_scale`` (and the steps) to fit its wall-time budget."""


def sim_document(
    denoiser: dict | None = None,
    decoder: dict | None = None,
    model: dict | None = None,
    **sections: Any,
) -> dict:
    """A Tessera config document for a SimCluster: the sim model, the CPU stages on the head with
    small CPU reservations, the Denoiser and Decoder on GPUs (1 each, no CPU), both stages' calls
    routed to the least loaded replica (serving/routing.py; Serve's default router piles a step
    group's calls on few replicas: bench/results/sim_scaling_power_of_two.json), jobs admitted
    generously. ``denoiser``/``decoder`` update those deployments' entries (e.g.
    ``{"num_replicas": 16}`` or ``{"num_replicas": None, "autoscaling": {...}}``); other keyword
    arguments are whole sections merged one level deep (``jobs={...}``, ``batching={...}``)."""
    document: dict = {
        "model": {**SIM_MODEL, **(model or {})},
        "limits": {"max_duration_s": 300},
        "jobs": {"max_running_jobs": 16, "max_queued_jobs": 256, "max_running_batch_jobs": 16, "max_queued_batch_jobs": 256,
                 "lease_ttl_s": 15.0, "heartbeat_s": 3.0},
        "deployments": {
            "gateway": {"num_cpus": 0.05, "num_replicas": 1, "max_ongoing_requests": 512, "max_queued_requests": 256},
            "job_runner": {"num_cpus": 0.05, "num_replicas": 1, "max_ongoing_requests": 256},
            "prompt_expander": {"num_cpus": 0.05, "max_ongoing_requests": 64, "torch_threads": 1},
            "denoiser": {"num_cpus": 0, "num_gpus": 1, "num_replicas": 1, "max_ongoing_requests": 256,
                         "max_queued_requests": 4096, "torch_threads": 1, "request_router": "least_loaded",
                         **(denoiser or {})},
            "decoder": {"num_cpus": 0, "num_gpus": 1, "num_replicas": 1, "max_ongoing_requests": 8,
                        "max_queued_requests": 1024, "torch_threads": 1, "request_router": "least_loaded",
                        **(decoder or {})},
        },
    }
    for name, value in sections.items():
        document[name] = {**document.get(name, {}), **value} if isinstance(value, dict) else value
    return document


@dataclasses.dataclass(frozen=True)
class GpuNode:
    """A GPU node of the cluster (a raylet of its own)."""

    node: Any
    """Ray's ``ray._private.node.Node`` (what ``Cluster.remove_node`` takes)."""
    node_id: str
    gpus: int


@dataclasses.dataclass(frozen=True)
class Replica:
    """One Serve replica actor, as the GCS knows it."""

    deployment: str
    replica_id: str
    """Serve's id of the replica (what ``Denoiser.batch_stats()`` answers as ``replica``)."""
    actor_id: str
    state: str
    """Ray's actor state: ALIVE, PENDING_CREATION (no node has room), RESTARTING, DEAD..."""
    node_id: str | None


class SimCluster:
    """Head + GPU nodes on this machine, the S3 server, Serve with the Tessera app over ``sim``.

    ``with SimCluster(home, document, gpu_nodes=[4, 4]) as cluster: cluster.client.generate(...)``."""

    def __init__(
        self,
        home: Path,
        document: dict | None = None,
        gpu_nodes: Sequence[int] = (1,),
        head_cpus: int = 8,
        head_object_store_mb: int = 1024,
        node_object_store_mb: int = 256,
        wait_ready_s: float = 300.0,
    ):
        """``document``: a Tessera config document (see :func:`sim_document`); ``gpu_nodes``: the GPUs of
        each GPU node started with the cluster. ``head_cpus`` are logical CPUs for the reservations
        of the CPU stages (they may exceed the machine's cores: the sim replicas sleep)."""
        self.home = Path(home)
        self._document = dict(document if document is not None else sim_document())
        self._initial_nodes = list(gpu_nodes)
        self._head_cpus = head_cpus
        self._head_store = head_object_store_mb * 2**20
        self._node_store = node_object_store_mb * 2**20
        self._wait_ready_s = wait_ready_s
        self.cluster = None
        self.s3: EmbeddedS3Server | None = None
        self.config: TesseraConfig | None = None
        self.api_key = new_api_key()
        self.client = None
        self.gpu_nodes: list[GpuNode] = []
        self._single_machine: ray_single_machine_mode | None = None
        self.timings: dict[str, float] = {}
        """Seconds each part of :meth:`start` took."""

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> SimCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> TesseraConfig:
        import ray
        from ray import serve
        from ray.cluster_utils import Cluster

        from tessera.serving.app import ROUTE_PREFIX, build_app, grpc_options, http_options
        from tessera.serving.client import TesseraClient
        from tessera.serving.storage import ObjectStore

        started = time.monotonic()
        self.home.mkdir(parents=True, exist_ok=True)
        self.s3 = EmbeddedS3Server(EmbeddedS3Config(data_dir=self.home / "s3", port=pick_free_port(), bucket=BUCKET))
        self.s3.start()
        grpc_port = pick_free_port(avoid={self.s3.port})
        http_port = pick_free_port(avoid={self.s3.port, grpc_port})
        document = dict(self._document)
        document["storage"] = {
            "endpoint_url": self.s3.endpoint_url, "region": "us-east-1", "bucket": self.s3.bucket,
            "access_key_id": self.s3.credentials.access_key_id,
            "secret_access_key": self.s3.credentials.secret_access_key,
        }
        document["grpc"] = {**document.get("grpc", {}), "port": grpc_port}
        document["http"] = {**document.get("http", {}), "port": http_port}
        document["auth"] = {"api_keys": {"default": [hash_api_key(self.api_key)]}}
        self.config = config = TesseraConfig.model_validate(document)
        self.timings["s3_s"] = time.monotonic() - started

        t0 = time.monotonic()
        self._single_machine = ray_single_machine_mode().__enter__()  # every node on 127.0.0.1 (cluster/loopback.py)
        self.cluster = Cluster(initialize_head=True, shutdown_at_exit=True, head_node_args={
            "num_cpus": self._head_cpus, "num_gpus": 0, "include_dashboard": False,
            "object_store_memory": self._head_store,
        })
        for gpus in self._initial_nodes:
            self.add_gpu_node(gpus, wait=False)
        self.cluster.wait_for_nodes(timeout=120)
        ray.init(address=self.cluster.address, log_to_driver=False, configure_logging=False,
                 runtime_env={"worker_process_setup_hook": SETUP_HOOK})
        self.timings["ray_s"] = time.monotonic() - t0

        t0 = time.monotonic()
        ObjectStore(config.storage).ensure_bucket()
        serve.start(proxy_location="HeadOnly", grpc_options=grpc_options(config), http_options=http_options(config))
        serve._run(build_app(config), name=config.app_name, route_prefix=ROUTE_PREFIX, _blocking=False)
        self.client = TesseraClient(f"127.0.0.1:{grpc_port}", api_key=self.api_key)
        self.client.wait_until_ready(timeout_s=self._wait_ready_s)
        self.timings["serve_s"] = time.monotonic() - t0
        self.timings["start_s"] = time.monotonic() - started
        return config

    def stop(self) -> None:
        import ray

        try:
            if self.client is not None:
                self.client.close()
                self.client = None
            if ray.is_initialized():
                from ray import serve

                try:
                    serve.shutdown()
                except Exception:  # noqa: BLE001 - a cluster half gone: its nodes are removed below anyway
                    logger.warning("serve.shutdown failed", exc_info=True)
                ray.shutdown()
        finally:
            try:
                if self.cluster is not None:
                    self.cluster.shutdown()
                    self.cluster = None
            finally:
                if self._single_machine is not None:
                    self._single_machine.__exit__(None, None, None)
                    self._single_machine = None
                if self.s3 is not None:
                    self.s3.stop()
                    self.s3 = None

    # -- nodes --------------------------------------------------------------------------------
    def add_gpu_node(self, gpus: int = 1, wait: bool = True) -> GpuNode:
        """A GPU node joins: a raylet with ``gpus`` GPUs and no CPUs (see the module's doc)."""
        node = self.cluster.add_node(wait=wait, num_cpus=0, num_gpus=gpus, object_store_memory=self._node_store)
        entry = GpuNode(node=node, node_id=node.node_id, gpus=gpus)
        self.gpu_nodes.append(entry)
        return entry

    def remove_gpu_node(self, node: GpuNode, graceful: bool = False) -> None:
        """A GPU node leaves: its raylet and every process on it are killed (SIGKILL unless ``graceful``)."""
        self.cluster.remove_node(node.node, allow_graceful=graceful)
        self.gpu_nodes.remove(node)

    # -- the app ------------------------------------------------------------------------------
    def redeploy(self, document: dict, wait: bool = True) -> TesseraConfig:
        """Deploy the app again with another document (storage, ports and auth kept): e.g. another
        Denoiser replica count between the runs of a bench. Deployments whose options and
        arguments did not change keep their replicas."""
        from ray import serve

        from tessera.serving.app import ROUTE_PREFIX, build_app

        kept = {name: self.config.model_dump(mode="json")[name] for name in ("storage", "grpc", "http", "auth")}
        kept["storage"]["access_key_id"] = self.config.storage.access_key_id.get_secret_value()
        kept["storage"]["secret_access_key"] = self.config.storage.secret_access_key.get_secret_value()
        self._document = dict(document)
        self.config = config = TesseraConfig.model_validate({**document, **kept})
        serve._run(build_app(config), name=config.app_name, route_prefix=ROUTE_PREFIX, _blocking=wait)
        return config

    def replicas(self, deployment: str | None = None) -> list[Replica]:
        """Every Serve replica actor of the app (or of one deployment) and the node it is on."""
        import ray

        prefix = f"ServeReplica:{self.config.app_name}:"
        out = []
        for actor_id, info in ray._private.state.actors().items():  # the GCS's actor table (no dashboard needed)
            name = info.get("ActorClassName", "")
            if not name.startswith(prefix):
                continue
            which = name[len(prefix):]
            if deployment is not None and which != deployment:
                continue
            node = (info.get("Address") or {}).get("NodeID") or None
            replica_id = (info.get("Name") or "").rsplit("#", 1)[-1]  # SERVE_REPLICA::app#deployment#id
            out.append(Replica(which, replica_id, actor_id, info.get("State", "?"), node))
        return out

    def running_replicas(self, deployment: str) -> int:
        """Replicas of ``deployment`` that Serve reports RUNNING (ready for calls)."""
        from ray import serve

        app = serve.status().applications.get(self.config.app_name)
        if app is None or deployment not in app.deployments:
            return 0
        return int(app.deployments[deployment].replica_states.get("RUNNING", 0))

    def replica_states(self) -> dict[str, dict[str, int]]:
        from ray import serve

        app = serve.status().applications.get(self.config.app_name)
        return {} if app is None else {name: dict(d.replica_states) for name, d in app.deployments.items()}

    def wait_running(self, deployment: str, count: int, timeout_s: float = 180.0,
                     at_least: bool = False) -> float:
        """Until ``count`` replicas of ``deployment`` run (exactly, or ``at_least``); seconds waited."""
        started = time.monotonic()
        deadline = started + timeout_s
        while True:
            running = self.running_replicas(deployment)
            if running == count or (at_least and running >= count):
                return time.monotonic() - started
            if time.monotonic() > deadline:
                raise TimeoutError(f"{deployment}: {running} replicas running after {timeout_s:.0f} s, "
                                   f"waiting for {count}: {self.replica_states()}")
            time.sleep(0.25)

    def wait_all_running(self, timeout_s: float = 300.0) -> None:
        """Until every deployment runs the replicas it targets (none starting or pending)."""
        from ray import serve

        deadline = time.monotonic() + timeout_s
        while True:
            app = serve.status().applications.get(self.config.app_name)
            if app is not None and str(app.status).endswith("RUNNING"):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the app is not running after {timeout_s:.0f} s: {self.replica_states()}")
            time.sleep(0.25)

    def handle(self, deployment: str):
        from ray import serve

        return serve.get_deployment_handle(deployment, app_name=self.config.app_name)

    def denoiser_stats(self, calls_per_replica: int = 4, rounds: int = 6) -> dict[str, dict]:
        """``Denoiser.batch_stats()`` of every running replica, by replica id. A handle call reaches
        one replica of Serve's choosing, so this sends ``calls_per_replica`` x replicas calls at
        once, keeps one answer per replica, and sends more (up to ``rounds`` times) until every
        running replica has answered (idle replicas are chosen at random)."""
        handle = self.handle("Denoiser")
        out: dict[str, dict] = {}
        for _ in range(rounds):
            running = max(1, self.running_replicas("Denoiser"))
            for response in [handle.batch_stats.remote() for _ in range(calls_per_replica * running)]:
                stats = response.result(timeout_s=60)
                out.setdefault(stats.get("replica", "?"), stats)
            if len(out) >= running:
                break
        return out

    # -- the network ---------------------------------------------------------------------------
    def listening(self) -> list[Listener]:
        """Every listening socket of this process and its descendants: every node's raylet, agents
        and workers (their children), the GCS and the S3 server."""
        roles = {self.config.grpc.port: "gRPC API (Serve gRPC proxy)", self.config.http.port: "HTTP API (Serve HTTP proxy)"}
        if self.s3 is not None:
            roles[self.s3.port] = "S3 (embedded server)"
        return listening_sockets(roles=roles)

    def check_loopback(self) -> list[Listener]:
        """The listening sockets; RuntimeError naming each one that is not on loopback."""
        listeners = self.listening()
        outside = not_on_loopback(listeners)
        if outside:
            raise RuntimeError(f"listening beyond loopback: {describe(outside)}")
        return listeners


class ReplicaSampler:
    """Polls the running replicas of one deployment every ``interval_s`` in a thread: the
    replica-seconds a run spent, and the timeline (for benches)."""

    def __init__(self, cluster: SimCluster, deployment: str = "Denoiser", interval_s: float = 0.5):
        import threading

        self.cluster = cluster
        self.deployment = deployment
        self.interval_s = interval_s
        self.samples: list[tuple[float, int, int]] = []
        """(time.monotonic(), running, targeted-but-not-running) per poll."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _poll(self) -> None:
        states = self.cluster.replica_states().get(self.deployment, {})
        running = int(states.get("RUNNING", 0))
        other = sum(int(v) for k, v in states.items() if k not in ("RUNNING", "STOPPING"))
        self.samples.append((time.monotonic(), running, other))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._poll()
            except Exception:  # noqa: BLE001 - a poll during a node's removal may fail; the next one will do
                logger.debug("replica poll failed", exc_info=True)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> ReplicaSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def running_at(self, t: float) -> int:
        """Replicas running at monotonic time ``t`` (the last poll before it)."""
        last = 0
        for when, running, _ in self.samples:
            if when > t:
                break
            last = running
        return last

    def replica_seconds(self, start: float, end: float) -> float:
        """Integral of the running replicas over ``[start, end]`` (step function of the polls)."""
        total = 0.0
        points = [(when, running) for when, running, _ in self.samples]
        for (when, running), following in zip(points, points[1:] + [(end, 0)]):
            lo, hi = max(when, start), min(following[0], end)
            if hi > lo:
                total += running * (hi - lo)
        return total

    def timeline(self, origin: float) -> list[list[float]]:
        """[seconds since ``origin``, running, pending] per poll."""
        return [[round(when - origin, 2), running, pending] for when, running, pending in self.samples]


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str, every_s: float = 0.25):
    """Until ``predicate()`` is truthy (returns it); AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


def environment_note() -> dict:
    """Facts of the machine a run shared (for a bench's JSON)."""
    return {"load_average_1m": os.getloadavg()[0], "cpus": os.cpu_count()}
