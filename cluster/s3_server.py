"""The embedded S3-compatible server: a Node process (``cluster/s3server``) managed from Python.

Two ways to run it:

- **owned** (tests, ``with EmbeddedS3Server(config) as server: ...``): the server lives as long as
  this process wants it. ``stop()`` ends it; if this process dies without stopping it, the server
  sees its parent gone (it polls every 0.5 s) and exits by itself.
- **detached** (``tessera up``): ``start(detached=True)`` returns once the server listens and leaves
  it running in its own session after this process exits. ``EmbeddedS3Server.stop_running(data_dir)``
  (``tessera down``) stops it through the record it left in the data directory.

One data directory holds everything of one server::

    <data_dir>/buckets/            objects, in s3rver's layout
    <data_dir>/credentials.json    the generated key pair, mode 0600 (unless credentials are configured)
    <data_dir>/server.json         pid, port and mode of the running server (removed when it stops)
    <data_dir>/server.log          the server's stderr (appended)
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import secrets
import select
import shutil
import signal
import string
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

logger = logging.getLogger(__name__)

SERVER_DIR = Path(__file__).resolve().parent / "s3server"
SERVER_SCRIPT = SERVER_DIR / "server.js"
SECRET_ENV = "TESSERA_S3_SECRET_ACCESS_KEY"  # how server.js receives the secret (never on its command line)
_POLL_S = 0.05
_LOG_TAIL_CHARS = 2000


class S3ServerError(RuntimeError):
    """The embedded S3 server could not be started or stopped."""


class EmbeddedS3Config(BaseModel):
    """Where the embedded S3 server keeps its data and how it listens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path = Field(
        ..., description="Folder of this server: objects under buckets/, credentials.json, server.json "
        "(the running server's record) and server.log. Created if missing."
    )
    host: str = Field("127.0.0.1", min_length=1, description="Address to listen on; 0.0.0.0 exposes it to the network.")
    port: int = Field(0, ge=0, le=65535, description="TCP port; 0 picks a free one.")
    bucket: str = Field(
        "tessera", min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$",
        description="Bucket created at start (if missing).",
    )
    access_key_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]{3,128}$",
        description="Access key id clients must sign with. None (with secret_access_key None): a random "
        "pair generated on the first start of this data_dir and kept in credentials.json (0600).",
    )
    secret_access_key: SecretStr | None = Field(
        None, description="Secret for access_key_id; given together with it. Not written to disk."
    )
    start_timeout_s: float = Field(30.0, gt=0, description="How long start() waits for the server to listen.")
    stop_timeout_s: float = Field(10.0, gt=0, description="How long stop() waits after SIGTERM before SIGKILL.")
    node_executable: str = Field("node", min_length=1, description="Node.js 18+ executable (name on PATH or path).")
    verbose: bool = Field(False, description="Log every request (method, path, status, time) to server.log.")

    @model_validator(mode="after")
    def _credentials_come_in_pairs(self) -> EmbeddedS3Config:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("give both access_key_id and secret_access_key, or neither (generated)")
        if self.secret_access_key is not None:
            secret = self.secret_access_key.get_secret_value()
            if not secret or not secret.isprintable():
                raise ValueError("secret_access_key must be a non-empty printable string")
        return self


@dataclass(frozen=True)
class S3Credentials:
    """A key pair of the embedded server."""

    access_key_id: str
    secret_access_key: str

    def __repr__(self) -> str:
        return f"S3Credentials(access_key_id={self.access_key_id!r}, secret_access_key='**********')"


@dataclass(frozen=True)
class RunningServer:
    """What the record of a live server says (server.json)."""

    pid: int
    owner_pid: int  # the process that started it
    host: str
    port: int
    mode: Literal["owned", "detached"]
    started_at: str
    data_dir: Path

    @property
    def endpoint_url(self) -> str:
        return f"http://{_connect_host(self.host)}:{self.port}"


def _connect_host(host: str) -> str:
    """The address a local client uses for a listen address ('0.0.0.0' is not one)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _paths(data_dir: Path) -> dict[str, Path]:
    data_dir = Path(data_dir).resolve()
    return {
        "buckets": data_dir / "buckets",
        "credentials": data_dir / "credentials.json",
        "record": data_dir / "server.json",
        "log": data_dir / "server.log",
        "lock": data_dir / ".lock",
    }


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, atomically."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)


def read_credentials(data_dir: Path) -> S3Credentials | None:
    """The generated key pair of a data dir, or None if none was generated yet."""
    path = _paths(data_dir)["credentials"]
    try:
        stored = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    if path.stat().st_mode & 0o077:
        logger.warning("%s was readable by others; restricting it to its owner", path)
        path.chmod(0o600)
    return S3Credentials(stored["access_key_id"], stored["secret_access_key"])


def _generated_credentials(data_dir: Path) -> S3Credentials:
    existing = read_credentials(data_dir)
    if existing is not None:
        return existing
    alphabet = string.ascii_uppercase + string.digits
    credentials = S3Credentials(
        access_key_id="TSR" + "".join(secrets.choice(alphabet) for _ in range(17)),
        secret_access_key=secrets.token_urlsafe(30),
    )
    _write_private(
        _paths(data_dir)["credentials"],
        json.dumps({"access_key_id": credentials.access_key_id, "secret_access_key": credentials.secret_access_key}),
    )
    return credentials


def pid_alive(pid: int) -> bool:
    """True if a process with this pid is running (ours or another user's).

    A child of this process that has exited stays a zombie until it is reaped, and signal 0
    still reaches a zombie: reap it here (``tessera run`` is the parent of the stack it starts),
    and count an unreaped zombie of another parent as gone too."""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    except ChildProcessError:
        pass  # not our child
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # state is the field after the parenthesised command name
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _is_server_process(pid: int, data_dir: Path) -> bool:
    """True if pid is alive and is an embedded S3 server of this data dir (not a reused pid)."""
    if not pid_alive(pid):
        return False
    if not Path("/proc/self").exists():  # no procfs: trust the pid
        return True
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    buckets = str(_paths(data_dir)["buckets"]).encode()
    return any(arg.endswith(b"server.js") for arg in args) and buckets in args  # a zombie has no args


def _log_tail(log_path: Path, offset: int) -> str:
    try:
        with open(log_path, "rb") as handle:
            handle.seek(offset)
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    text = text.strip()
    return text[-_LOG_TAIL_CHARS:] if text else "(no output)"


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Serialises starts and stops on one data dir across processes."""
    if not lock_path.parent.exists():  # the data dir was removed under a running server
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class EmbeddedS3Server:
    """A local S3-compatible server for development and tests (see the module docstring)."""

    def __init__(self, config: EmbeddedS3Config):
        self.config = config
        self._paths = _paths(config.data_dir)
        self._process: subprocess.Popen | None = None
        self._port: int | None = None  # kept after stop(): a restart reuses it when config.port is 0
        self._credentials: S3Credentials | None = None

    # --- what clients need ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int:
        return self._require_started().pid

    @property
    def port(self) -> int:
        self._require_started()
        assert self._port is not None
        return self._port

    @property
    def endpoint_url(self) -> str:
        return f"http://{_connect_host(self.config.host)}:{self.port}"

    @property
    def bucket(self) -> str:
        return self.config.bucket

    @property
    def credentials(self) -> S3Credentials:
        self._require_started()
        assert self._credentials is not None
        return self._credentials

    def _require_started(self) -> subprocess.Popen:
        if self._process is None:
            raise S3ServerError("the embedded S3 server is not started")
        return self._process

    # --- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> EmbeddedS3Server:
        if self._process is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self, *, detached: bool = False) -> None:
        """Start the server and return once it listens.

        detached=False: the server exits when this process does. detached=True: it keeps running
        (own session) until :meth:`stop` or :meth:`stop_running` from any process. Starting again
        after stop() listens on the same port as before, so clients keep their endpoint."""
        if self._process is not None:
            raise S3ServerError(f"already started (pid {self._process.pid})")
        node = self._check_installation()
        self._paths["buckets"].mkdir(parents=True, exist_ok=True)
        with _locked(self._paths["lock"]):
            existing = self.find_running(self.config.data_dir)
            if existing is not None and existing.mode == "owned" and not pid_alive(existing.owner_pid):
                # its owner died a moment ago; the server follows within its 0.5 s poll
                if _wait_gone(existing.pid, self.config.data_dir, timeout_s=5.0):
                    existing = None
            if existing is not None:
                raise S3ServerError(
                    f"an embedded S3 server already runs on {existing.data_dir} (pid {existing.pid}, "
                    f"{existing.endpoint_url}, {existing.mode}); stop it first (tessera down)"
                )
            credentials = self._resolve_credentials()
            process, port = self._spawn(node, credentials, detached)
            record = {
                "pid": process.pid, "owner_pid": os.getpid(), "host": self.config.host, "port": port,
                "mode": "detached" if detached else "owned",
                "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            }
            _write_private(self._paths["record"], json.dumps(record))
        self._process, self._port, self._credentials = process, port, credentials
        if not detached:
            atexit.register(self.stop)

    def stop(self) -> None:
        """Stop the server this object started (SIGTERM, then SIGKILL after stop_timeout_s).
        Stopping twice, or a server that already exited, is fine."""
        process = self._process
        if process is None:
            return
        atexit.unregister(self.stop)
        with _locked(self._paths["lock"]):
            if process.poll() is None:
                _signal_group(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=self.config.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    logger.warning("embedded S3 server (pid %d) ignored SIGTERM; killing it", process.pid)
                    _signal_group(process.pid, signal.SIGKILL)
                    process.wait()
            self._remove_record(process.pid)
        if process.stdout is not None:
            process.stdout.close()
        self._process = None

    # --- servers started elsewhere (tessera up / down) --------------------------------------------

    @staticmethod
    def find_running(data_dir: Path) -> RunningServer | None:
        """The live server of a data dir, or None (a stale record is removed)."""
        paths = _paths(data_dir)
        try:
            record = json.loads(paths["record"].read_text())
        except (FileNotFoundError, ValueError):
            return None
        if not _is_server_process(record["pid"], data_dir):
            paths["record"].unlink(missing_ok=True)
            return None
        return RunningServer(
            pid=record["pid"], owner_pid=record["owner_pid"], host=record["host"], port=record["port"],
            mode=record["mode"], started_at=record["started_at"], data_dir=Path(data_dir).resolve(),
        )

    @staticmethod
    def stop_running(data_dir: Path, timeout_s: float = 10.0) -> bool:
        """Stop the server running on a data dir, whoever started it. False if none ran."""
        paths = _paths(data_dir)
        if not paths["lock"].parent.exists():
            return False
        with _locked(paths["lock"]):
            running = EmbeddedS3Server.find_running(data_dir)
            if running is None:
                return False
            _signal_group(running.pid, signal.SIGTERM)
            if not _wait_gone(running.pid, data_dir, timeout_s):
                _signal_group(running.pid, signal.SIGKILL)
                _wait_gone(running.pid, data_dir, timeout_s)
            paths["record"].unlink(missing_ok=True)
        return True

    # --- internals ----------------------------------------------------------------------------

    def _check_installation(self) -> str:
        node = shutil.which(self.config.node_executable)
        if node is None:
            raise S3ServerError(
                f"Node.js ({self.config.node_executable!r}) was not found on PATH; the embedded S3 server "
                "needs Node 18 or newer: run scripts/bootstrap.sh (it installs nodejs) or set node_executable"
            )
        if not (SERVER_DIR / "node_modules" / "s3rver" / "package.json").exists():
            raise S3ServerError(
                f"the embedded S3 server's Node packages are not installed ({SERVER_DIR}/node_modules is "
                "missing): run scripts/bootstrap.sh (it runs `npm ci` there)"
            )
        return node

    def _resolve_credentials(self) -> S3Credentials:
        if self.config.access_key_id is not None and self.config.secret_access_key is not None:
            return S3Credentials(self.config.access_key_id, self.config.secret_access_key.get_secret_value())
        return _generated_credentials(self.config.data_dir)

    def _spawn(self, node: str, credentials: S3Credentials, detached: bool) -> tuple[subprocess.Popen, int]:
        args = [
            node, str(SERVER_SCRIPT),
            "--data-dir", str(self._paths["buckets"]),
            "--host", self.config.host,
            "--port", str(self._port if self.config.port == 0 and self._port else self.config.port),
            "--bucket", self.config.bucket,
            "--access-key-id", credentials.access_key_id,
        ]
        if not detached:
            args.append("--exit-with-parent")
        if self.config.verbose:
            args.append("--verbose")
        log_path = self._paths["log"]
        log_offset = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env={**os.environ, SECRET_ENV: credentials.secret_access_key},
                cwd=SERVER_DIR,
                start_new_session=True,  # own process group; a terminal's Ctrl-C does not reach it
            )
        try:
            port = self._wait_ready(process, log_path, log_offset)
        except BaseException:
            if process.poll() is None:
                _signal_group(process.pid, signal.SIGKILL)
            process.wait()
            assert process.stdout is not None
            process.stdout.close()
            raise
        assert process.stdout is not None
        process.stdout.close()  # the server writes nothing after its ready line
        return process, port

    def _wait_ready(self, process: subprocess.Popen, log_path: Path, log_offset: int) -> int:
        """Reads the server's one stdout line: {"ready": true, "port": N} or an error."""
        assert process.stdout is not None
        fd = process.stdout.fileno()
        deadline = time.monotonic() + self.config.start_timeout_s
        received = b""
        while b"\n" not in received:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise S3ServerError(
                    f"the embedded S3 server did not report ready within {self.config.start_timeout_s:g} s; "
                    f"its log ({log_path}):\n{_log_tail(log_path, log_offset)}"
                )
            readable, _, _ = select.select([fd], [], [], min(remaining, 0.5))
            if not readable:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                status = process.wait()
                raise S3ServerError(
                    f"the embedded S3 server exited (status {status}) before it was ready; its log "
                    f"({log_path}):\n{_log_tail(log_path, log_offset)}"
                )
            received += chunk
        line = received.split(b"\n", 1)[0]
        try:
            message = json.loads(line)
        except ValueError:
            raise S3ServerError(f"unexpected output from the embedded S3 server: {line[:200]!r}") from None
        if message.get("ready") is True:
            return int(message["port"])
        if message.get("code") == "EADDRINUSE":
            raise S3ServerError(
                f"cannot listen on {self.config.host}:{self.config.port}: the port is already in use "
                "(pick another port, or 0 for a free one)"
            )
        raise S3ServerError(f"the embedded S3 server failed to start: {message.get('error', message)}")

    def _remove_record(self, pid: int) -> None:
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError):
            if json.loads(self._paths["record"].read_text())["pid"] == pid:
                self._paths["record"].unlink()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the server's process group (it leads its own session, so the group id is its pid)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _wait_gone(pid: int, data_dir: Path, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _is_server_process(pid, data_dir):
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL_S)
    return True
