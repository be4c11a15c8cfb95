"""Keep the embedded stack on loopback (``network.loopback_only``, on by default), and prove it.

What listens where in Ray 2.60.0 (pinned in pyproject.toml), and what this module does about it:

* **Ray's own servers** (GCS, raylet, every worker's core-worker server, the dashboard and
  runtime-env agents, the autoscaler's monitor) bind every interface unless the node IP is a
  loopback address. ``ray.init(_node_ip_address="127.0.0.1")`` does not do it: ``ray.init``
  passes it through ``services.resolve_ip_for_localhost``, which swaps a loopback address for
  the machine's routable one. Ray keeps a loopback node IP only in its single-machine mode
  (``services.get_node_ip_address``: ``if not ray_constants.ENABLE_RAY_CLUSTER: return
  get_localhost_ip()``), the default on macOS and Windows, set by the environment variable
  ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``. :func:`ray_single_machine_mode` sets it for Ray's
  processes (and for this one, whose ``ray_constants`` may have been imported already); the
  C++ servers then bind 127.0.0.1, as do the agents (``dashboard/agent.py``:
  ``get_localhost_ip() if is_localhost(self.ip)``).
* **Serve's gRPC proxy** binds ``[::]`` whatever the node IP (``ray/serve/_private/grpc_util.py``,
  ``start_grpc_server``: ``add_grpc_address(server, f"[::]:{grpc_options.port}")``);
  ``gRPCOptions`` has no host (ray-project/ray issue 34103).
* **Every Serve replica** opens an inter-deployment gRPC server on ``[::]:0``
  (``ray/serve/_private/replica.py``, ``_on_initialized``: ``add_port_to_grpc_server(self._server,
  "[::]:0")``).
* Serve's HTTP proxy binds ``http_options.host`` (``http.host``, 127.0.0.1 by default).

No Ray setting moves the two ``[::]`` binds, so :func:`bind_serve_to_loopback` does: the stack
gives Ray a ``worker_process_setup_hook`` (a documented ``runtime_env`` field: a function every
worker process runs before its first task or actor; Serve's controller, proxies and replicas
inherit the job's runtime_env), and the hook swaps those two call sites,
``ray.serve._private.default_impl.add_grpc_address`` (which Ray marks as an extension point) and
the replica module's ``add_port_to_grpc_server``, for versions that bind 127.0.0.1 instead.

Because that reaches into Ray's internals, the stack does not trust it: after start it lists
every listening socket of its processes (:func:`listening_sockets`, psutil) and refuses to run if
one is not on loopback (:func:`not_on_loopback`), naming each. ``tessera up`` prints the list.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from pathlib import Path

LOOPBACK = "127.0.0.1"
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
SETUP_HOOK = "tessera.cluster.loopback.bind_serve_to_loopback"


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1, and IPv4-mapped loopback (``::ffff:127.0.0.1``, how gRPC's IPv6 sockets report it)."""
    try:
        ip = ipaddress.ip_address(address.strip("[]").split("%", 1)[0])
    except ValueError:
        return address == "localhost"
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def _loopback_address(address: str) -> str:
    host, _, port = address.rpartition(":")
    return f"{LOOPBACK}:{port}" if host in ("[::]", "0.0.0.0", "", "::") else address


def bind_serve_to_loopback() -> None:
    """``worker_process_setup_hook``: Serve's gRPC proxy and replica servers bind 127.0.0.1, not [::]."""
    try:
        import ray.serve._private.default_impl as default_impl
        import ray.serve._private.replica as replica

        replica.add_port_to_grpc_server, default_impl.add_grpc_address  # noqa: B018 - both still there?
    except (ImportError, AttributeError) as error:  # another Ray: leave it be; the start-up check refuses
        import logging

        logging.getLogger(__name__).warning("cannot rebind Serve's gRPC servers to loopback: %s", error)
        return
    if getattr(default_impl, "_tessera_loopback", False):
        return

    def add_grpc_address(server, server_address: str):
        return server.add_insecure_port(_loopback_address(server_address))

    original = replica.add_port_to_grpc_server

    def add_port_to_grpc_server(server, address: str):
        return original(server, _loopback_address(address))

    default_impl.add_grpc_address = add_grpc_address
    replica.add_port_to_grpc_server = add_port_to_grpc_server
    default_impl._tessera_loopback = True


class ray_single_machine_mode:
    """Context in which ``ray.init`` gives the node the IP 127.0.0.1 (see the module's doc).
    Entered for the life of the stack; leaving it restores what was there."""

    def __enter__(self):
        from ray._private import ray_constants

        self._env = os.environ.get(SINGLE_MACHINE_ENV)
        self._constant = ray_constants.ENABLE_RAY_CLUSTER
        os.environ[SINGLE_MACHINE_ENV] = "0"  # Ray's processes, started from here, read it at import
        ray_constants.ENABLE_RAY_CLUSTER = False  # this process read it when it first imported Ray
        return self

    def __exit__(self, *exc):
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = self._constant
        if self._env is None:
            os.environ.pop(SINGLE_MACHINE_ENV, None)
        else:
            os.environ[SINGLE_MACHINE_ENV] = self._env
        return False


@dataclasses.dataclass(frozen=True)
class Listener:
    """One listening TCP socket of the stack's processes."""

    address: str
    port: int
    pid: int
    process: str
    role: str = ""

    @property
    def loopback(self) -> bool:
        return is_loopback(self.address)

    @property
    def endpoint(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"

    def as_dict(self) -> dict:
        return {"address": self.address, "port": self.port, "pid": self.pid, "process": self.process,
                "role": self.role, "loopback": self.loopback}


def _process_name(cmdline: list[str]) -> str:
    if not cmdline:
        return "?"
    if cmdline[0].startswith("ray::"):
        return cmdline[0].strip()
    name = Path(cmdline[0]).name
    if name.startswith("python") and len(cmdline) > 1:
        rest = cmdline[1:]
        rest = rest[1:] if rest[0] == "-u" else rest
        if rest and rest[0] == "-m" and len(rest) > 1:
            return rest[1]
        return Path(rest[0]).name if rest else name
    if name == "node" and len(cmdline) > 1:
        return f"node {Path(cmdline[1]).parent.name}/{Path(cmdline[1]).name}"
    return name


def listening_sockets(root_pid: int | None = None, roles: dict[int, str] | None = None) -> list[Listener]:
    """Every listening TCP socket of process ``root_pid`` (default: this one) and all its
    descendants, by port; ``roles`` labels known ports (e.g. ``{9000: "gRPC API"}``)."""
    import psutil

    roles = roles or {}
    try:
        root = psutil.Process(root_pid or os.getpid())
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    found: dict[tuple[str, int], Listener] = {}
    for process in processes:
        try:
            sockets = process.net_connections(kind="tcp")
            name = _process_name(process.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        for sock in sockets:
            if sock.status == psutil.CONN_LISTEN:
                address, port = _plain(sock.laddr.ip), sock.laddr.port
                found.setdefault((address, port), Listener(address, port, process.pid, name, roles.get(port, "")))
    return sorted(found.values(), key=lambda item: (item.role == "", item.port))


def _plain(address: str) -> str:
    """An IPv4-mapped IPv6 address as the IPv4 address it is: gRPC binds "127.0.0.1" with an IPv6
    socket, which the kernel reports as ``::ffff:127.0.0.1`` (reachable at 127.0.0.1 only)."""
    try:
        mapped = getattr(ipaddress.ip_address(address), "ipv4_mapped", None)
    except ValueError:
        return address
    return str(mapped) if mapped else address


def not_on_loopback(listeners: list[Listener]) -> list[Listener]:
    return [item for item in listeners if not item.loopback]


def describe(listeners: list[Listener]) -> str:
    return ", ".join(f"{item.endpoint} ({item.role or item.process})" for item in listeners)
