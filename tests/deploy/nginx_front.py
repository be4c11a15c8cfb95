"""deploy/nginx/tessera.conf, run for real: Debian's nginx, unprivileged, on loopback, in a prefix
of its own (config, pid, logs, temp files), with a certificate from a CA made for the test.

The shipped file is used as it is, except for the values a site sets (upstream ports, listen
ports, certificate paths): each is replaced where the file has it, and a file that no longer has
it fails the test, so the tested config cannot drift from the shipped one unnoticed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.helpers import free_port

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "tessera.conf"
UNPRIVILEGED_USER = "nobody"
"""Who runs nginx when the tests run as root (nginx then never holds root, not even its master)."""

# nginx.conf around the shipped file, as Debian's /etc/nginx/nginx.conf includes conf.d/*.conf in
# its http block; everything nginx writes goes under the prefix instead of /var.
MAIN_CONF = """\
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/temp/body;
    proxy_temp_path {prefix}/temp/proxy;
    fastcgi_temp_path {prefix}/temp/fastcgi;
    uwsgi_temp_path {prefix}/temp/uwsgi;
    scgi_temp_path {prefix}/temp/scgi;
    include {prefix}/conf.d/tessera.conf;
}}
"""


def nginx_binary() -> str:
    found = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    assert found, "nginx is not installed: bash scripts/bootstrap.sh test installs it (Debian's nginx package)"
    return found


@dataclasses.dataclass(frozen=True)
class Certificates:
    ca: Path
    """The test CA's certificate: what clients trust."""
    chain: Path
    key: Path


def make_certificates(folder: Path, host: str = "localhost", ip: str = "127.0.0.1") -> Certificates:
    """A CA and a server certificate it signed for ``host`` and ``ip`` (openssl CLI; ECDSA P-256)."""
    folder.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=Tessera test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={host}")
    (folder / "server.ext").write_text(
        f"subjectAltName=DNS:{host},IP:{ip}\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
            "-extfile", "server.ext", "-out", "server.crt")
    return Certificates(ca=folder / "ca.crt", chain=folder / "server.crt", key=folder / "server.key")


def _replace(text: str, old: str, new: str, count: int) -> str:
    found = text.count(old)
    assert found == count, f"deploy/nginx/tessera.conf has {found} x {old!r}, the test expects {count}: update tests/deploy/nginx_front.py"
    return text.replace(old, new)


def render(grpc_upstream: int, http_upstream: int, grpc_port: int, https_port: int, certificates: Certificates) -> str:
    """The shipped config with this machine's values: upstreams on the test stack's ports, the TLS
    ports on 127.0.0.1 only (the IPv6 wildcard listens dropped), the test's certificate."""
    text = SHIPPED.read_text()
    text = _replace(text, "server 127.0.0.1:9000;", f"server 127.0.0.1:{grpc_upstream};", 1)
    text = _replace(text, "server 127.0.0.1:9001;", f"server 127.0.0.1:{http_upstream};", 1)
    text = _replace(text, "    listen [::]:9443 ssl http2;\n", "", 1)
    text = _replace(text, "    listen [::]:443 ssl http2;\n", "", 1)
    text = _replace(text, "listen 9443 ssl http2;", f"listen 127.0.0.1:{grpc_port} ssl http2;", 1)
    text = _replace(text, "listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;", 1)
    text = _replace(text, "/etc/tessera/tls/fullchain.pem", str(certificates.chain), 2)
    text = _replace(text, "/etc/tessera/tls/privkey.pem", str(certificates.key), 2)
    listens = re.findall(r"^\s*listen\s+(\S+)", text, flags=re.MULTILINE)
    assert listens and all(address.startswith("127.0.0.1:") for address in listens), listens
    return text


class NginxFront:
    """The TLS front before Serve's proxies at ``grpc_upstream`` and ``http_upstream``; after
    ``start()``: gRPC over TLS at ``localhost:grpc_port``, HTTPS at ``https://localhost:https_port``."""

    def __init__(self, grpc_upstream: int, http_upstream: int):
        self.grpc_upstream, self.http_upstream = grpc_upstream, http_upstream
        self.grpc_port = free_port()
        self.https_port = free_port(avoid={self.grpc_port})
        # Not under pytest's tmp_path: its folders are 0700 root, which an unprivileged nginx cannot enter.
        self.prefix = Path(tempfile.mkdtemp(prefix="tessera-nginx-"))
        self.certificates = make_certificates(self.prefix / "tls")
        for name in ("conf.d", "temp"):
            (self.prefix / name).mkdir()
        (self.prefix / "conf.d" / "tessera.conf").write_text(
            render(grpc_upstream, http_upstream, self.grpc_port, self.https_port, self.certificates))
        self.conf = self.prefix / "nginx.conf"
        self.conf.write_text(MAIN_CONF.format(prefix=self.prefix))
        self.error_log = self.prefix / "error.log"
        self.process: subprocess.Popen | None = None
        self._user: dict = {}
        if os.geteuid() == 0:
            account = pwd.getpwnam(UNPRIVILEGED_USER)
            for path in (self.prefix, *self.prefix.rglob("*")):
                os.chown(path, account.pw_uid, account.pw_gid)
            self._user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    def command(self, *args: str) -> list[str]:
        # -e: the error log before the config is read (else Debian's /var/log/nginx/error.log)
        return [nginx_binary(), "-p", str(self.prefix), "-c", str(self.conf), "-e", str(self.error_log), *args]

    def check_config(self) -> subprocess.CompletedProcess:
        """``nginx -t`` on the rendered config."""
        return subprocess.run(self.command("-t"), capture_output=True, text=True, **self._user)

    def start(self, timeout_s: float = 20.0) -> NginxFront:
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, **self._user)
        deadline = time.monotonic() + timeout_s
        for port in (self.grpc_port, self.https_port):
            while True:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"nginx is not listening on {port} (exit {self.process.poll()}):\n{self.log_tail()}")
                time.sleep(0.1)
        return self

    def log_tail(self, chars: int = 3000) -> str:
        return self.error_log.read_text(errors="replace")[-chars:] if self.error_log.exists() else "(no error log)"

    def stop(self) -> None:
        try:
            if self.process is not None and self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)  # nginx's fast shutdown: master and workers exit
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        finally:
            shutil.rmtree(self.prefix, ignore_errors=True)

    def __enter__(self) -> NginxFront:
        try:
            return self.start()
        except Exception:
            self.stop()  # nginx, if it started, and the prefix
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
