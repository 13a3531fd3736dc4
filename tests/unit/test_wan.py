"""The emulated WAN (bench.stack.wan.DelayProxy) against a real echo server on loopback."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from bench.stack.processes import free_port
from bench.stack.wan import DelayProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def echo() -> Iterator[str]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


def _round_trip(sock: socket.socket, payload: bytes) -> tuple[bytes, float]:
    t0 = time.perf_counter()
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        got += chunk
    return got, 1000 * (time.perf_counter() - t0)


def _expect_closed(sock: socket.socket) -> None:
    """The peer closed: EOF or a reset, within 5 s."""
    sock.settimeout(5)
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(10) == b""


def test_a_round_trip_takes_at_least_the_added_rtt(echo: str) -> None:
    """Bytes come back intact, no sooner than the emulated round-trip time."""
    with DelayProxy(echo, rtt_ms=40) as wan, socket.create_connection(("127.0.0.1", wan.port)) as s:
        got, ms = _round_trip(s, b"ping")
        assert got == b"ping" and ms >= 40 * 0.95


def test_jitter_never_reorders_bytes(echo: str) -> None:
    """Many small writes with jitter larger than the delay itself arrive in order."""
    payload = b"".join(i.to_bytes(2, "big") for i in range(300))
    wan = DelayProxy(echo, rtt_ms=4, jitter_ms=8, seed=3)
    with wan, socket.create_connection(("127.0.0.1", wan.port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(payload), 2):
            s.sendall(payload[i : i + 2])
        got = b""
        while len(got) < len(payload):
            got += s.recv(65536)
    assert got == payload


def test_set_delay_applies_to_open_connections(echo: str) -> None:
    """A latency spike reaches a connection opened before it."""
    with DelayProxy(echo, rtt_ms=0) as wan, socket.create_connection(("127.0.0.1", wan.port)) as s:
        _round_trip(s, b"a")
        wan.set_delay(60)
        _, ms = _round_trip(s, b"b")
        assert ms >= 60 * 0.95
        with pytest.raises(ValueError, match=">= 0"):
            wan.set_delay(-1)


def test_cut_drops_open_connections_and_accepts_new_ones(echo: str) -> None:
    """cut() closes what is open (the client reads EOF or a reset); a new connection works."""
    with DelayProxy(echo, rtt_ms=0) as wan:
        s = socket.create_connection(("127.0.0.1", wan.port))
        _round_trip(s, b"x")
        assert wan.cut() == 1
        _expect_closed(s)
        s.close()
        with socket.create_connection(("127.0.0.1", wan.port)) as again:
            assert _round_trip(again, b"y")[0] == b"y"


def test_a_dead_target_closes_the_client_connection() -> None:
    """Nothing listens behind the proxy: the client sees the connection closed, as on a WAN."""
    wan = DelayProxy(f"127.0.0.1:{free_port()}", rtt_ms=0)
    with wan, socket.create_connection(("127.0.0.1", wan.port)) as s:
        _expect_closed(s)
