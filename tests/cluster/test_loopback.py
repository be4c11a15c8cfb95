"""The embedded stack's loopback tools without Ray running: the address rules, the socket listing
that the start-up check and `tessera up` use, and the hook that rebinds Serve's `[::]` servers."""

from __future__ import annotations

import socket
from concurrent import futures

import grpc

from tessera.cluster import loopback
from tessera.cluster.loopback import Listener, is_loopback, listening_sockets, not_on_loopback


def test_loopback_addresses():
    for address in ("127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1", "[::1]", "localhost"):
        assert is_loopback(address), address
    for address in ("0.0.0.0", "::", "10.0.0.4", "192.0.2.2", "::ffff:10.0.0.1", "example.com"):
        assert not is_loopback(address), address


def test_the_hook_rewrites_only_all_interface_binds():
    assert loopback._loopback_address("[::]:9000") == "127.0.0.1:9000"
    assert loopback._loopback_address("[::]:0") == "127.0.0.1:0"
    assert loopback._loopback_address("0.0.0.0:7") == "127.0.0.1:7"
    assert loopback._loopback_address("10.0.0.1:7") == "10.0.0.1:7"


def test_listening_sockets_of_this_process_and_the_check():
    with socket.socket() as inside, socket.socket() as outside:
        inside.bind(("127.0.0.1", 0))
        inside.listen()
        outside.bind(("0.0.0.0", 0))
        outside.listen()
        inside_port, outside_port = inside.getsockname()[1], outside.getsockname()[1]
        ports = {inside_port: "inside", outside_port: "outside"}
        found = {item.port: item for item in listening_sockets(roles=ports) if item.port in ports}
    assert found[inside_port].loopback and found[inside_port].role == "inside" and found[inside_port].address == "127.0.0.1"
    assert [item.role for item in not_on_loopback(list(found.values()))] == ["outside"]
    assert Listener("::1", 5, 1, "p").endpoint == "[::1]:5"


def test_the_setup_hook_binds_serves_grpc_servers_to_loopback(monkeypatch):
    import ray.serve._private.default_impl as default_impl
    import ray.serve._private.replica as replica

    monkeypatch.setattr(default_impl, "add_grpc_address", default_impl.add_grpc_address)  # restored afterwards
    monkeypatch.setattr(replica, "add_port_to_grpc_server", replica.add_port_to_grpc_server)
    monkeypatch.setattr(default_impl, "_tessera_loopback", False, raising=False)
    loopback.bind_serve_to_loopback()
    loopback.bind_serve_to_loopback()  # twice is once
    servers = [grpc.server(futures.ThreadPoolExecutor(1)) for _ in range(2)]
    try:
        proxy_port = default_impl.add_grpc_address(servers[0], "[::]:0")
        replica_port = replica.add_port_to_grpc_server(servers[1], "[::]:0")
        for server in servers:
            server.start()
        listening = {item.port: item for item in listening_sockets()}
        for port in (proxy_port, replica_port):
            assert listening[port].address == "127.0.0.1", listening[port]
    finally:
        for server in servers:
            server.stop(None)
