"""Port checks the stack runs before starting Ray, and the port picker of tests and benchmarks."""

from __future__ import annotations

import socket

from tessera.cluster.stack import SPARE_PORTS, pick_free_port, port_in_use


def test_a_listening_port_is_in_use_and_a_closed_one_is_not():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert port_in_use(port), "a listener on loopback blocks the proxy's bind on every interface"
    assert not port_in_use(port)


def test_picked_ports_are_free_and_outside_the_ephemeral_range():
    with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
        low, high = (int(x) for x in ranges.read().split())
    for _ in range(20):
        port = pick_free_port()
        assert port in SPARE_PORTS and not low <= port <= high and not port_in_use(port)
