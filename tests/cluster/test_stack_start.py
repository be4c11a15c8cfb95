"""What the stack checks and reports before and while it starts: ports, and the daemon's reason
for refusing to start as the CLI shows it."""

from __future__ import annotations

import errno
import random
import socket

import pytest

from tessera.cluster import stack as stack_module
from tessera.cluster.stack import SPARE_PORTS, EmbeddedStack, pick_free_port, port_in_use


def test_a_listening_port_is_in_use_and_a_closed_one_is_not():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert port_in_use(port), "a listener on loopback blocks the proxy's bind on every interface"
    assert not port_in_use(port)


def test_the_picker_skips_taken_and_avoided_ports(monkeypatch):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", pick_free_port()))
        holder.listen()
        taken = holder.getsockname()[1]
        avoided = pick_free_port(avoid={taken})
        free = pick_free_port(avoid={taken, avoided})
        offered = [taken, avoided, free]
        monkeypatch.setattr(random, "sample", lambda population, k: offered + [p for p in population if p not in offered][: k - 3])
        assert pick_free_port(avoid={avoided}) == free


def test_the_picker_gives_up_with_a_clear_error(monkeypatch):
    monkeypatch.setattr(stack_module, "port_in_use", lambda port: True)
    with pytest.raises(RuntimeError, match=f"no free port in {SPARE_PORTS.start}-{SPARE_PORTS.stop - 1}"):
        pick_free_port()


def test_spare_ports_stay_below_the_ephemeral_range():
    with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
        low, _ = (int(x) for x in ranges.read().split())
    assert SPARE_PORTS.stop <= low, "ports picked for later servers must not be handed out for outbound connections"


def test_other_bind_errors_are_not_reported_as_a_taken_port(monkeypatch):
    """A privileged port for a non-root user, say: the caller shows the real error instead."""
    def refuse(self, address):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(socket.socket, "bind", refuse)
    with pytest.raises(PermissionError):
        port_in_use(443)


def test_the_refusal_reason_keeps_its_continuation_lines_and_only_this_run(tmp_path):
    stack = EmbeddedStack(tmp_path)
    stack.log_path.parent.mkdir(parents=True)
    earlier = "2026-01-01 00:00:00,000 tessera.daemon ERROR cannot start: an old reason\n"
    stack.log_path.write_text(earlier + (
        "2026-01-02 10:00:00,000 tessera.daemon INFO starting the embedded S3 server\n"
        "2026-01-02 10:00:01,000 tessera.daemon ERROR cannot start: the embedded S3 server exited (status 1); its log:\n"
        "node:events:502\n"
        "Error: something specific\n"
        "2026-01-02 10:00:01,100 tessera.daemon INFO shutting down\n"
    ))
    assert stack._start_refusal(len(earlier)) == "the embedded S3 server exited (status 1); its log:\nnode:events:502\nError: something specific"
    assert stack._start_refusal(0) == "an old reason"
    assert stack._start_refusal(len(stack.log_path.read_text())) is None
