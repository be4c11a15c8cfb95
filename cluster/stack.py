"""The embedded single-machine stack: a local S3-compatible server, a private local Ray
instance and the Tessera Serve application.

* :class:`StackRunner` owns the three in this process (tests start one per session; the
  daemon runs one).
* :class:`EmbeddedStack` is what the CLI drives: ``up`` starts a detached daemon
  (``python -m tessera.cluster.daemon``) that runs a StackRunner until ``down`` signals it, so
  ``down`` stops exactly what ``up`` started and nothing else on the machine.

Everything lives under one home folder: ``s3/`` (objects), ``logs/``, ``tessera.yaml`` (the
effective config), ``stack.json`` (addresses and pid while running), ``api_key`` (the default
tenant's API key, mode 0600, made by the first start when the config names no keys).

Secure by default: authentication is on (the stack makes its own key unless the config has
``auth.api_keys`` or ``auth.enabled: false``), and every port listens on loopback only
(``network.loopback_only``; see cluster/loopback.py for how, and the check that proves it).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from tessera.cluster.loopback import (
    SETUP_HOOK, Listener, describe, is_loopback, listening_sockets, not_on_loopback, ray_single_machine_mode,
)
from tessera.cluster.s3_server import EmbeddedS3Config, EmbeddedS3Server, pid_alive
from tessera.serving.auth import hash_api_key, key_file, new_api_key
from tessera.serving.config import TesseraConfig
from tessera.serving.storage import StorageConfig

DEFAULT_GRPC_PORT = 9000
DEFAULT_HTTP_PORT = 9001
DEFAULT_S3_PORT = 9010
DEFAULT_BUCKET = "tessera"
LOG_RECORD_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
"""How each record of the daemon's log begins (its logging format starts with the time)."""


class StackStartError(RuntimeError):
    """The stack cannot start for a reason the user can fix (the message says how)."""


def port_in_use(port: int) -> bool:
    """Whether something holds ``port`` on some interface, so that binding it on every interface
    (IPv6 and IPv4, as the gRPC proxy does) would fail now. Other bind errors (a privileged port,
    say) are raised as they are: they are not about the port being taken."""
    for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
        except OSError as error:
            if bind_error_means_taken(error):
                return True
    return False


def bind_error_means_taken(error: OSError) -> bool:
    """True for a port someone holds, False for an address family this host lacks (no IPv6:
    the IPv4 check decides); any other bind error is not about the port and is raised."""
    if error.errno == errno.EADDRINUSE:
        return True
    if error.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
        return False
    raise error


# Ports for servers started seconds later (tests, benchmarks). Not from the kernel's ephemeral
# range (32768-60999 on Linux): Ray opens hundreds of outbound connections while it starts, and
# one of them can land on a port picked there (CI once saw the gRPC proxy fail to bind that
# way). Below 20000 are Ray's worker ports (10002-19999).
SPARE_PORTS = range(20000, 32768)


def pick_free_port(avoid: Collection[int] = (), candidates: Sequence[int] | None = None) -> int:
    """The first port of ``candidates`` (default: 200 drawn at random from :data:`SPARE_PORTS`)
    that nothing holds now and that is not in ``avoid`` (ports picked for other servers that
    have not started yet)."""
    tried = random.sample(SPARE_PORTS, 200) if candidates is None else list(candidates)
    for port in tried:
        if port not in avoid and not port_in_use(port):
            return port
    raise RuntimeError(f"no free port in {SPARE_PORTS.start}-{SPARE_PORTS.stop - 1} after {len(tried)} tries")


def port_taken_message(port: int, proxy: str = "grpc") -> str:
    """``proxy``: "grpc" or "http", the Serve proxy whose port is taken; or "metrics", Ray's metrics agent."""
    if proxy == "metrics":
        return (f"the metrics port {port} is already in use on this machine; stop what holds it "
                "or choose another port (--metrics-port, or metrics.export_port in the config)")
    name = "gRPC" if proxy == "grpc" else "HTTP"
    return (f"the {name} port {port} is already in use on this machine; stop what holds it "
            f"or choose another port (--{proxy}-port, or {proxy}.port in the config)")


def http_base_url(config: TesseraConfig) -> str:
    """Where the OpenAI-compatible API answers (what ``OpenAI(base_url=...)`` takes)."""
    return f"http://{config.http.host}:{config.http.port}/v1"


def metrics_url(config: TesseraConfig, node_ip: str = "127.0.0.1") -> str:
    """Where Prometheus scrapes the stack: Ray's metrics agent on this node (every process's
    metrics, Tessera's, Serve's and Ray's; serving/metrics.py). On loopback unless
    ``network.loopback_only`` is off, then on the node's address."""
    host = "127.0.0.1" if config.network.loopback_only else node_ip
    return f"http://{host}:{config.metrics.export_port}/metrics"


def wait_http_ready(base_url: str, timeout_s: float) -> None:
    """Until the HTTP proxy routes to the application (it learns the routes a moment after the
    gRPC proxy may answer): its OpenAPI document needs no key."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}/openapi.json", timeout=5):
                return
        except (urllib.error.URLError, OSError) as error:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the HTTP API at {base_url} did not answer in {timeout_s:.0f} s: {error}") from None
        time.sleep(0.5)


def ensure_api_key(home: Path) -> tuple[str, bool]:
    """The stack's key for its default tenant, in ``home/api_key`` (mode 0600): the one there, or
    a new one (created with that mode, never readable by others even for a moment). Returns
    ``(key, created)``."""
    path = key_file(home)
    try:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        key = path.read_text().strip()
        if key:
            return key, False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = new_api_key()
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    os.replace(partial, path)
    return key, True


@dataclasses.dataclass
class StackState:
    """What a running stack publishes in ``stack.json``."""

    pid: int
    grpc_address: str
    s3_endpoint: str | None
    bucket: str
    config_path: str
    started_at: float
    http_base_url: str | None = None
    """The OpenAI-compatible API's base URL (None in a stack.json written before it existed)."""
    auth: str | None = None
    """'stack-key' (the default tenant's key in ``api_key_file``), 'config-keys' or 'off'."""
    api_key_file: str | None = None
    api_key_created: bool = False
    """This start made the key (``tessera up`` prints it then, once)."""
    listening: list[dict] | None = None
    """Every listening socket of the stack's processes when it became ready (cluster/loopback.py)."""
    metrics_url: str | None = None
    """Prometheus scrape endpoint (Ray's metrics agent); None in a stack.json written before it existed."""
    ray_logs_dir: str | None = None
    """The Ray session's log folder: ``serve/`` in it holds every replica's JSON log."""

    @classmethod
    def load(cls, path: Path) -> StackState | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (FileNotFoundError, json.JSONDecodeError, TypeError):
            return None


class StackRunner:
    """S3 server + Ray + Serve app, owned by this process."""

    def __init__(
        self,
        home: Path,
        config: dict | None = None,
        grpc_port: int | None = None,
        s3_port: int | None = None,
        num_cpus: int | None = None,
        http_port: int | None = None,
        metrics_port: int | None = None,
    ):
        """``config`` is a Tessera config document (as loaded from YAML), possibly partial.
        Without a ``storage`` section the embedded S3 server is started under ``home/s3``.
        ``grpc_port``/``http_port``/``metrics_port`` override the config's ports."""
        self.home = Path(home)
        self._document = dict(config or {})
        self._grpc_port = grpc_port
        self._http_port = http_port
        self._metrics_port = metrics_port
        self._s3_port = s3_port
        self._num_cpus = num_cpus or os.cpu_count() or 2
        self.s3: EmbeddedS3Server | None = None
        self.config: TesseraConfig | None = None
        self.api_key: str | None = None
        """The stack's own key (auth on and no keys in the config), else None."""
        self.api_key_created = False
        self._single_machine: ray_single_machine_mode | None = None
        self.metrics_url: str | None = None
        """The Prometheus scrape endpoint, once started."""
        self.ray_logs_dir: str | None = None
        """The Ray session's log folder (replica logs in its ``serve/``), once started."""

    @property
    def auth_mode(self) -> str:
        if self.config is None or not self.config.auth.enabled:
            return "off"
        return "stack-key" if self.api_key else "config-keys"

    def _add_stack_key(self, document: dict) -> None:
        """Auth on and no key configured for the default tenant: it gets the stack's key (its hash
        in the config; the key in ``home/api_key``). Keys of other tenants are kept as they are."""
        auth = dict(document.get("auth") or {})
        tenant = auth.get("default_tenant", "default")
        keys = dict(auth.get("api_keys") or {})
        if auth.get("enabled", True) is False or keys.get(tenant):
            return
        self.api_key, self.api_key_created = ensure_api_key(self.home)
        document["auth"] = {**auth, "api_keys": {**keys, tenant: [hash_api_key(self.api_key)]}}

    def port_roles(self) -> dict[int, str]:
        roles = {}
        if self.config is not None:
            roles[self.config.grpc.port] = "gRPC API (Serve gRPC proxy)"
            roles[self.config.http.port] = "HTTP API (Serve HTTP proxy)"
            roles[self.config.metrics.export_port] = "Prometheus metrics (Ray metrics agent)"
        if self.s3 is not None:
            try:
                roles[self.s3.port] = "S3 (embedded server)"
            except Exception:  # noqa: BLE001 - not started
                pass
        return roles

    def listening(self) -> list[Listener]:
        """Every listening socket of this process and its descendants (Ray's and the S3 server's)."""
        return listening_sockets(roles=self.port_roles())

    def start(self, log: Callable[[str], None] = lambda _: None) -> TesseraConfig:
        import ray
        from ray import serve

        from tessera.serving.app import ROUTE_PREFIX, build_app, grpc_options, http_options

        self.home.mkdir(parents=True, exist_ok=True)
        document = dict(self._document)
        if "storage" not in document:
            self.s3 = EmbeddedS3Server(
                EmbeddedS3Config(
                    data_dir=self.home / "s3",
                    port=self._s3_port if self._s3_port is not None else DEFAULT_S3_PORT,
                    bucket=DEFAULT_BUCKET,
                )
            )
            log(f"starting the embedded S3 server ({self.home / 's3'})")
            self.s3.start()
            document["storage"] = self._embedded_storage()
        if self._grpc_port is not None:
            document["grpc"] = {**document.get("grpc", {}), "port": self._grpc_port}
        if self._http_port is not None:
            document["http"] = {**document.get("http", {}), "port": self._http_port}
        if self._metrics_port is not None:
            document["metrics"] = {**document.get("metrics", {}), "export_port": self._metrics_port}
        self._add_stack_key(document)
        config = TesseraConfig.model_validate(document)
        self.config = config
        if config.network.loopback_only:
            for name, host in (("grpc.host", config.grpc.host), ("http.host", config.http.host)):
                if not is_loopback(host):
                    raise StackStartError(
                        f"{name} is {host}, not a loopback address, but network.loopback_only is on (the embedded "
                        f"stack's default): set {name}: 127.0.0.1, or network.loopback_only: false to listen beyond this machine"
                    )
        for proxy, port in (("grpc", config.grpc.port), ("http", config.http.port), ("metrics", config.metrics.export_port)):
            try:
                taken = port_in_use(port)
            except OSError as error:
                name = {"grpc": "gRPC", "http": "HTTP", "metrics": "metrics"}[proxy]
                raise StackStartError(f"cannot listen on the {name} port {port}: {error.strerror}") from None
            if taken:
                raise StackStartError(port_taken_message(port, proxy))

        loopback = config.network.loopback_only
        log(f"starting Ray ({self._num_cpus} CPUs, no dashboard{', on 127.0.0.1 only' if loopback else ''})")
        if loopback:
            self._single_machine = ray_single_machine_mode().__enter__()
        ray.init(
            address="local",
            num_cpus=self._num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            # Ray's metrics agent (in the dashboard agent every raylet starts; the dashboard itself
            # stays off) serves every process's metrics on this port: see serving/metrics.py.
            _metrics_export_port=config.metrics.export_port,
            _system_config={"metrics_report_interval_ms": round(config.metrics.report_interval_s * 1000)},
            **({"runtime_env": {"worker_process_setup_hook": SETUP_HOOK}} if loopback else {}),
        )
        self.metrics_url = metrics_url(config, ray.util.get_node_ip_address())
        self.ray_logs_dir = ray._private.worker._global_node.get_logs_dir_path()  # Ray has no public call for it
        if loopback and not is_loopback(ray.util.get_node_ip_address()):
            raise StackStartError(
                f"Ray started with node IP {ray.util.get_node_ip_address()}, not 127.0.0.1, so its ports listen beyond "
                "loopback (cluster/loopback.py); set network.loopback_only: false to run this way"
            )
        from tessera.serving.storage import ObjectStore

        ObjectStore(config.storage).ensure_bucket()
        log(f"starting the Serve application (gRPC on port {config.grpc.port}, HTTP on {http_base_url(config)})")
        try:
            serve.start(grpc_options=grpc_options(config), http_options=http_options(config))
        except Exception as error:
            # Something took the port between the check above and Ray starting (seconds).
            if "Failed to bind to address" in str(error):
                raise StackStartError(port_taken_message(config.grpc.port)) from None
            raise
        serve.run(build_app(config), name=config.app_name, route_prefix=ROUTE_PREFIX)
        if loopback:
            self.check_loopback()
        return config

    def check_loopback(self) -> list[Listener]:
        """The stack's listening sockets; StackStartError if one is not on loopback."""
        listeners = self.listening()
        outside = not_on_loopback(listeners)
        if outside:
            raise StackStartError(
                f"refusing to run: network.loopback_only is on, but {describe(outside)} listen beyond loopback (Ray's "
                "internals may have changed: see cluster/loopback.py); set network.loopback_only: false to run anyway"
            )
        return listeners

    def restart_app(self) -> None:
        """Tear down and redeploy the Serve application (the whole serving layer) on the same Ray."""
        from ray import serve

        from tessera.serving.app import ROUTE_PREFIX, build_app, grpc_options, http_options

        serve.shutdown()
        serve.start(grpc_options=grpc_options(self.config), http_options=http_options(self.config))
        serve.run(build_app(self.config), name=self.config.app_name, route_prefix=ROUTE_PREFIX)
        if self.config.network.loopback_only:
            self.check_loopback()  # the new proxy and replicas too

    def _embedded_storage(self) -> StorageConfig:
        s3 = self.s3
        return StorageConfig(
            endpoint_url=s3.endpoint_url,
            region="us-east-1",
            bucket=s3.bucket,
            access_key_id=s3.credentials.access_key_id,
            secret_access_key=s3.credentials.secret_access_key,
        )

    def stop(self) -> None:
        import ray
        from ray import serve

        try:
            if ray.is_initialized():
                try:
                    serve.shutdown()
                finally:
                    ray.shutdown()
        finally:
            if self._single_machine is not None:
                self._single_machine.__exit__(None, None, None)
                self._single_machine = None
            if self.s3 is not None:
                self.s3.stop()


class EmbeddedStack:
    """The CLI's handle on a detached stack under ``home``."""

    def __init__(self, home: Path, config_path: Path | None = None, grpc_port: int | None = None, s3_port: int | None = None,
                 http_port: int | None = None, metrics_port: int | None = None):
        self.home = Path(home)
        self.config_path = config_path
        self.grpc_port = grpc_port
        self.s3_port = s3_port
        self.http_port = http_port
        self.metrics_port = metrics_port

    @property
    def state_path(self) -> Path:
        return self.home / "stack.json"

    @property
    def log_path(self) -> Path:
        return self.home / "logs" / "daemon.log"

    def read_state(self) -> StackState | None:
        state = StackState.load(self.state_path)
        if state is not None and not pid_alive(state.pid):
            self.state_path.unlink(missing_ok=True)
            return None
        return state

    def up(self, log: Callable[[str], None] = print, timeout_s: float = 300.0) -> StackState:
        state = self.read_state()
        if state is not None:
            log(f"already running (pid {state.pid})")
            return dataclasses.replace(state, api_key_created=False)  # a key is printed only by the start that made it
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "tessera.cluster.daemon", "--home", str(self.home)]
        if self.config_path:
            command += ["--config", str(Path(self.config_path).resolve())]
        if self.grpc_port is not None:
            command += ["--grpc-port", str(self.grpc_port)]
        if self.s3_port is not None:
            command += ["--s3-port", str(self.s3_port)]
        if self.http_port is not None:
            command += ["--http-port", str(self.http_port)]
        if self.metrics_port is not None:
            command += ["--metrics-port", str(self.metrics_port)]
        log(f"starting the stack (log: {self.log_path})")
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log_file:
            process = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                reason = self._start_refusal(log_offset)
                if reason is not None:
                    raise StackStartError(reason)
                raise RuntimeError(f"the stack failed to start (exit {process.returncode}):\n{self._log_tail()}")
            state = StackState.load(self.state_path)
            if state is not None and state.pid == process.pid:
                return state
            time.sleep(0.5)
        process.terminate()
        raise TimeoutError(f"the stack did not become ready in {timeout_s:.0f} s:\n{self._log_tail()}")

    def down(self, log: Callable[[str], None] = print, timeout_s: float = 90.0) -> None:
        state = self.read_state()
        if state is None:
            log("not running")
            return
        log(f"stopping the stack (pid {state.pid})")
        os.kill(state.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and pid_alive(state.pid):
            time.sleep(0.5)
        if pid_alive(state.pid):
            log("the stack did not stop in time; killing its process group")
        try:  # the daemon leads its group: anything still in it was started by the stack
            os.killpg(state.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.state_path.unlink(missing_ok=True)
        log("stopped")

    def status(self) -> dict:
        state = self.read_state()
        if state is None:
            return {"running": False, "healthy": False}
        report: dict = {"running": True, "pid": state.pid, "grpc": state.grpc_address, "http": state.http_base_url,
                        "s3": state.s3_endpoint, "bucket": state.bucket, "metrics": state.metrics_url,
                        "logs": state.ray_logs_dir, "uptime_s": round(time.time() - state.started_at, 1)}
        serve_status = self.home / "serve_status.json"
        if serve_status.exists():
            report.update(json.loads(serve_status.read_text()))
        from tessera.serving.client import TesseraClient, TesseraError

        report["auth"] = state.auth
        listening = listening_sockets(state.pid, roles={item["port"]: item["role"] for item in state.listening or () if item["role"]})
        report["listening"] = [item.endpoint + (f" {item.role}" if item.role else f" {item.process}") for item in listening]
        outside = not_on_loopback(listening)
        if outside:
            report["not_on_loopback"] = [item.endpoint for item in outside]
        with TesseraClient(state.grpc_address, home=self.home) as client:
            try:
                client.wait_until_ready(timeout_s=5)
                report["healthy"] = True
            except TimeoutError as error:
                report["healthy"] = False
                report["problem"] = str(error)
            try:
                report["health"] = client.health(timeout_s=5)
            except TesseraError as error:
                report["health"] = f"unknown ({error.code.name})"
        return report

    def _start_refusal(self, log_offset: int) -> str | None:
        """The daemon's reason for refusing to start (this run's log only), if it gave one: the
        rest of its "cannot start" record, continuation lines included (a log tail, say)."""
        try:
            with open(self.log_path, "rb") as log_file:
                log_file.seek(log_offset)
                lines = log_file.read().decode(errors="replace").splitlines()
        except FileNotFoundError:
            return None
        for index, line in enumerate(lines):
            if " cannot start: " in line:
                reason = [line.split(" cannot start: ", 1)[1]]
                for more in lines[index + 1 :]:
                    if LOG_RECORD_START.match(more):
                        break
                    reason.append(more)
                return "\n".join(reason)
        return None

    def _log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"
