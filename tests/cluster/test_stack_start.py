"""What the stack checks and reports before and while it starts: ports, and the daemon's reason
for refusing to start as the CLI shows it."""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterator

import pytest

from tessera.cluster.stack import SPARE_PORTS, EmbeddedStack, bind_error_means_taken, pick_free_port, port_in_use


def test_a_listening_port_is_in_use_and_a_closed_one_is_not():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert port_in_use(port), "a listener on loopback blocks the proxy's bind on every interface"
    assert not port_in_use(port)


@contextlib.contextmanager
def held_ports(count: int) -> Iterator[list[int]]:
    """``count`` ports of :data:`SPARE_PORTS` with something listening on them."""
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            holder = stack.enter_context(socket.socket())
            holder.bind(("127.0.0.1", pick_free_port(avoid=ports)))
            holder.listen()
            ports.append(holder.getsockname()[1])
        yield ports


def test_the_picker_skips_taken_and_avoided_ports():
    with held_ports(1) as [taken]:
        avoided = pick_free_port(avoid={taken})
        free = pick_free_port(avoid={taken, avoided})
        assert pick_free_port(avoid={avoided}, candidates=[taken, avoided, free]) == free


def test_the_picker_gives_up_with_a_clear_error():
    with held_ports(2) as held, pytest.raises(RuntimeError, match=f"no free port in {SPARE_PORTS.start}-{SPARE_PORTS.stop - 1}"):
        pick_free_port(candidates=held)


def test_spare_ports_stay_below_the_ephemeral_range():
    with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
        low, _ = (int(x) for x in ranges.read().split())
    assert SPARE_PORTS.stop <= low, "ports picked for later servers must not be handed out for outbound connections"


def test_other_bind_errors_are_not_reported_as_a_taken_port():
    """A privileged port for a non-root user, say: the caller shows the real error instead."""
    assert bind_error_means_taken(OSError(errno.EADDRINUSE, "Address already in use"))
    assert not bind_error_means_taken(OSError(errno.EAFNOSUPPORT, "Address family not supported"))
    with pytest.raises(PermissionError):
        bind_error_means_taken(PermissionError(errno.EACCES, "Permission denied"))


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
