"""deploy/nginx/tessera.conf is accepted by Debian's nginx as shipped (apart from the site values).
It is run in front of the real stack by tests/integration/test_tls_front.py."""

from __future__ import annotations

from tests.deploy.nginx_front import NginxFront


def test_nginx_accepts_the_shipped_config():
    front = NginxFront(grpc_upstream=9000, http_upstream=9001)
    try:
        result = front.check_config()
        assert result.returncode == 0 and "syntax is ok" in result.stderr, result.stderr
    finally:
        front.stop()
